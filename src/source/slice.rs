//! discovery/v1 EndpointSlices as the proxy decodes them: only the fields a
//! service proxy reads.
//!
//! k8s-openapi's `EndpointSlice` decodes every field of every endpoint
//! (`targetRef` alone is seven strings) and allocates a string for each
//! address and node name. At 10,000 slices of ten endpoints that decoding
//! was most of the in-cluster start-up's wait for the lists. This type
//! keeps the wire format, so both sources decode into it directly:
//! - `metadata` keeps the name, namespace, uid, labels, resourceVersion and
//!   the last-change-trigger-time annotation (for the network programming
//!   latency metric), and skips the rest (`managedFields` is often the
//!   largest part of a slice);
//! - an endpoint keeps `addresses`, `conditions`, `nodeName` and `hints`;
//! - an address is parsed as it is read, and one that is not an IP address
//!   is kept as text, so that the model can reject it by name;
//! - a node name is one `Arc<str>`, which the model shares between slices.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Weak};

use k8s_openapi::api::discovery::v1 as api;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use smallvec::SmallVec;

use crate::metrics::LAST_CHANGE_TRIGGER_TIME_ANNOTATION;

/// An EndpointSlice, with the fields of the API's that a proxy reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// Name, namespace, uid, labels, resourceVersion and the
    /// last-change-trigger-time annotation; nothing else.
    #[serde(deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    /// `IPv4`, `IPv6` or `FQDN`; required, as by the API.
    pub address_type: String,
    /// The API server writes a slice without endpoints as `null`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<api::EndpointPort>>,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Almost always exactly one: it is kept inline.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub addresses: SmallVec<[Address; 1]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<api::EndpointConditions>,
    #[serde(
        default,
        deserialize_with = "node_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub node_name: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<api::EndpointHints>,
}

/// One of an endpoint's `addresses`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Ip(IpAddr),
    /// Not an IP address (a hostname of an FQDN slice, or a mistake), as
    /// written.
    Other(Box<str>),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(ip) => ip.fmt(f),
            Address::Other(text) => f.write_str(text),
        }
    }
}

impl From<&str> for Address {
    fn from(text: &str) -> Address {
        match text.parse() {
            Ok(ip) => Address::Ip(ip),
            Err(_) => Address::Other(text.into()),
        }
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AddressVisitor;
        impl Visitor<'_> for AddressVisitor {
            type Value = Address;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Address, E> {
                Ok(Address::from(text))
            }
        }
        deserializer.deserialize_str(AddressVisitor)
    }
}

/// A list that may be `null`, as Go writes an empty one, as empty.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The metadata fields the proxy reads, decoded without the others.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMetadata {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

fn slim_metadata<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    SlimMetadata::deserialize(deserializer).map(SlimMetadata::into_object_meta)
}

impl SlimMetadata {
    fn into_object_meta(self) -> ObjectMeta {
        let annotations = self.annotations.map(|mut annotations| {
            annotations.retain(|key, _| key == LAST_CHANGE_TRIGGER_TIME_ANNOTATION);
            annotations
        });
        ObjectMeta {
            name: self.name,
            namespace: self.namespace,
            uid: self.uid,
            resource_version: self.resource_version,
            labels: self.labels,
            annotations: annotations.filter(|a| !a.is_empty()),
            ..ObjectMeta::default()
        }
    }
}

/// At most one allocation, where serde's `Arc<str>` makes a `Box<str>`
/// first, and none for a name [`recent_node_name`] holds.
fn node_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Arc<str>>, D::Error> {
    struct NameVisitor;
    impl<'de> Visitor<'de> for NameVisitor {
        type Value = Option<Arc<str>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a node name or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
        fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
            Ok(Some(recent_node_name(name)))
        }
    }
    deserializer.deserialize_option(NameVisitor)
}

/// Slots of [`RecentNames`]: a cluster's node names, as far as they fit.
const RECENT_NAME_SLOTS: usize = 512;

