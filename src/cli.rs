//! The command line, in kube-proxy's words where kube-proxy has them.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::desired::{LocalDetect, NftRuleset};
use crate::kernel::link::VipMode;

/// A Kubernetes service proxy that programs the kernel's IPVS tables over
/// generic netlink: the Service semantics of `kube-proxy --proxy-mode=ipvs`.
#[derive(Debug, Parser)]
#[command(name = "kube-ipvs-proxy", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub options: Options,
}

impl Cli {
    /// The command to run: the one named, by a subcommand or by kube-proxy's
    /// `--cleanup` or `--init-only`; `run` when none is. Naming two
    /// different ones is an error that names both.
    pub fn to_run(&self) -> Result<Command, String> {
        let named = [
            self.command.map(|c| (c, command_name(c))),
            self.options
                .cleanup
                .then_some((Command::Cleanup, "--cleanup")),
            self.options
                .init_only
                .then_some((Command::Prepare, "--init-only")),
        ];
        let mut chosen: Option<(Command, &str)> = None;
        for (command, name) in named.into_iter().flatten() {
            match chosen {
                Some((first, first_name)) if first != command => {
                    return Err(format!("{first_name} and {name} cannot be combined"));
                }
                _ => chosen = Some((command, name)),
            }
        }
        Ok(chosen.map_or(Command::Run, |(command, _)| command))
    }
}

fn command_name(command: Command) -> &'static str {
    match command {
        Command::Run => "run",
        Command::Plan => "plan",
        Command::Cleanup => "cleanup",
        Command::Prepare => "prepare",
        Command::CleanupUpstream { .. } => "cleanup-upstream",
    }
}

/// What to do; `run` when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the proxy: watch the sources and keep IPVS in sync (the default).
    Run,
    /// Print the desired IPVS state in `ipvsadm -Sn` syntax and touch nothing.
    /// Lines starting with `#` carry other facts, such as kube-ipvs0's addresses.
    Plan,
    /// Remove every virtual server and address the proxy owns, and kube-ipvs0,
    /// and nothing else.
    Cleanup,
    /// Load the kernel modules and set the sysctls `run` needs, then exit:
    /// for a privileged init container, so that `run` itself needs only
    /// NET_ADMIN and SYS_MODULE.
    Prepare,
    /// Remove what kube-proxy's IPVS mode left in netfilter (its iptables
    /// chains, the rules that jump to them, its ipsets) and print it;
    /// never IPVS, kube-ipvs0 or this proxy's own table.
    CleanupUpstream {
        /// List what would be removed and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// kube-proxy's `--detect-local-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DetectLocalMode {
    #[value(name = "ClusterCIDR")]
    ClusterCidr,
    #[value(name = "NodeCIDR")]
    NodeCidr,
    #[value(name = "BridgeInterface")]
    BridgeInterface,
    #[value(name = "InterfaceNamePrefix")]
    InterfaceNamePrefix,
}

