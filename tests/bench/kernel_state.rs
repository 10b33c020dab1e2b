//! The VM's IPVS table, kube-ipvs0 and the proxy's nftables table between
//! phases: emptied before each, and checked after each, so that every
//! method is timed on the same work and proven to have done all of it.

use std::collections::HashMap;
use std::net::IpAddr;

use kube_ipvs_proxy::kernel::link::DummyLink;
use kube_ipvs_proxy::kernel::nftables::NetlinkNft;
use kube_ipvs_proxy::kernel::NftKernel;
use netlink_ipvs::{Handle, ServiceAddress};

use crate::synthetic::{self, Scale};

/// The interface the proxy binds service addresses on.
pub const INTERFACE: &str = "kube-ipvs0";

/// A netlink-ipvs connection whose task ends with it.
#[derive(Debug)]
pub struct Ipvs {
    pub handle: Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Ipvs {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Ipvs {
    /// Connects; fails when ip_vs is not loaded.
    pub async fn connect() -> Result<Self, String> {
        let (connection, handle) = netlink_ipvs::new_connection()
            .await
            .map_err(|e| format!("connecting to IPVS: {e}"))?;
        Ok(Ipvs {
            handle,
            connection: tokio::spawn(connection),
        })
    }
}

/// Empties the IPVS table, deletes kube-ipvs0 (with its addresses), the
/// proxy's local routes and its nftables table (with its set elements).
pub async fn reset(ipvs: &Ipvs) -> Result<(), String> {
    ipvs.handle
        .flush()
        .execute()
        .await
        .map_err(|e| format!("flushing the IPVS table: {e}"))?;
    let mut link = DummyLink::new(INTERFACE).map_err(|e| format!("opening rtnetlink: {e}"))?;
    link.delete()
        .await
        .map_err(|e| format!("deleting {INTERFACE}: {e}"))?;
    flush_local_routes()?;
    let mut nft = NetlinkNft::new().map_err(|e| format!("opening nftables: {e}"))?;
    nft.delete_table()
        .await
        .map_err(|e| format!("deleting the nftables table: {e}"))?;
    Ok(())
}

/// Deletes every local route of the proxy (route protocol 75), both
/// families, as `ip route flush` does it in one dump-and-delete pass.
fn flush_local_routes() -> Result<(), String> {
    for family in ["-4", "-6"] {
        let protocol = kube_ipvs_proxy::kernel::link::ROUTE_PROTOCOL.to_string();
        let args = [
            family, "route", "flush", "table", "local", "proto", &protocol,
        ];
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        if !status.success() {
            return Err(format!("ip {}: {status}", args.join(" ")));
        }
    }
    Ok(())
}

/// Checks that the kernel holds exactly the scale: every service with its E
/// serving real servers (E + 1 for the services in `with_extra`), nothing
/// else. Real servers draining at weight 0 are not counted.
pub async fn verify(ipvs: &Ipvs, scale: Scale, with_extra: &[usize]) -> Result<(), String> {
    let table = ipvs
        .handle
        .dump()
        .execute()
        .await
        .map_err(|e| format!("dumping the IPVS table to verify it: {e}"))?;
    let mut found: HashMap<IpAddr, usize> = HashMap::with_capacity(table.len());
    for (service, destinations) in &table {
        let ServiceAddress::Inet { addr, .. } = service.address else {
            return Err(format!(
                "unexpected firewall-mark service {}",
                service.address
            ));
        };
        found.insert(addr, destinations.iter().filter(|d| d.weight > 0).count());
    }
    if found.len() != scale.services {
        return Err(format!(
            "the kernel holds {} virtual servers; {scale} wants {}",
            found.len(),
            scale.services
        ));
    }
    for i in 0..scale.services {
        let vip = synthetic::cluster_ip(i);
        let wanted = scale.endpoints + usize::from(with_extra.contains(&i));
        match found.get(&vip) {
            None => return Err(format!("virtual server {vip}:80 (service {i}) is missing")),
            Some(&n) if n != wanted => {
                return Err(format!(
                    "virtual server {vip}:80 (service {i}) has {n} serving real servers; {wanted} wanted"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The real servers the kernel holds for service `i`: how many take new
/// connections (weight above 0), and how many in all (a removed TCP
/// endpoint drains at weight 0 until a dump shows it idle).
pub async fn real_servers_of(ipvs: &Ipvs, i: usize) -> Result<(usize, usize), String> {
    let address = ServiceAddress::Inet {
        addr: synthetic::cluster_ip(i),
        protocol: netlink_ipvs::Protocol::Tcp,
        port: synthetic::SERVICE_PORT,
    };
    ipvs.handle
        .destination()
        .get(&address)
        .execute()
        .await
        .map(|d| (d.iter().filter(|d| d.weight > 0).count(), d.len()))
        .map_err(|e| format!("listing the real servers of {address}: {e}"))
}