/// The node names this thread decoded last, one per slot of a small
/// direct-mapped table.
///
/// A list of 10,000 slices of ten endpoints names the same few hundred
/// nodes 100,000 times; each name read was an allocation, freed again
/// when the model shared it. A name found here is one more reference to
/// the allocation before it instead, which the model then finds in its own
/// table (`model::SharedNames`) as the very same.
///
/// A slot holds a weak reference: the table keeps no name alive, so the
/// model still forgets a name once nothing it holds uses it, and a name
/// that nothing holds any more is allocated again. A slot holds its name
/// until another name takes it, so the table never grows, and a cluster
/// with more nodes than slots only finds fewer names here.
struct RecentNames {
    hasher: foldhash::fast::FixedState,
    slots: Box<[Option<Weak<str>>]>,
}

thread_local! {
    static RECENT_NODE_NAMES: std::cell::RefCell<RecentNames> =
        std::cell::RefCell::new(RecentNames {
            hasher: foldhash::fast::FixedState::default(),
            slots: vec![None; RECENT_NAME_SLOTS].into_boxed_slice(),
        });
}

/// `name` as an `Arc<str>`: the one this thread decoded last if its slot
/// still names it and something still holds it, else a new one, which
/// takes the slot.
fn recent_node_name(name: &str) -> Arc<str> {
    use std::hash::BuildHasher;
    RECENT_NODE_NAMES.with_borrow_mut(|recent| {
        // The remainder is below the slot count, so it fits a usize.
        let at = (recent.hasher.hash_one(name) % RECENT_NAME_SLOTS as u64) as usize;
        let slot = &mut recent.slots[at];
        if let Some(held) = slot.as_ref().and_then(Weak::upgrade) {
            if *held == *name {
                return held;
            }
        }
        let fresh: Arc<str> = Arc::from(name);
        *slot = Some(Arc::downgrade(&fresh));
        fresh
    })
}