/// Flags shared by every command.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Read kube-proxy's configuration file: a KubeProxyConfiguration
    /// (kubeproxy.config.k8s.io/v1alpha1), as kubeadm writes it into the
    /// kube-proxy ConfigMap. Flags given on the command line override it.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Read Services, EndpointSlices, Endpoints and Nodes from *.yaml, *.yml
    /// and *.json files in DIR instead of an API server, and follow changes to
    /// the directory (standalone mode).
    #[arg(long, value_name = "DIR", global = true)]
    pub manifests: Option<PathBuf>,

    /// Path to a kubeconfig file. Without it (and without --manifests) the
    /// in-cluster service account is used.
    #[arg(long, value_name = "PATH", global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// The address of the Kubernetes API server (overrides the kubeconfig's).
    #[arg(long, value_name = "URL", global = true)]
    pub master: Option<String>,

    /// The name of this node. Defaults to $NODE_NAME, then the hostname.
    #[arg(long, value_name = "NAME", global = true)]
    pub hostname_override: Option<String>,

    /// The IPVS scheduler for virtual servers whose Service does not name one
    /// with the kube-ipvs-proxy.io/scheduler annotation: rr, wrr, lc, wlc,
    /// lblc, lblcr, dh, sh, sed, nq, mh, fo, ovf or twos.
    #[arg(long, value_name = "NAME", default_value = "rr", global = true)]
    pub ipvs_scheduler: String,

    /// How often the kernel is dumped and compared with the desired state in
    /// full, repairing any drift (e.g. '30s', '1m').
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, global = true)]
    pub ipvs_sync_period: Duration,

    /// How long a drifted real server may go unnoticed: every full sync
    /// lists all virtual servers, but reads the real servers of only a share
    /// of them, so that each is read at least once per this period (e.g.
    /// '10m'). Virtual servers with draining real servers, or a failed
    /// write, are read at every full sync. The nftables sets are read when
    /// the kernel's nf_tables generation moved, and at least once per this
    /// period. Defaults to 20 ×
    /// --ipvs-sync-period; a value no longer than --ipvs-sync-period reads
    /// every real server at every full sync.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub ipvs_verify_period: Option<Duration>,

    /// The minimum time between two incremental syncs: changes arriving
    /// closer together are applied together (e.g. '1s', '250ms').
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration, global = true)]
    pub ipvs_min_sync_period: Duration,

    /// Comma-separated CIDRs whose virtual servers the proxy never touches,
    /// not even in cleanup.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',', global = true)]
    pub ipvs_exclude_cidrs: Vec<IpNet>,

    /// Set net.ipv4.conf.all.arp_ignore=1 and arp_announce=2, so that the
    /// node never answers ARP for the addresses on kube-ipvs0.
    #[arg(long, global = true)]
    pub ipvs_strict_arp: bool,

    /// The IPVS idle timeout of TCP connections (0 leaves the kernel's value).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration, global = true)]
    pub ipvs_tcp_timeout: Duration,

    /// The IPVS timeout of TCP connections after a FIN (0 leaves the kernel's value).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration, global = true)]
    pub ipvs_tcpfin_timeout: Duration,

    /// The IPVS timeout of UDP flows (0 leaves the kernel's value).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration, global = true)]
    pub ipvs_udp_timeout: Duration,

    /// Comma-separated CIDRs: NodePorts are served only on local addresses
    /// inside them. Empty means every local address but loopback, link-local
    /// and kube-ipvs0's. `primary` means the Node's primary addresses (its
    /// first InternalIP of each family), as upstream.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',', value_parser = parse_node_port_address, global = true)]
    pub nodeport_addresses: Vec<NodePortAddress>,

    /// The NodePort range of the cluster (kube-apiserver's
    /// --service-node-port-range). Virtual servers on node addresses with a
    /// port in it belong to the proxy; others are never touched.
    #[arg(long, value_name = "FIRST-LAST", default_value = "30000-32767", value_parser = parse_port_range, global = true)]
    pub service_node_port_range: RangeInclusive<u16>,

    /// The dummy interface that holds service addresses.
    #[arg(long, value_name = "NAME", default_value = "kube-ipvs0", global = true)]
    pub ipvs_interface: String,

    /// How service addresses (VIPs) are made local to the node: `address`
    /// binds each on the dummy interface, as upstream does (what `ip addr
    /// show kube-ipvs0` lists); `route` adds each as a `local` route in
    /// table local with route protocol 75 (`ip route show table local proto
    /// 75`), which is much faster with tens of thousands of VIPs. Switching
    /// a running node moves every VIP, the new way before the old one goes.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = VipMode::Address, global = true)]
    pub ipvs_vip_mode: VipMode,

    /// Where /healthz (and /livez) is served, as kube-proxy does; empty
    /// disables it.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:10256", value_parser = parse_bind_address, global = true)]
    pub healthz_bind_address: BindAddress,

    /// Where /metrics (Prometheus) is served, as kube-proxy does; empty
    /// disables it.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:10249", value_parser = parse_bind_address, global = true)]
    pub metrics_bind_address: BindAddress,

    /// The CIDR range of the cluster's pods (comma-separated for dual
    /// stack). With --detect-local-mode ClusterCIDR, ClusterIP traffic from
    /// outside it is masqueraded.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',', global = true)]
    pub cluster_cidr: Vec<IpNet>,

    /// Masquerade every connection to a ClusterIP, not only those from
    /// outside the cluster's pods.
    #[arg(long, global = true)]
    pub masquerade_all: bool,

    /// How traffic from this cluster's pods is told apart from other
    /// traffic: ClusterCIDR (--cluster-cidr), NodeCIDR (the Node's
    /// spec.podCIDRs), BridgeInterface (--pod-bridge-interface) or
    /// InterfaceNamePrefix (--pod-interface-name-prefix). Defaults to
    /// ClusterCIDR when --cluster-cidr is given; without any, ClusterIP
    /// traffic is masqueraded only under --masquerade-all.
    #[arg(long, value_name = "MODE", value_enum, global = true)]
    pub detect_local_mode: Option<DetectLocalMode>,

    /// The bridge pods are attached to (--detect-local-mode BridgeInterface).
    #[arg(long, value_name = "NAME", global = true)]
    pub pod_bridge_interface: Option<String>,

    /// The name prefix of pods' host-side interfaces
    /// (--detect-local-mode InterfaceNamePrefix).
    #[arg(long, value_name = "PREFIX", global = true)]
    pub pod_interface_name_prefix: Option<String>,

    /// Comma-separated CIDRs: an ExternalIP outside them is refused, as the
    /// DenyServiceExternalIPs admission plugin would, but on the node. Empty
    /// allows every ExternalIP that is a usable unicast address. Does not
    /// apply to LoadBalancer ingress IPs, which only the cluster's load
    /// balancer controller sets.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',', global = true)]
    pub allowed_external_ip_cidrs: Vec<IpNet>,

    /// Delete the conntrack flows of UDP and SCTP endpoints that leave a
    /// service, as kube-proxy does. Only for diagnosis: without it, clients
    /// may keep sending to a removed endpoint until their flow times out.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub conntrack_cleanup: bool,

    /// nf_conntrack_max is set to this times the number of CPUs (but at
    /// least --conntrack-min), as upstream; 0 leaves it alone.
    #[arg(long, value_name = "N", default_value_t = 32768, global = true)]
    pub conntrack_max_per_core: u32,

    /// The least nf_conntrack_max the proxy sets (with --conntrack-max-per-core).
    #[arg(long, value_name = "N", default_value_t = 131072, global = true)]
    pub conntrack_min: u32,

    /// nf_conntrack_tcp_timeout_established; 0 leaves it alone.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration, global = true)]
    pub conntrack_tcp_timeout_established: Duration,

    /// nf_conntrack_tcp_timeout_close_wait; 0 leaves it alone.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration, global = true)]
    pub conntrack_tcp_timeout_close_wait: Duration,

    /// Set nf_conntrack_tcp_be_liberal, so that out-of-window TCP packets
    /// are not marked INVALID.
    #[arg(long, global = true)]
    pub conntrack_tcp_be_liberal: bool,

    /// nf_conntrack_udp_timeout; 0 leaves it alone.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration, global = true)]
    pub conntrack_udp_timeout: Duration,

    /// nf_conntrack_udp_timeout_stream; 0 leaves it alone.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration, global = true)]
    pub conntrack_udp_timeout_stream: Duration,

    /// Sync once, then exit: 0 when the kernel matches the desired state.
    #[arg(long, global = true)]
    pub once: bool,

    /// kube-proxy's --proxy-mode: only ipvs (or empty) is accepted, so that
    /// kube-proxy's own flags work unchanged.
    #[arg(long, value_name = "MODE", value_parser = parse_proxy_mode, global = true)]
    pub proxy_mode: Option<String>,

    /// As kube-proxy's --cleanup: remove what the proxy owns and exit (the
    /// `cleanup` command).
    #[arg(long, global = true)]
    pub cleanup: bool,

    /// As kube-proxy's --init-only: load the kernel modules and set the
    /// sysctls, then exit (the `prepare` command).
    #[arg(long, global = true)]
    pub init_only: bool,

    /// The proxy's oom_score_adj, from -1000 to 1000, as kube-proxy's.
    /// Lowering it needs CAP_SYS_RESOURCE; without it the value is left as
    /// the container runtime set it, and the log says so.
    #[arg(long, value_name = "N", default_value_t = -999,
        value_parser = clap::value_parser!(i32).range(-1000..=1000), allow_hyphen_values = true, global = true)]
    pub oom_score_adj: i32,

    /// Log verbosity, as kube-proxy's -v: 0 to 2 log at info, 3 and 4 at
    /// debug (every kernel write), 5 and up at trace. RUST_LOG overrides it.
    #[arg(short = 'v', long = "v", value_name = "N", global = true)]
    pub verbosity: Option<u32>,

    /// Log format.
    #[arg(
        long,
        alias = "log-format",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub logging_format: LogFormat,
}

