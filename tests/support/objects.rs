//! API objects and keys the in-cluster tests build again and again.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_ipvs_proxy::desired::{Protocol, VirtualServerKey};

/// Metadata with `labels` (an empty map when there are none).
pub fn meta(namespace: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: namespace.map(str::to_owned),
        name: Some(name.to_owned()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

/// A ClusterIP Service with one TCP port 80 named `http`, in `default`.
pub fn service(name: &str, cluster_ip: &str) -> Service {
    Service {
        metadata: meta(Some("default"), name, &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.to_owned()),
            cluster_ips: Some(vec![cluster_ip.to_owned()]),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: 80,
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// `service`'s EndpointSlice: each address a ready endpoint on TCP port
/// 8080 named `http`.
pub fn slice(service: &str, addresses: &[impl AsRef<str>]) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(
            Some("default"),
            &format!("{service}-1"),
            &[("kubernetes.io/service-name", service)],
        ),
        address_type: "IPv4".to_owned(),
        endpoints: addresses
            .iter()
            .map(|a| Endpoint {
                addresses: vec![a.as_ref().to_owned()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..EndpointConditions::default()
                }),
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".to_owned()),
            port: Some(8080),
            protocol: Some("TCP".to_owned()),
            ..EndpointPort::default()
        }]),
    }
}

/// The TCP port-80 virtual server on `addr`.
pub fn key(addr: &str) -> VirtualServerKey {
    VirtualServerKey {
        addr: addr.parse().unwrap(),
        protocol: Protocol::Tcp,
        port: 80,
    }
}
