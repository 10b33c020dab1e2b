//! The facts the proxy reads from its own Node object.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use super::error::{ModelError, ObjectKind, ObjectRef, Problem};
use super::field;

/// The proxy's Node: name, labels and addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: Arc<str>,
    pub labels: BTreeMap<String, String>,
    /// `status.addresses` of type InternalIP, in order.
    pub internal_ips: Vec<IpAddr>,
    /// `status.addresses` of type ExternalIP, in order.
    pub external_ips: Vec<IpAddr>,
    /// `spec.podCIDRs` (else `spec.podCIDR`): this node's pods, for
    /// `--detect-local-mode NodeCIDR`.
    pub pod_cidrs: Vec<ipnet::IpNet>,
}

impl NodeInfo {
    /// Converts a Node. Hostname and DNS addresses are ignored.
    pub fn from_node(node: &Node) -> Result<NodeInfo, ModelError> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let obj = ObjectRef {
            kind: ObjectKind::Node,
            namespace: None,
            name: if name.is_empty() { "<unnamed>" } else { name },
        };
        if name.is_empty() {
            return Err(obj.error("metadata.name", Problem::Missing));
        }
        let mut info = NodeInfo {
            name: name.into(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            internal_ips: Vec::new(),
            external_ips: Vec::new(),
            pod_cidrs: Vec::new(),
        };
        let spec = node.spec.as_ref();
        let pod_cidrs: Vec<(String, &String)> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
            Some(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("spec.podCIDRs[{i}]"), v))
                .collect(),
            _ => spec
                .and_then(|s| s.pod_cidr.as_ref())
                .filter(|v| !v.is_empty())
                .map(|v| ("spec.podCIDR".to_owned(), v))
                .into_iter()
                .collect(),
        };
        for (field_name, value) in pod_cidrs {
            let net = field::cidr(&obj, || field_name, value)?;
            if !info.pod_cidrs.contains(&net) {
                info.pod_cidrs.push(net);
            }
        }
        let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for (i, address) in addresses.into_iter().flatten().enumerate() {
            let list = match address.type_.as_str() {
                "InternalIP" => &mut info.internal_ips,
                "ExternalIP" => &mut info.external_ips,
                _ => continue,
            };
            let ip = field::ip(
                &obj,
                || format!("status.addresses[{i}].address"),
                &address.address,
            )?;
            if !list.contains(&ip) {
                list.push(ip);
            }
        }
        Ok(info)
    }

    /// InternalIPs then ExternalIPs: the addresses NodePorts may listen on
    /// before `--nodeport-addresses` narrows them.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.internal_ips.iter().chain(&self.external_ips).copied()
    }
}
