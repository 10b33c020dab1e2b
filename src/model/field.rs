//! Parsing the API's scalar fields (names, IPs, ports, protocols) into the
//! model's types, each failure naming the object and the field.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::error::{ModelError, ObjectKind, ObjectRef, Problem};
use crate::desired::Protocol;

/// The namespace an object without one lives in, as `kubectl apply` assumes.
const DEFAULT_NAMESPACE: &str = "default";

/// The identity of a namespaced object: its namespace (defaulted) and name.
pub(crate) fn namespaced<'a>(
    kind: ObjectKind,
    meta: &'a ObjectMeta,
) -> Result<ObjectRef<'a>, ModelError> {
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    // A Service, and the Endpoints that share its name, belong to it; a
    // slice names its Service in a label, which the caller reads.
    let own_service = matches!(kind, ObjectKind::Service | ObjectKind::Endpoints);
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => Ok(ObjectRef {
            kind,
            namespace: Some(namespace),
            name,
            service: own_service.then_some(name),
            uid: meta.uid.as_deref(),
        }),
        _ => Err(ObjectRef {
            kind,
            namespace: Some(namespace),
            name: "<unnamed>",
            service: None,
            uid: None,
        }
        .error("metadata.name", Problem::Missing)),
    }
}

pub(crate) fn ip(
    obj: &ObjectRef<'_>,
    field: impl FnOnce() -> String,
    value: &str,
) -> Result<IpAddr, ModelError> {
    value
        .parse()
        .map_err(|_| obj.error(field(), Problem::InvalidIp(value.to_owned())))
}

/// A CIDR such as `192.0.2.0/24`; surrounding spaces are ignored, as
/// upstream trims them. Host bits are cleared (`192.0.2.7/24` is the /24).
pub(crate) fn cidr(
    obj: &ObjectRef<'_>,
    field: impl FnOnce() -> String,
    value: &str,
) -> Result<ipnet::IpNet, ModelError> {
    value
        .trim()
        .parse::<ipnet::IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| obj.error(field(), Problem::InvalidCidr(value.to_owned())))
}

/// A port number: 1..=65535.
pub(crate) fn port(
    obj: &ObjectRef<'_>,
    field: impl FnOnce() -> String,
    value: i32,
) -> Result<u16, ModelError> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(obj.error(field(), Problem::OutOfRange(value.into()))),
    }
}

/// A protocol; the API's default is TCP.
pub(crate) fn protocol(
    obj: &ObjectRef<'_>,
    field: impl FnOnce() -> String,
    value: Option<&str>,
) -> Result<Protocol, ModelError> {
    match value {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(obj.error(field(), Problem::Unsupported(other.to_owned()))),
    }
}