/// Full syncs per verify period when `--ipvs-verify-period` is not given.
/// An idle full sync then reads the real servers of a twentieth of the
/// virtual servers: with the one listing of every virtual server, at 10,000
/// services that is under a tenth of the CPU of reading them all (one
/// request per virtual server), and at the default 30s sync period a
/// drifted real server is still repaired within 10 minutes.
pub const DEFAULT_VERIFY_ROUNDS: u32 = 20;

impl Options {
    /// `--ipvs-verify-period`, or its default of [`DEFAULT_VERIFY_ROUNDS`]
    /// sync periods.
    pub fn verify_period(&self) -> Duration {
        self.ipvs_verify_period
            .unwrap_or_else(|| self.ipvs_sync_period.saturating_mul(DEFAULT_VERIFY_ROUNDS))
    }

    /// How many full syncs the verify period spans, rounded up: every owned
    /// virtual server's real servers are read at least once in that many
    /// (see `Reconciler::set_verify_rounds`). At least 1.
    pub fn verify_rounds(&self) -> u64 {
        let sync = self.ipvs_sync_period.as_nanos();
        if sync == 0 {
            return 1;
        }
        let rounds = self.verify_period().as_nanos().div_ceil(sync);
        u64::try_from(rounds).unwrap_or(u64::MAX).max(1)
    }

