//! The facts the proxy reads from its own Node object.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use super::error::{ModelError, ObjectKind, ObjectRef, Problem};
use super::field;

/// The label naming a Node's zone, matched against endpoints' zone hints.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The taint the Cluster Autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// The proxy's Node: name, labels, addresses, and whether it is going away.
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
    /// `metadata.deletionTimestamp` is set, or `spec.taints` holds
    /// [`TO_BE_DELETED_TAINT`]: upstream then fails `/healthz` so that load
    /// balancers drain the node.
    pub to_be_deleted: bool,
}

impl NodeInfo {
    /// Converts a Node. Hostname and DNS addresses are ignored.
    pub fn from_node(node: &Node) -> Result<NodeInfo, ModelError> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let obj = ObjectRef {
            kind: ObjectKind::Node,
            namespace: None,
            name: if name.is_empty() { "<unnamed>" } else { name },
            service: None,
            uid: None,
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
            to_be_deleted: false,
        };
        let spec = node.spec.as_ref();
        info.to_be_deleted = node.metadata.deletion_timestamp.is_some()
            || spec
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
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

    /// This node's zone: its [`ZONE_LABEL`], unless absent or empty.
    pub fn zone(&self) -> Option<&str> {
        self.labels
            .get(ZONE_LABEL)
            .map(String::as_str)
            .filter(|z| !z.is_empty())
    }

    /// Whether load balancers may send this node traffic (upstream's
    /// `nodeEligible`): not while it is being deleted.
    pub fn eligible(&self) -> bool {
        !self.to_be_deleted
    }

    /// InternalIPs then ExternalIPs: the addresses NodePorts may listen on
    /// before `--nodeport-addresses` narrows them.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.internal_ips.iter().chain(&self.external_ips).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn node(deleting: bool, taints: &[&str]) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some("node-1".into());
        if deleting {
            node.metadata.deletion_timestamp = Some(Time(Default::default()));
        }
        if !taints.is_empty() {
            node.spec = Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|key| Taint {
                            key: (*key).to_owned(),
                            effect: "NoSchedule".into(),
                            ..Taint::default()
                        })
                        .collect(),
                ),
                ..NodeSpec::default()
            });
        }
        node
    }

    #[test]
    fn a_node_being_deleted_is_not_eligible() {
        let cases = [
            ("a plain node is eligible", node(false, &[]), true),
            (
                "another taint leaves it eligible",
                node(false, &["node.kubernetes.io/unschedulable"]),
                true,
            ),
            ("deletionTimestamp set", node(true, &[]), false),
            (
                "tainted by the Cluster Autoscaler",
                node(
                    false,
                    &["node.kubernetes.io/unschedulable", TO_BE_DELETED_TAINT],
                ),
                false,
            ),
            ("both", node(true, &[TO_BE_DELETED_TAINT]), false),
        ];
        for (name, node, eligible) in cases {
            let info = NodeInfo::from_node(&node).unwrap();
            assert_eq!(info.eligible(), eligible, "{name}");
            assert_eq!(info.to_be_deleted, !eligible, "{name}");
        }
    }
}