impl k8s_openapi::Resource for EndpointSlice {
    const API_VERSION: &'static str = <api::EndpointSlice as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <api::EndpointSlice as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <api::EndpointSlice as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <api::EndpointSlice as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str =
        <api::EndpointSlice as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for EndpointSlice {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The fields a proxy reads of k8s-openapi's slice; for callers that build
/// slices with k8s-openapi's types (tests, the benchmark).
impl From<api::EndpointSlice> for EndpointSlice {
    fn from(slice: api::EndpointSlice) -> EndpointSlice {
        let meta = slice.metadata;
        let metadata = SlimMetadata {
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            resource_version: meta.resource_version,
            labels: meta.labels,
            annotations: meta.annotations,
        };
        EndpointSlice {
            metadata: metadata.into_object_meta(),
            address_type: slice.address_type,
            endpoints: slice.endpoints.into_iter().map(Endpoint::from).collect(),
            ports: slice.ports,
        }
    }
}

impl From<api::Endpoint> for Endpoint {
    fn from(endpoint: api::Endpoint) -> Endpoint {
        Endpoint {
            addresses: endpoint
                .addresses
                .iter()
                .map(|a| Address::from(a.as_str()))
                .collect(),
            conditions: endpoint.conditions,
            // Shared as the decoder shares them, so that a converted slice
            // is the same as a decoded one down to its allocations.
            node_name: endpoint.node_name.as_deref().map(recent_node_name),
            hints: endpoint.hints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).expect("decodes")
    }

    #[test]
    fn decodes_what_the_proxy_reads_and_skips_the_rest() {
        let slice = decode(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-abc",
                "namespace": "prod",
                "uid": "0b5c5e9e-3b9a-4f7c-9d0e-6c1f2a3b4c5d",
                "resourceVersion": "42",
                "labels": {"kubernetes.io/service-name": "web"},
                "annotations": {
                    "a": "b",
                    "endpoints.kubernetes.io/last-change-trigger-time": "2026-12-05T10:00:00Z"
                },
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "u"}],
                "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": {"f:x": {}}}]
            },
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": ["10.0.0.1", "10.0.0.2"],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "node-a",
                "zone": "z1",
                "hostname": "h",
                "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "prod"},
                "hints": {"forZones": [{"name": "z1"}]}
            }, {
                "addresses": ["not-an-ip"],
                "nodeName": "node-a"
            }],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }));
        let meta = &slice.metadata;
        assert_eq!(meta.name.as_deref(), Some("web-abc"));
        assert_eq!(meta.namespace.as_deref(), Some("prod"));
        assert_eq!(
            meta.uid.as_deref(),
            Some("0b5c5e9e-3b9a-4f7c-9d0e-6c1f2a3b4c5d")
        );
        assert_eq!(meta.resource_version.as_deref(), Some("42"));
        assert_eq!(
            meta.labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name")),
            Some(&"web".to_owned())
        );
        // Only the annotation the proxy reads (the latency metric's).
        assert_eq!(
            meta.annotations,
            Some(
                [(
                    LAST_CHANGE_TRIGGER_TIME_ANNOTATION.to_owned(),
                    "2026-12-05T10:00:00Z".to_owned()
                )]
                .into()
            )
        );
        assert_eq!(meta.owner_references, None);
        assert_eq!(meta.managed_fields, None);
        assert_eq!(slice.address_type, "IPv4");
        let [first, second] = &slice.endpoints[..] else {
            panic!("two endpoints: {:?}", slice.endpoints);
        };
        assert_eq!(
            first.addresses.as_slice(),
            [
                Address::Ip("10.0.0.1".parse().unwrap()),
                Address::Ip("10.0.0.2".parse().unwrap())
            ]
        );
        assert_eq!(
            first.conditions.as_ref().and_then(|c| c.terminating),
            Some(false)
        );
        assert_eq!(first.node_name.as_deref(), Some("node-a"));
        let zones = first.hints.as_ref().and_then(|h| h.for_zones.as_ref());
        assert_eq!(zones.map(|z| z[0].name.as_str()), Some("z1"));
        assert_eq!(
            second.addresses.as_slice(),
            [Address::Other("not-an-ip".into())]
        );
        assert_eq!(second.conditions, None);
        assert_eq!(slice.ports.as_ref().map(|p| p[0].port), Some(Some(8080)));
    }

    #[test]
    fn absent_and_null_fields_decode_as_absent() {
        let slice = decode(json!({
            "metadata": {"name": "s"},
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["db.example"], "nodeName": null}]
        }));
        assert_eq!(slice.ports, None);
        assert_eq!(slice.endpoints[0].node_name, None);
        assert_eq!(
            slice.endpoints[0].addresses.as_slice(),
            [Address::Other("db.example".into())]
        );
        let empty = decode(json!({"metadata": {"name": "s"}, "addressType": "IPv4"}));
        assert!(empty.endpoints.is_empty());
        // What the API server sends for a slice of a Service with no pods,
        // and for an endpoint without addresses.
        let nulls = decode(json!({
            "metadata": {"name": "s", "labels": null},
            "addressType": "IPv4",
            "endpoints": null,
            "ports": null
        }));
        assert!(nulls.endpoints.is_empty());
        assert_eq!((nulls.ports, nulls.metadata.labels), (None, None));
        let no_addresses = decode(json!({
            "metadata": {"name": "s"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": null, "conditions": null, "hints": null}]
        }));
        assert!(no_addresses.endpoints[0].addresses.is_empty());
    }

    #[test]
    fn address_type_is_required_and_addresses_are_strings() {
        let missing = serde_json::from_value::<EndpointSlice>(json!({"metadata": {"name": "s"}}));
        assert!(
            missing.unwrap_err().to_string().contains("addressType"),
            "missing addressType is named"
        );
        let number = serde_json::from_value::<EndpointSlice>(json!({
            "metadata": {"name": "s"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [10]}]
        }));
        assert!(number.is_err(), "an address must be a string");
    }

    #[test]
    fn serializes_back_to_the_same_fields() {
        let value = json!({
            "metadata": {"name": "s", "namespace": "ns", "labels": {"k": "v"}},
            "addressType": "IPv6",
            "endpoints": [{
                "addresses": ["fd00::1", "odd"],
                "conditions": {"ready": false},
                "nodeName": "n"
            }],
            "ports": [{"port": 53, "protocol": "UDP"}]
        });
        let slice = decode(value.clone());
        assert_eq!(serde_json::to_value(&slice).unwrap(), value);
    }

    #[test]
    fn converts_from_k8s_openapi() {
        let k8s = api::EndpointSlice {
            metadata: ObjectMeta {
                name: Some("s".into()),
                annotations: Some([("a".to_owned(), "b".to_owned())].into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![api::Endpoint {
                addresses: vec!["10.0.0.1".into()],
                node_name: Some("n".into()),
                zone: Some("z".into()),
                ..api::Endpoint::default()
            }],
            ports: None,
        };
        let expected = decode(json!({
            "metadata": {"name": "s"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "n"}]
        }));
        assert_eq!(EndpointSlice::from(k8s), expected);
    }

    #[test]
    fn node_names_decoded_again_share_one_allocation() {
        let names = |count: usize| -> Vec<Arc<str>> {
            let slice = decode(json!({
                "metadata": {"name": "s"},
                "addressType": "IPv4",
                "endpoints": (0..count)
                    .map(|i| json!({"addresses": ["10.0.0.1"], "nodeName": format!("node-{i}")}))
                    .collect::<Vec<_>>(),
            }));
            let names = slice.endpoints.into_iter().map(|ep| ep.node_name.unwrap());
            names.collect()
        };
        let first = names(3);
        for name in &first {
            // The model forgets a name that only its own table holds.
            assert_eq!(Arc::strong_count(name), 1, "{name} is held elsewhere");
        }
        let again = names(3);
        for (a, b) in first.iter().zip(&again) {
            assert!(Arc::ptr_eq(a, b), "{a} decoded twice is two allocations");
        }
        // Once nothing holds a name, decoding it again allocates it anew.
        drop((first, again));
        let fresh = names(1);
        assert_eq!(*fresh[0], *"node-0");
        assert_eq!(Arc::strong_count(&fresh[0]), 1);
        // More names than slots: some evict others, and each decoded name
        // is still exactly its own.
        let many = names(4 * RECENT_NAME_SLOTS);
        for (i, name) in many.iter().enumerate() {
            assert_eq!(**name, *format!("node-{i}"));
        }
    }

    #[test]
    fn converted_slices_share_node_names_as_decoded_ones_do() {
        let k8s = |name: &str| api::EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: ["node-a", "node-b", "node-a"]
                .into_iter()
                .map(|node| api::Endpoint {
                    addresses: vec!["10.0.0.1".into()],
                    node_name: Some(node.into()),
                    ..Default::default()
                })
                .collect(),
            ports: None,
        };
        let nodes = |slice: &EndpointSlice| -> Vec<Arc<str>> {
            let names = slice.endpoints.iter().map(|ep| ep.node_name.clone());
            names
                .map(|name| name.expect("every endpoint names its node"))
                .collect()
        };
        let (one, two) = (
            EndpointSlice::from(k8s("one")),
            EndpointSlice::from(k8s("two")),
        );
        let (one, two) = (nodes(&one), nodes(&two));
        assert!(Arc::ptr_eq(&one[0], &one[2]), "node-a twice in one slice");
        for (a, b) in one.iter().zip(&two) {
            assert!(Arc::ptr_eq(a, b), "{a} in two slices is two allocations");
        }
        assert!(!Arc::ptr_eq(&one[0], &one[1]));
    }
}