    /// The node's name: --hostname-override, else $NODE_NAME, else the hostname.
    pub fn node_name(&self) -> String {
        self.hostname_override
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
            .or_else(|| hostname::get().ok().and_then(|h| h.into_string().ok()))
            .unwrap_or_default()
            .to_lowercase()
    }

    /// Whether `addr` may carry NodePorts under --nodeport-addresses. With
    /// `primary`, every address may until the Node is known: see
    /// [`Options::node_port_primary`].
    pub fn allows_node_port_address(&self, addr: IpAddr) -> bool {
        self.nodeport_addresses.is_empty()
            || self.nodeport_addresses.iter().any(|n| match n {
                NodePortAddress::Cidr(net) => net.contains(&addr),
                NodePortAddress::Primary => true,
            })
    }

    /// The `--conntrack-*` flags.
    pub fn conntrack_settings(&self) -> crate::kernel::sysctl::ConntrackSettings {
        crate::kernel::sysctl::ConntrackSettings {
            max_per_core: self.conntrack_max_per_core,
            min: self.conntrack_min,
            tcp_timeout_established: self.conntrack_tcp_timeout_established,
            tcp_timeout_close_wait: self.conntrack_tcp_timeout_close_wait,
            tcp_be_liberal: self.conntrack_tcp_be_liberal,
            udp_timeout: self.conntrack_udp_timeout,
            udp_timeout_stream: self.conntrack_udp_timeout_stream,
        }
    }

    /// Whether --nodeport-addresses is `primary`: NodePorts only on the
    /// Node's primary addresses.
    pub fn node_port_primary(&self) -> bool {
        self.nodeport_addresses.contains(&NodePortAddress::Primary)
    }
}

impl Options {
    /// The nftables rules these flags ask for, or why the flags do not fit
    /// together (a mode without the flag it reads).
    pub fn nft_ruleset(&self) -> Result<NftRuleset, String> {
        let mode = match self.detect_local_mode {
            Some(mode) => Some(mode),
            None if !self.cluster_cidr.is_empty() => Some(DetectLocalMode::ClusterCidr),
            None => None,
        };
        let local_detect = match mode {
            None => LocalDetect::None,
            Some(DetectLocalMode::ClusterCidr) => {
                if self.cluster_cidr.is_empty() {
                    return Err("--detect-local-mode ClusterCIDR needs --cluster-cidr".into());
                }
                LocalDetect::Cidrs
            }
            Some(DetectLocalMode::NodeCidr) => LocalDetect::Cidrs,
            Some(DetectLocalMode::BridgeInterface) => match &self.pod_bridge_interface {
                Some(name) if !name.is_empty() => LocalDetect::BridgeInterface(name.clone()),
                _ => {
                    return Err(
                        "--detect-local-mode BridgeInterface needs --pod-bridge-interface".into(),
                    )
                }
            },
            Some(DetectLocalMode::InterfaceNamePrefix) => {
                match &self.pod_interface_name_prefix {
                    Some(prefix) if !prefix.is_empty() => {
                        LocalDetect::InterfaceNamePrefix(prefix.clone())
                    }
                    _ => return Err(
                        "--detect-local-mode InterfaceNamePrefix needs --pod-interface-name-prefix"
                            .into(),
                    ),
                }
            }
        };
        Ok(NftRuleset {
            masquerade_all: self.masquerade_all,
            local_detect,
            // The node's facts decide it (`proxy::run`), not a flag.
            ipv6: false,
        })
    }

    /// Whether the local pod CIDRs come from the Node object
    /// (`--detect-local-mode NodeCIDR`) rather than from `--cluster-cidr`.
    pub fn pod_cidrs_from_node(&self) -> bool {
        self.detect_local_mode == Some(DetectLocalMode::NodeCidr)
    }
}

/// One entry of --nodeport-addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePortAddress {
    Cidr(IpNet),
    /// The keyword `primary`: the Node's primary addresses.
    Primary,
}

fn parse_node_port_address(s: &str) -> Result<NodePortAddress, String> {
    if s == "primary" {
        return Ok(NodePortAddress::Primary);
    }
    s.parse().map(NodePortAddress::Cidr).map_err(|_| {
        format!("invalid value {s:?}: expected a CIDR such as 192.0.2.0/24, or primary")
    })
}

/// An HTTP listen address, or none (the flag was given as empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress(pub Option<std::net::SocketAddr>);

fn parse_bind_address(s: &str) -> Result<BindAddress, String> {
    if s.is_empty() {
        return Ok(BindAddress(None));
    }
    s.parse().map(|a| BindAddress(Some(a))).map_err(|_| {
        format!("invalid address {s:?}: expected IP:PORT, e.g. 0.0.0.0:10256, or empty to disable")
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (use e.g. '30s', '1m', '250ms')"))
}

/// `--proxy-mode`: `ipvs`, or empty (kube-proxy's "the default").
fn parse_proxy_mode(s: &str) -> Result<String, String> {
    match s {
        "" | "ipvs" => Ok(s.to_owned()),
        other => Err(format!(
            "kube-ipvs-proxy implements only mode ipvs, not {other:?}; run upstream kube-proxy for other modes"
        )),
    }
}

/// The log level a kube-proxy verbosity (`-v`, `logging.verbosity`) means
/// here, by the Kubernetes logging conventions: 2 is the recommended
/// production level (steady-state information), 3 adds detail about
/// changes and 4 is debug, 5 and up trace.
pub fn log_level(verbosity: u32) -> &'static str {
    match verbosity {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    }
}

fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let err = || format!("invalid port range {s:?}: expected FIRST-LAST, e.g. 30000-32767");
    let (first, last) = s.split_once('-').ok_or_else(err)?;
    let first: u16 = first.trim().parse().map_err(|_| err())?;
    let last: u16 = last.trim().parse().map_err(|_| err())?;
    if first > last {
        return Err(err());
    }
    Ok(first..=last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kube-ipvs-proxy").chain(args.iter().copied()))
    }

    #[test]
    fn no_subcommand_means_run_with_upstream_defaults() {
        let cli = parse(&[]).unwrap();
        assert_eq!(cli.command, None);
        assert_eq!(cli.options.ipvs_scheduler, "rr");
        assert_eq!(cli.options.ipvs_sync_period, Duration::from_secs(30));
        assert_eq!(cli.options.ipvs_min_sync_period, Duration::from_secs(1));
        assert_eq!(cli.options.service_node_port_range, 30000..=32767);
        assert_eq!(cli.options.ipvs_interface, "kube-ipvs0");
        assert_eq!(cli.options.ipvs_vip_mode, VipMode::Address);
        assert_eq!(
            cli.options.healthz_bind_address,
            BindAddress(Some("0.0.0.0:10256".parse().unwrap()))
        );
        assert_eq!(
            cli.options.metrics_bind_address,
            BindAddress(Some("127.0.0.1:10249".parse().unwrap()))
        );
    }

    #[test]
    fn the_verify_period_is_whole_sync_periods_twenty_by_default() {
        let cases: &[(&str, &[&str], Duration, u64)] = &[
            ("default", &[], Duration::from_secs(600), 20),
            (
                "follows the sync period",
                &["--ipvs-sync-period", "1m"],
                Duration::from_secs(1200),
                20,
            ),
            (
                "rounded up to whole periods",
                &["--ipvs-verify-period", "95s"],
                Duration::from_secs(95),
                4,
            ),
            (
                "no longer than a period: everything every time",
                &["--ipvs-verify-period", "10s"],
                Duration::from_secs(10),
                1,
            ),
            (
                "zero: everything every time",
                &["--ipvs-verify-period", "0s"],
                Duration::ZERO,
                1,
            ),
        ];
        for (name, args, period, rounds) in cases {
            let options = parse(args).unwrap().options;
            assert_eq!(options.verify_period(), *period, "{name}");
            assert_eq!(options.verify_rounds(), *rounds, "{name}");
        }
    }

    #[test]
    fn flags_work_before_and_after_the_subcommand() {
        let cli = parse(&[
            "plan",
            "--manifests",
            "/x",
            "--ipvs-exclude-cidrs",
            "10.0.0.0/8,fd00::/8",
        ])
        .unwrap();
        assert_eq!(cli.command, Some(Command::Plan));
        assert_eq!(
            cli.options.manifests.as_deref(),
            Some(std::path::Path::new("/x"))
        );
        assert_eq!(cli.options.ipvs_exclude_cidrs.len(), 2);
        let cli = parse(&[
            "--ipvs-min-sync-period",
            "250ms",
            "--log-format",
            "json",
            "run",
        ])
        .unwrap();
        assert_eq!(cli.command, Some(Command::Run));
        assert_eq!(cli.options.ipvs_min_sync_period, Duration::from_millis(250));
        assert_eq!(cli.options.logging_format, LogFormat::Json);
        let cli = parse(&["cleanup", "--ipvs-vip-mode", "route"]).unwrap();
        assert_eq!(cli.options.ipvs_vip_mode, VipMode::Route);
        let error = parse(&["--ipvs-vip-mode", "routes"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("routes") && error.contains("address"),
            "{error}"
        );
        let cli = parse(&["cleanup-upstream", "--dry-run"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::CleanupUpstream { dry_run: true })
        );
        let cli = parse(&["cleanup-upstream"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::CleanupUpstream { dry_run: false })
        );
    }

    #[test]
    fn bad_values_name_the_flag_and_value() {
        let cases = [
            (&["--ipvs-sync-period", "soon"][..], "soon"),
            (&["--ipvs-exclude-cidrs", "10.0.0.0/33"][..], "10.0.0.0/33"),
            (
                &["--service-node-port-range", "32767-30000"][..],
                "32767-30000",
            ),
        ];
        for (args, value) in cases {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(args[0]) && err.contains(value), "{err}");
        }
    }

    #[test]
    fn an_empty_bind_address_disables_the_endpoint() {
        let cli = parse(&[
            "--metrics-bind-address",
            "",
            "--healthz-bind-address",
            "[::]:10256",
        ])
        .unwrap();
        assert_eq!(cli.options.metrics_bind_address, BindAddress(None));
        assert_eq!(
            cli.options.healthz_bind_address,
            BindAddress(Some("[::]:10256".parse().unwrap()))
        );
    }

    #[test]
    fn node_port_addresses_filter_by_cidr() {
        let cli = parse(&["--nodeport-addresses", "192.0.2.0/24"]).unwrap();
        assert!(cli
            .options
            .allows_node_port_address("192.0.2.7".parse().unwrap()));
        assert!(!cli
            .options
            .allows_node_port_address("198.51.100.1".parse().unwrap()));
        let cli = parse(&[]).unwrap();
        assert!(cli
            .options
            .allows_node_port_address("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn detect_local_mode_decides_the_rules() {
        let ruleset = |args: &[&str]| parse(args).unwrap().options.nft_ruleset();
        let detect = |args: &[&str]| ruleset(args).map(|r| r.local_detect);
        let cases: &[(&str, &[&str], Result<LocalDetect, &str>)] = &[
            ("nothing known", &[], Ok(LocalDetect::None)),
            (
                "--cluster-cidr alone means ClusterCIDR",
                &["--cluster-cidr", "10.244.0.0/16"],
                Ok(LocalDetect::Cidrs),
            ),
            (
                "ClusterCIDR without a CIDR",
                &["--detect-local-mode", "ClusterCIDR"],
                Err("--detect-local-mode ClusterCIDR needs --cluster-cidr"),
            ),
            (
                "NodeCIDR reads the Node",
                &["--detect-local-mode", "NodeCIDR"],
                Ok(LocalDetect::Cidrs),
            ),
            (
                "BridgeInterface",
                &[
                    "--detect-local-mode",
                    "BridgeInterface",
                    "--pod-bridge-interface",
                    "cbr0",
                ],
                Ok(LocalDetect::BridgeInterface("cbr0".into())),
            ),
            (
                "BridgeInterface without a bridge",
                &["--detect-local-mode", "BridgeInterface"],
                Err("--detect-local-mode BridgeInterface needs --pod-bridge-interface"),
            ),
            (
                "InterfaceNamePrefix",
                &[
                    "--detect-local-mode",
                    "InterfaceNamePrefix",
                    "--pod-interface-name-prefix",
                    "veth",
                ],
                Ok(LocalDetect::InterfaceNamePrefix("veth".into())),
            ),
        ];
        for (name, args, want) in cases {
            let want = want.clone().map_err(str::to_owned);
            assert_eq!(detect(args), want, "{name}");
        }
        assert!(ruleset(&["--masquerade-all"]).unwrap().masquerade_all);
        let node_cidr = parse(&["--detect-local-mode", "NodeCIDR"]).unwrap().options;
        assert!(node_cidr.pod_cidrs_from_node());
        assert!(
            parse(&["--detect-local-mode", "PodCIDR"]).is_err(),
            "unknown mode"
        );
        let cli = parse(&["--conntrack-cleanup", "false"]).unwrap();
        assert!(!cli.options.conntrack_cleanup);
        assert!(parse(&[]).unwrap().options.conntrack_cleanup);
    }
}
