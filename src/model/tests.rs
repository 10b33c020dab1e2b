//! Model tests: conversions from API objects (built from JSON as the API
//! server would send them) and the change tracking of [`Model::apply`].

use std::net::IpAddr;

use foldhash::HashSet;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use serde_json::{json, Value};

use super::*;
use crate::desired::Protocol;
use crate::source::EndpointSlice;

fn service(v: Value) -> Service {
    serde_json::from_value(v).expect("test Service JSON")
}

fn slice(v: Value) -> EndpointSlice {
    serde_json::from_value(v).expect("test EndpointSlice JSON")
}

fn endpoints(v: Value) -> Endpoints {
    serde_json::from_value(v).expect("test Endpoints JSON")
}

fn node(v: Value) -> Node {
    serde_json::from_value(v).expect("test Node JSON")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn name(s: &str) -> ServiceName {
    let (ns, n) = s.split_once('/').unwrap();
    ServiceName::new(ns, n)
}

fn names(list: &[&str]) -> HashSet<ServiceName> {
    list.iter().map(|s| name(s)).collect()
}

/// A ClusterIP service `default/<n>` at `ip` with one TCP port 80 "http".
fn web(n: &str, cluster_ip: &str) -> Service {
    service(json!({
        "metadata": {"namespace": "default", "name": n},
        "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80}]},
    }))
}

/// A slice of `default/<svc>` named `n` with ready endpoints `ips` on port 8080 "http".
fn web_slice(n: &str, svc: &str, ips: &[&str]) -> EndpointSlice {
    let eps: Vec<Value> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
    slice(json!({
        "metadata": {"namespace": "default", "name": n,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080}],
    }))
}

// ---- Service conversion -------------------------------------------------

#[test]
fn service_conversion() {
    struct Case {
        name: &'static str,
        svc: Value,
        check: fn(&ServiceInfo),
    }
    let cases = [
        Case {
            name: "defaults: ClusterIP type, TCP, unnamed port, no affinity, Cluster policies",
            svc: json!({"metadata": {"name": "a"},
                        "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}),
            check: |s| {
                assert_eq!(s.name, name("default/a"));
                assert_eq!(s.type_, ServiceType::ClusterIp);
                assert_eq!(s.cluster_ips, vec![ip("10.96.0.1")]);
                assert_eq!(
                    s.ports,
                    vec![ServicePortInfo {
                        name: "".into(),
                        protocol: Protocol::Tcp,
                        port: 80,
                        node_port: None,
                        target_port: None,
                    }]
                );
                assert_eq!(s.session_affinity, None);
                assert!(!s.external_traffic_local && !s.internal_traffic_local);
                assert_eq!(s.skip, None);
                assert!(!s.has_selector);
            },
        },
        Case {
            name: "clusterIPs wins over clusterIP and keeps both families",
            svc: json!({"metadata": {"namespace": "ns", "name": "a"},
                        "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"],
                                 "ports": [{"port": 80}]}}),
            check: |s| assert_eq!(s.cluster_ips, vec![ip("10.96.0.1"), ip("fd00::1")]),
        },
        Case {
            name: "every port with protocol, nodePort and targetPort",
            svc: json!({"metadata": {"name": "a"},
                        "spec": {"type": "NodePort", "clusterIP": "10.96.0.1", "selector": {"app": "a"},
                                 "ports": [
                                     {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053, "targetPort": 5353},
                                     {"name": "sctp", "port": 9, "protocol": "SCTP", "targetPort": "sctp"}]}}),
            check: |s| {
                assert_eq!(s.type_, ServiceType::NodePort);
                assert!(s.has_selector);
                assert_eq!(
                    s.ports,
                    vec![
                        ServicePortInfo {
                            name: "dns".into(),
                            protocol: Protocol::Udp,
                            port: 53,
                            node_port: Some(30053),
                            target_port: Some(TargetPort::Number(5353)),
                        },
                        ServicePortInfo {
                            name: "sctp".into(),
                            protocol: Protocol::Sctp,
                            port: 9,
                            node_port: None,
                            target_port: Some(TargetPort::Name("sctp".into())),
                        },
                    ]
                );
            },
        },
        Case {
            name: "ClientIP affinity without config defaults to 10800 seconds",
            svc: json!({"metadata": {"name": "a"},
                        "spec": {"clusterIP": "10.96.0.1", "sessionAffinity": "ClientIP"}}),
            check: |s| assert_eq!(s.session_affinity, Some(10800)),
        },
        Case {
            name: "ClientIP affinity with an explicit timeout",
            svc: json!({"metadata": {"name": "a"},
                        "spec": {"clusterIP": "10.96.0.1", "sessionAffinity": "ClientIP",
                                 "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}}),
            check: |s| assert_eq!(s.session_affinity, Some(60)),
        },
        Case {
            name: "Local traffic policies",
            svc: json!({"metadata": {"name": "a"},
                        "spec": {"clusterIP": "10.96.0.1", "externalTrafficPolicy": "Local",
                                 "internalTrafficPolicy": "Local"}}),
            check: |s| assert!(s.external_traffic_local && s.internal_traffic_local),
        },
        Case {
            name:
                "external IPs and LB ingress IPs, skipping ipMode Proxy and hostname-only entries",
            svc: json!({"metadata": {"name": "a"},
                        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.1",
                                 "externalIPs": ["192.0.2.1", "192.0.2.1"]},
                        "status": {"loadBalancer": {"ingress": [
                            {"ip": "198.51.100.1"},
                            {"ip": "198.51.100.2", "ipMode": "Proxy"},
                            {"ip": "198.51.100.3", "ipMode": "VIP"},
                            {"hostname": "lb.example"}]}}}),
            check: |s| {
                assert_eq!(s.external_ips, vec![ip("192.0.2.1")]);
                assert_eq!(
                    s.load_balancer_ips,
                    vec![ip("198.51.100.1"), ip("198.51.100.3")]
                );
            },
        },
        Case {
            name: "LB ingress of a service that is no longer type LoadBalancer is ignored",
            svc: json!({"metadata": {"name": "a"},
                        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1"},
                        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}}),
            check: |s| assert!(s.load_balancer_ips.is_empty()),
        },
        Case {
            name: "scheduler annotation is carried raw",
            svc: json!({"metadata": {"name": "a", "annotations": {"kube-ipvs-proxy.io/scheduler": "lc"}},
                        "spec": {"clusterIP": "10.96.0.1"}}),
            check: |s| assert_eq!(s.scheduler.as_deref(), Some("lc")),
        },
        Case {
            name: "ExternalName is skipped",
            svc: json!({"metadata": {"name": "a"},
                        "spec": {"type": "ExternalName", "externalName": "example.com",
                                 "ports": [{"port": 80, "protocol": "HTTP"}]}}),
            check: |s| {
                assert_eq!(s.skip, Some(SkipReason::ExternalName));
                assert!(s.ports.is_empty());
            },
        },
        Case {
            name: "headless (clusterIP None) is skipped",
            svc: json!({"metadata": {"name": "a"},
                        "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]}}),
            check: |s| assert_eq!(s.skip, Some(SkipReason::Headless)),
        },
        Case {
            name: "no cluster IP allocated is skipped",
            svc: json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}),
            check: |s| assert_eq!(s.skip, Some(SkipReason::NoClusterIp)),
        },
        Case {
            name: "service-proxy-name label hands the service to another proxy",
            svc: json!({"metadata": {"name": "a", "labels": {"service.kubernetes.io/service-proxy-name": "other"}},
                        "spec": {"clusterIP": "10.96.0.1"}}),
            check: |s| {
                assert_eq!(s.skip, Some(SkipReason::OtherProxy));
                assert!(s.cluster_ips.is_empty());
            },
        },
    ];
    for case in cases {
        let info = ServiceInfo::from_service(&service(case.svc))
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        (case.check)(&info);
    }
}

#[test]
fn a_converted_service_holds_no_spare_capacity() {
    // The model keeps every Service for as long as it lives: its vectors
    // hold what they carry and no room to grow, duplicates dropped.
    let svc = service(json!({
        "metadata": {"namespace": "default", "name": "a"},
        "spec": {"type": "LoadBalancer",
                 "clusterIPs": ["10.96.0.1", "fd00::1"],
                 "externalIPs": ["192.0.2.1", "192.0.2.1", "192.0.2.2"],
                 "loadBalancerSourceRanges": ["10.0.0.0/8"],
                 "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443},
                           {"name": "dns", "port": 53, "protocol": "UDP"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}},
    }));
    let info = ServiceInfo::from_service(&svc).unwrap();
    let lengths = [
        info.cluster_ips.len(),
        info.external_ips.len(),
        info.load_balancer_ips.len(),
        info.ports.len(),
        info.load_balancer_source_ranges.len(),
    ];
    let capacities = [
        info.cluster_ips.capacity(),
        info.external_ips.capacity(),
        info.load_balancer_ips.capacity(),
        info.ports.capacity(),
        info.load_balancer_source_ranges.capacity(),
    ];
    assert_eq!(lengths, [2, 2, 1, 3, 1]);
    assert_eq!(capacities, lengths);
}

#[test]
fn service_errors_name_object_field_and_value() {
    let cases = [
        (
            "unsupported protocol",
            json!({"metadata": {"namespace": "default", "name": "web"},
                   "spec": {"clusterIP": "10.96.0.1",
                            "ports": [{"port": 80}, {"port": 81, "protocol": "HTTP"}]}}),
            r#"Service default/web: spec.ports[1].protocol: unsupported value "HTTP""#,
        ),
        (
            "invalid cluster IP",
            json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.x"}}),
            r#"Service default/web: spec.clusterIP[0]: invalid IP "10.96.0.x""#,
        ),
        (
            "invalid second cluster IP",
            json!({"metadata": {"name": "web"}, "spec": {"clusterIPs": ["10.96.0.1", "fd00::zz"]}}),
            r#"Service default/web: spec.clusterIPs[1]: invalid IP "fd00::zz""#,
        ),
        (
            "invalid external IP",
            json!({"metadata": {"name": "web"},
                   "spec": {"clusterIP": "10.96.0.1", "externalIPs": ["example.com"]}}),
            r#"Service default/web: spec.externalIPs[0]: invalid IP "example.com""#,
        ),
        (
            "invalid LB ingress IP",
            json!({"metadata": {"name": "web"},
                   "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.1"},
                   "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3"}]}}}),
            r#"Service default/web: status.loadBalancer.ingress[0].ip: invalid IP "1.2.3""#,
        ),
        (
            "invalid source range",
            json!({"metadata": {"name": "web"},
                   "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.1",
                            "loadBalancerSourceRanges": ["192.0.2.0/24", "192.0.2.0/33"]}}),
            r#"Service default/web: spec.loadBalancerSourceRanges[1]: invalid CIDR "192.0.2.0/33""#,
        ),
        (
            "invalid source range annotation",
            json!({"metadata": {"name": "web", "annotations":
                       {"service.beta.kubernetes.io/load-balancer-source-ranges": "192.0.2.0/24, office"}},
                   "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.1"}}),
            r#"Service default/web: metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]: invalid CIDR " office""#,
        ),
        (
            "port out of range",
            json!({"metadata": {"name": "web"},
                   "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 70000}]}}),
            "Service default/web: spec.ports[0].port: value 70000 out of range",
        ),
        (
            "nodePort zero",
            json!({"metadata": {"name": "web"},
                   "spec": {"type": "NodePort", "clusterIP": "10.96.0.1", "ports": [{"port": 80, "nodePort": 0}]}}),
            "Service default/web: spec.ports[0].nodePort: value 0 out of range",
        ),
        (
            "unknown type",
            json!({"metadata": {"name": "web"}, "spec": {"type": "Magic", "clusterIP": "10.96.0.1"}}),
            r#"Service default/web: spec.type: unsupported value "Magic""#,
        ),
        (
            "unknown affinity",
            json!({"metadata": {"name": "web"},
                   "spec": {"clusterIP": "10.96.0.1", "sessionAffinity": "Cookie"}}),
            r#"Service default/web: spec.sessionAffinity: unsupported value "Cookie""#,
        ),
        (
            "affinity timeout beyond a day",
            json!({"metadata": {"name": "web"},
                   "spec": {"clusterIP": "10.96.0.1", "sessionAffinity": "ClientIP",
                            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}}),
            "Service default/web: spec.sessionAffinityConfig.clientIP.timeoutSeconds: value 86401 out of range",
        ),
        (
            "unknown traffic policy",
            json!({"metadata": {"name": "web"},
                   "spec": {"clusterIP": "10.96.0.1", "externalTrafficPolicy": "Nearest"}}),
            r#"Service default/web: spec.externalTrafficPolicy: unsupported value "Nearest""#,
        ),
        (
            "no name",
            json!({"metadata": {"namespace": "kube-system"}, "spec": {"clusterIP": "10.96.0.1"}}),
            "Service kube-system/<unnamed>: metadata.name: missing",
        ),
    ];
    for (case, svc, want) in cases {
        let err = ServiceInfo::from_service(&service(svc)).expect_err(case);
        assert_eq!(err.to_string(), want, "{case}");
    }
}

// ---- EndpointSlice conversion -------------------------------------------

#[test]
fn slice_conditions_follow_the_api_defaults() {
    // (case, conditions, (ready, serving, terminating))
    let cases = [
        ("no conditions: ready", json!({}), (true, true, false)),
        (
            "ready false, serving absent: not serving",
            json!({"ready": false}),
            (false, false, false),
        ),
        (
            "terminating but still serving",
            json!({"ready": false, "serving": true, "terminating": true}),
            (false, true, true),
        ),
        (
            "ready absent, serving false: ready",
            json!({"serving": false}),
            (true, false, false),
        ),
    ];
    for (case, conditions, (ready, serving, terminating)) in cases {
        let s = slice(json!({
            "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.5"], "conditions": conditions, "nodeName": "n1"}],
        }));
        let info = EndpointSliceInfo::from_slice(&s).unwrap().unwrap();
        assert_eq!(
            info.endpoints,
            vec![EndpointInfo {
                address: ip("10.244.0.5"),
                ready,
                serving,
                terminating,
                node_name: Some("n1".into()),
                hints: None,
            }],
            "{case}"
        );
    }
}

#[test]
fn slice_conversion() {
    let s = slice(json!({
        "metadata": {"namespace": "prod", "name": "web-abc",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv6",
        "endpoints": [{"addresses": ["fd00::20"]}, {"addresses": ["fd00::10", "fd00::11"]}],
        "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"},
                  {"name": "all"}],
    }));
    let info = EndpointSliceInfo::from_slice(&s).unwrap().unwrap();
    assert_eq!(info.service, name("prod/web"));
    assert_eq!(&*info.name, "web-abc");
    assert_eq!(info.address_type, AddressType::Ipv6);
    // Sorted; the first address of each endpoint.
    let addrs: Vec<IpAddr> = info.endpoints.iter().map(|e| e.address).collect();
    assert_eq!(addrs, vec![ip("fd00::10"), ip("fd00::20")]);
    // The number-less port ("all ports") is dropped.
    assert_eq!(
        info.ports,
        vec![
            EndpointPortInfo {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp
            },
            EndpointPortInfo {
                name: "dns".into(),
                port: 53,
                protocol: Protocol::Udp
            },
        ]
    );
}

#[test]
fn slice_without_service_label_or_with_fqdn_type_yields_nothing_to_program() {
    let unlabelled = slice(json!({"metadata": {"name": "x"}, "addressType": "IPv4",
                                  "endpoints": [{"addresses": ["10.0.0.1"]}]}));
    assert_eq!(EndpointSliceInfo::from_slice(&unlabelled).unwrap(), None);

    let fqdn = slice(
        json!({"metadata": {"name": "x", "labels": {"kubernetes.io/service-name": "web"}},
                            "addressType": "FQDN", "endpoints": [{"addresses": ["example.com"]}]}),
    );
    let info = EndpointSliceInfo::from_slice(&fqdn).unwrap().unwrap();
    assert_eq!(info.address_type, AddressType::Fqdn);
    assert!(info.endpoints.is_empty());
}

#[test]
fn slice_errors_name_object_field_and_value() {
    let labels = json!({"kubernetes.io/service-name": "web"});
    let cases = [
        (
            "invalid IP",
            json!({"metadata": {"namespace": "default", "name": "web-abc", "labels": labels},
                   "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.x"]}]}),
            r#"EndpointSlice default/web-abc: endpoints[0].addresses[0]: invalid IP "10.0.0.x""#,
        ),
        (
            "IPv6 address in an IPv4 slice",
            json!({"metadata": {"name": "web-abc", "labels": labels}, "addressType": "IPv4",
                   "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["fd00::1"]}]}),
            r#"EndpointSlice default/web-abc: endpoints[1].addresses[0]: address "fd00::1" does not match addressType"#,
        ),
        (
            "endpoint without addresses",
            json!({"metadata": {"name": "web-abc", "labels": labels}, "addressType": "IPv4",
                   "endpoints": [{"addresses": []}]}),
            "EndpointSlice default/web-abc: endpoints[0].addresses: missing",
        ),
        (
            "unknown address type",
            json!({"metadata": {"name": "web-abc", "labels": labels}, "addressType": "IPX",
                   "endpoints": []}),
            r#"EndpointSlice default/web-abc: addressType: unsupported value "IPX""#,
        ),
        (
            "port protocol",
            json!({"metadata": {"name": "web-abc", "labels": labels}, "addressType": "IPv4",
                   "endpoints": [], "ports": [{"port": 80, "protocol": "QUIC"}]}),
            r#"EndpointSlice default/web-abc: ports[0].protocol: unsupported value "QUIC""#,
        ),
    ];
    for (case, s, want) in cases {
        let err = EndpointSliceInfo::from_slice(&slice(s)).expect_err(case);
        assert_eq!(err.to_string(), want, "{case}");
        assert_eq!(
            err.service.map(|s| s.name),
            Some(name("default/web")),
            "{case}: the error belongs to the slice's Service"
        );
    }
}

#[test]
fn a_service_keeps_its_age_and_uid_and_its_errors_name_it() {
    let uid = "4f9d7a8e-0c1b-4d2e-9f3a-5b6c7d8e9f01";
    let meta = |extra: Value| {
        let mut m = json!({"namespace": "default", "name": "web"});
        m.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        m
    };
    let info = ServiceInfo::from_service(&service(json!({
        "metadata": meta(json!({"uid": uid, "creationTimestamp": "2024-05-01T00:00:00Z"})),
        "spec": {"clusterIP": "10.96.0.1"},
    })))
    .unwrap();
    assert_eq!(info.created, Some(1_714_521_600));
    assert_eq!(info.uid.map(|u| u.to_string()).as_deref(), Some(uid));
    let manifest = ServiceInfo::from_service(&service(json!({
        "metadata": meta(json!({})),
        "spec": {"clusterIP": "10.96.0.1"},
    })))
    .unwrap();
    assert_eq!((manifest.created, manifest.uid), (None, None));

    let err = ServiceInfo::from_service(&service(json!({
        "metadata": meta(json!({"uid": uid})),
        "spec": {"clusterIP": "10.96.0.1", "type": "Weird"},
    })))
    .unwrap_err();
    let of = err.service.expect("a Service's error names it");
    assert_eq!(of.name, name("default/web"));
    assert_eq!(of.uid, Uid::parse(uid));
}

// ---- Endpoints mirroring -------------------------------------------------

#[test]
fn endpoints_mirror_as_the_mirroring_controller_does() {
    let ep = endpoints(json!({
        "metadata": {"namespace": "default", "name": "ext"},
        "subsets": [{
            "addresses": [{"ip": "192.0.2.10", "nodeName": "n1"}, {"ip": "2001:db8::10"}],
            "notReadyAddresses": [{"ip": "192.0.2.11"}],
            "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        }],
    }));
    let mirrored = EndpointSliceInfo::mirror_endpoints(&ep).unwrap();
    let ports = vec![
        EndpointPortInfo {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        },
        EndpointPortInfo {
            name: "dns".into(),
            port: 53,
            protocol: Protocol::Udp,
        },
    ];
    let endpoint = |addr: &str, ready: bool, node: Option<&str>| EndpointInfo {
        address: ip(addr),
        ready,
        serving: ready,
        terminating: false,
        node_name: node.map(Into::into),
        hints: None,
    };
    assert_eq!(
        mirrored,
        vec![
            EndpointSliceInfo {
                service: name("default/ext"),
                name: "ext-mirror-0-ipv4".into(),
                address_type: AddressType::Ipv4,
                endpoints: vec![
                    endpoint("192.0.2.10", true, Some("n1")),
                    endpoint("192.0.2.11", false, None),
                ],
                ports: ports.clone(),
                hints: Box::default(),
            },
            EndpointSliceInfo {
                service: name("default/ext"),
                name: "ext-mirror-0-ipv6".into(),
                address_type: AddressType::Ipv6,
                endpoints: vec![endpoint("2001:db8::10", true, None)],
                ports,
                hints: Box::default(),
            },
        ]
    );
}

#[test]
fn endpoints_labelled_skip_mirror_mirror_to_nothing() {
    let ep = endpoints(json!({
        "metadata": {"name": "ext", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 80}]}],
    }));
    assert_eq!(EndpointSliceInfo::mirror_endpoints(&ep).unwrap(), vec![]);
}

#[test]
fn endpoints_error_names_the_subset_field() {
    let ep = endpoints(json!({
        "metadata": {"namespace": "default", "name": "ext"},
        "subsets": [{"notReadyAddresses": [{"ip": "192.0.2.999"}]}],
    }));
    assert_eq!(
        EndpointSliceInfo::mirror_endpoints(&ep)
            .unwrap_err()
            .to_string(),
        r#"Endpoints default/ext: subsets[0].notReadyAddresses[0].ip: invalid IP "192.0.2.999""#
    );
}

#[test]
fn mirrored_endpoints_feed_only_services_without_selector() {
    let mut model = Model::new("n1");
    let ep = endpoints(json!({
        "metadata": {"namespace": "default", "name": "ext"},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"name": "http", "port": 80}]}],
    }));
    model.apply(SourceEvent::endpoints(Update::Apply(ep)));
    assert_eq!(
        model.endpoint_slices(&name("default/ext")).count(),
        0,
        "no Service yet"
    );

    let selectorless = web("ext", "10.96.0.9");
    let changes = model.apply(SourceEvent::service(Update::Apply(selectorless)));
    assert_eq!(changes.services, names(&["default/ext"]));
    let slices: Vec<_> = model.endpoint_slices(&name("default/ext")).collect();
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0].endpoints[0].address, ip("192.0.2.10"));

    let mut with_selector = web("ext", "10.96.0.9");
    with_selector.spec.as_mut().unwrap().selector = Some([("app".into(), "ext".into())].into());
    let changes = model.apply(SourceEvent::service(Update::Apply(with_selector)));
    assert_eq!(changes.services, names(&["default/ext"]));
    assert_eq!(model.endpoint_slices(&name("default/ext")).count(), 0);
}

// ---- Model change tracking ----------------------------------------------

#[test]
fn noop_updates_report_no_change() {
    let mut model = Model::new("n1");
    let first = [
        SourceEvent::service(Update::Apply(web("a", "10.96.0.1"))),
        SourceEvent::slice(Update::Apply(web_slice(
            "a-1",
            "a",
            &["10.244.0.1", "10.244.0.2"],
        ))),
        SourceEvent::endpoints(Update::Apply(endpoints(json!({
            "metadata": {"namespace": "default", "name": "b"},
            "subsets": [{"addresses": [{"ip": "192.0.2.1"}], "ports": [{"port": 80}]}]})))),
        SourceEvent::node(Update::Apply(node(json!({"metadata": {"name": "n1"}})))),
    ];
    for event in first.clone() {
        assert!(!model.apply(event).is_empty());
    }

    let mut annotated = web("a", "10.96.0.1");
    annotated.metadata.resource_version = Some("2".into());
    annotated.metadata.annotations = Some([("unrelated".into(), "x".into())].into());
    let reordered = web_slice("a-1", "a", &["10.244.0.2", "10.244.0.1"]);
    let again = [
        (
            "same Service again",
            SourceEvent::service(Update::Apply(annotated)),
        ),
        (
            "same slice, endpoints reordered",
            SourceEvent::slice(Update::Apply(reordered)),
        ),
        ("same Endpoints again", first[2].clone()),
        ("same Node again", first[3].clone()),
        (
            "another node's Node",
            SourceEvent::node(Update::Apply(node(json!({"metadata": {"name": "n2"}})))),
        ),
        (
            "deleting an unknown Service",
            SourceEvent::service(Update::Delete(web("zzz", "10.96.0.99"))),
        ),
    ];
    for (case, event) in again {
        let changes = model.apply(event);
        assert!(changes.is_empty(), "{case}: {changes:?}");
        assert!(changes.errors.is_empty(), "{case}");
    }
}

#[test]
fn replace_reports_only_services_that_differ() {
    let mut model = Model::new("n1");
    model.apply(SourceEvent::service(Update::Replace(vec![
        web("same", "10.96.0.1"),
        web("changed", "10.96.0.2"),
        web("gone", "10.96.0.3"),
    ])));
    model.apply(SourceEvent::slice(Update::Replace(vec![
        web_slice("same-1", "same", &["10.244.0.1"]),
        web_slice("changed-1", "changed", &["10.244.0.2"]),
        web_slice("gone-1", "gone", &["10.244.0.3"]),
    ])));

    let changes = model.apply(SourceEvent::service(Update::Replace(vec![
        web("same", "10.96.0.1"),
        web("changed", "10.96.0.22"),
        web("new", "10.96.0.4"),
    ])));
    assert_eq!(
        changes.services,
        names(&["default/changed", "default/gone", "default/new"])
    );
    assert!(model.service(&name("default/gone")).is_none());

    let changes = model.apply(SourceEvent::slice(Update::Replace(vec![
        web_slice("same-1", "same", &["10.244.0.1"]),
        web_slice("changed-1", "changed", &["10.244.0.2", "10.244.0.9"]),
        web_slice("new-1", "new", &["10.244.0.4"]),
    ])));
    assert_eq!(
        changes.services,
        names(&["default/changed", "default/gone", "default/new"])
    );
    assert_eq!(model.endpoint_slices(&name("default/gone")).count(), 0);
}

#[test]
fn whole_lists_are_kept_for_the_caller_to_free_a_few_at_a_time() {
    let mut model = Model::new("n1");
    let mut spent = Spent::default();
    model.apply_keeping(
        SourceEvent::service(Update::Replace(vec![
            web("a", "10.96.0.1"),
            web("b", "10.96.0.2"),
            web("c", "10.96.0.3"),
        ])),
        &mut spent,
    );
    model.apply_keeping(
        SourceEvent::slice(Update::Replace(vec![
            web_slice("a-1", "a", &["10.244.0.1"]),
            web_slice("b-1", "b", &["10.244.0.2"]),
        ])),
        &mut spent,
    );
    // An empty list is kept too, and freeing it counts as a step.
    model.apply_keeping(SourceEvent::service(Update::Replace(vec![])), &mut spent);
    // A streamed list frees each object as it files it.
    for event in streamed(
        SourceEvent::slice,
        vec![web_slice("c-1", "c", &["10.244.0.3"])],
    ) {
        model.apply_keeping(event, &mut spent);
    }
    assert_eq!(spent.len(), 5);
    // Kept, the objects were still filed (the last Replace emptied the
    // services, the streamed list replaced the slices).
    assert_eq!(model.services().count(), 0);
    assert_eq!(model.endpoint_slices(&name("default/c")).count(), 1);

    assert!(spent.free_some(1));
    assert_eq!(spent.len(), 4);
    // The last slice, the empty list (one step) and one service.
    assert!(spent.free_some(3));
    assert_eq!(spent.len(), 2);
    assert!(!spent.free_some(10), "nothing left");
    assert!(spent.is_empty());
    assert_eq!(spent.len(), 0);
    assert!(!spent.free_some(1));
}

/// The events of `list` streamed as the kube source sends a (re)list.
fn streamed<K>(wrap: fn(Update<K>) -> SourceEvent, list: Vec<K>) -> Vec<SourceEvent> {
    std::iter::once(wrap(Update::ListStart))
        .chain(list.into_iter().map(|o| wrap(Update::Listed(o))))
        .chain(std::iter::once(wrap(Update::ListDone)))
        .collect()
}

#[test]
fn a_streamed_list_takes_effect_at_once_on_list_done() {
    let mut model = Model::new("n1");
    model.apply(SourceEvent::service(Update::Replace(vec![
        web("kept", "10.96.0.1"),
        web("gone", "10.96.0.2"),
    ])));
    model.apply(SourceEvent::slice(Update::Replace(vec![web_slice(
        "gone-1",
        "gone",
        &["10.244.0.2"],
    )])));

    let mut events = streamed(
        SourceEvent::service,
        vec![web("kept", "10.96.0.1"), web("new", "10.96.0.3")],
    );
    let done = events.pop().unwrap();
    for event in events {
        let changes = model.apply(event);
        assert!(changes.is_empty(), "nothing changes mid-list: {changes:?}");
    }
    assert!(model.service(&name("default/gone")).is_some());
    assert!(model.service(&name("default/new")).is_none());
    let changes = model.apply(done);
    assert_eq!(changes.services, names(&["default/gone", "default/new"]));
    assert!(model.service(&name("default/gone")).is_none());
    assert!(model.service(&name("default/new")).is_some());

    let mut events = streamed(
        SourceEvent::slice,
        vec![web_slice("new-1", "new", &["10.244.0.3"])],
    );
    let done = events.pop().unwrap();
    for event in events {
        assert!(model.apply(event).is_empty());
    }
    assert_eq!(model.endpoint_slices(&name("default/gone")).count(), 1);
    let changes = model.apply(done);
    assert_eq!(changes.services, names(&["default/gone", "default/new"]));
    assert_eq!(model.endpoint_slices(&name("default/gone")).count(), 0);
    assert_eq!(model.endpoint_slices(&name("default/new")).count(), 1);
}

#[test]
fn a_list_started_again_forgets_its_unfinished_part() {
    let mut model = Model::new("n1");
    let mut events = streamed(SourceEvent::service, vec![web("stale", "10.96.0.9")]);
    events.pop(); // the watch broke before ListDone
    events.extend(streamed(
        SourceEvent::service,
        vec![web("web", "10.96.0.1")],
    ));
    let mut changes = Changes::default();
    for event in events {
        changes.merge(model.apply(event));
    }
    assert_eq!(changes.services, names(&["default/web"]));
    assert!(model.service(&name("default/stale")).is_none());
}

#[test]
fn a_streamed_list_equals_the_same_replace() {
    let services = || vec![web("a", "10.96.0.1"), web("b", "10.96.0.2")];
    let slices = || {
        vec![
            web_slice("a-1", "a", &["10.244.0.1"]),
            web_slice("a-2", "a", &["10.244.0.2"]),
            web_slice("b-1", "b", &["10.244.0.3"]),
        ]
    };
    let n1 = || {
        node(json!({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z"}}}))
    };
    let n2 = || node(json!({"metadata": {"name": "n2"}}));
    let mut replaced = Model::new("n1");
    replaced.apply(SourceEvent::service(Update::Replace(services())));
    replaced.apply(SourceEvent::slice(Update::Replace(slices())));
    replaced.apply(SourceEvent::node(Update::Replace(vec![n2(), n1()])));
    let mut streamed_model = Model::new("n1");
    for event in streamed(SourceEvent::service, services())
        .into_iter()
        .chain(streamed(SourceEvent::slice, slices()))
        .chain(streamed(SourceEvent::node, vec![n2(), n1()]))
    {
        streamed_model.apply(event);
    }
    for svc in ["default/a", "default/b"] {
        assert_eq!(
            streamed_model.service(&name(svc)),
            replaced.service(&name(svc))
        );
        assert_eq!(
            streamed_model
                .endpoint_slices(&name(svc))
                .collect::<Vec<_>>(),
            replaced.endpoint_slices(&name(svc)).collect::<Vec<_>>(),
        );
    }
    assert_eq!(streamed_model.service_count(), 2);
    assert!(streamed_model.node().is_some());
    assert_eq!(streamed_model.node(), replaced.node());
}

#[test]
fn a_bad_object_in_a_streamed_list_keeps_its_last_good_version() {
    let mut model = Model::new("n1");
    model.apply(SourceEvent::service(Update::Apply(web("web", "10.96.0.1"))));
    let good = model.service(&name("default/web")).unwrap().clone();
    let mut bad = web("web", "10.96.0.1");
    bad.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.x".into());
    let mut changes = Changes::default();
    for event in streamed(SourceEvent::service, vec![bad, web("other", "10.96.0.2")]) {
        changes.merge(model.apply(event));
    }
    assert_eq!(changes.errors.len(), 1, "{:?}", changes.errors);
    assert_eq!(changes.services, names(&["default/other"]));
    assert_eq!(model.service(&name("default/web")), Some(&good));
}

#[test]
fn bad_object_keeps_last_good_version_and_applies_the_rest() {
    let mut model = Model::new("n1");
    model.apply(SourceEvent::service(Update::Apply(web("web", "10.96.0.1"))));
    let good = model.service(&name("default/web")).unwrap().clone();

    let mut bad = web("web", "10.96.0.1");
    bad.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = Some("HTTP".into());
    let changes = model.apply(SourceEvent::service(Update::Apply(bad.clone())));
    assert!(changes.is_empty());
    assert_eq!(
        changes
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![r#"Service default/web: spec.ports[0].protocol: unsupported value "HTTP""#]
    );
    assert_eq!(model.service(&name("default/web")), Some(&good));

    // On a relist the bad one keeps its last good version; the others apply.
    let changes = model.apply(SourceEvent::service(Update::Replace(vec![
        bad,
        web("other", "10.96.0.2"),
    ])));
    assert_eq!(changes.services, names(&["default/other"]));
    assert_eq!(changes.errors.len(), 1);
    assert_eq!(model.service(&name("default/web")), Some(&good));

    // A bad object never seen before is simply absent.
    let mut fresh_bad = web("fresh", "10.96.0.3");
    fresh_bad.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.x".into());
    let changes = model.apply(SourceEvent::service(Update::Apply(fresh_bad)));
    assert!(changes.is_empty());
    assert_eq!(changes.errors.len(), 1);
    assert!(model.service(&name("default/fresh")).is_none());
}

#[test]
fn bad_slice_keeps_last_good_version_on_apply_and_relist() {
    let mut model = Model::new("n1");
    model.apply(SourceEvent::slice(Update::Apply(web_slice(
        "web-abc",
        "web",
        &["10.244.0.1"],
    ))));
    let bad = web_slice("web-abc", "web", &["10.0.0.x"]);
    for event in [
        SourceEvent::slice(Update::Apply(bad.clone())),
        SourceEvent::slice(Update::Replace(vec![bad])),
    ] {
        let changes = model.apply(event);
        assert!(changes.is_empty());
        assert_eq!(
            changes.errors[0].to_string(),
            r#"EndpointSlice default/web-abc: endpoints[0].addresses[0]: invalid IP "10.0.0.x""#
        );
        let kept: Vec<IpAddr> = model
            .endpoint_slices(&name("default/web"))
            .flat_map(|s| s.endpoints.iter().map(|e| e.address))
            .collect();
        assert_eq!(kept, vec![ip("10.244.0.1")]);
    }
}

#[test]
fn relabelled_slice_moves_between_services_and_delete_removes_it() {
    let mut model = Model::new("n1");
    model.apply(SourceEvent::slice(Update::Apply(web_slice(
        "s",
        "a",
        &["10.244.0.1"],
    ))));
    let changes = model.apply(SourceEvent::slice(Update::Apply(web_slice(
        "s",
        "b",
        &["10.244.0.1"],
    ))));
    assert_eq!(changes.services, names(&["default/a", "default/b"]));
    assert_eq!(model.endpoint_slices(&name("default/a")).count(), 0);
    assert_eq!(model.endpoint_slices(&name("default/b")).count(), 1);

    let changes = model.apply(SourceEvent::slice(Update::Delete(web_slice("s", "b", &[]))));
    assert_eq!(changes.services, names(&["default/b"]));
    assert_eq!(model.endpoint_slices(&name("default/b")).count(), 0);
}

#[test]
fn node_changes_affect_all_services() {
    let mut model = Model::new("n1");
    let n1 = |ip: &str| {
        node(json!({"metadata": {"name": "n1"},
                    "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                             {"type": "Hostname", "address": "n1"}]}}))
    };
    let changes = model.apply(SourceEvent::node(Update::Apply(n1("192.168.1.10"))));
    assert!(changes.all);
    assert_eq!(model.node().unwrap().internal_ips, vec![ip("192.168.1.10")]);

    let changes = model.apply(SourceEvent::node(Update::Replace(vec![n1("192.168.1.11")])));
    assert!(changes.all);

    let changes = model.apply(SourceEvent::node(Update::Apply(n1("192.168.1.x"))));
    assert!(!changes.all);
    assert_eq!(
        changes.errors[0].to_string(),
        r#"Node n1: status.addresses[0].address: invalid IP "192.168.1.x""#
    );
    assert_eq!(model.node().unwrap().internal_ips, vec![ip("192.168.1.11")]);

    let changes = model.apply(SourceEvent::node(Update::Delete(n1("192.168.1.11"))));
    assert!(changes.all);
    assert!(model.node().is_none());
}

#[test]
fn synced_is_reported_and_remembered() {
    let mut model = Model::new("n1");
    assert!(!model.is_synced());
    let changes = model.apply(SourceEvent::Synced);
    assert!(changes.synced && changes.is_empty());
    assert!(model.is_synced());
}

#[test]
fn changes_merge_coalesces_a_burst() {
    let mut total = Changes::default();
    total.merge(Changes {
        services: names(&["default/a"]),
        ..Changes::default()
    });
    total.merge(Changes {
        services: names(&["default/b"]),
        synced: true,
        ..Changes::default()
    });
    assert_eq!(total.services, names(&["default/a", "default/b"]));
    assert!(total.synced && !total.all);
}

/// The memory budget (10,000 services × 10 endpoints well under 64 MiB) rests
/// on these staying compact: an endpoint is its address, three flags and a
/// shared node name.
#[test]
fn compact_types_stay_small() {
    use std::mem::size_of;
    assert!(
        size_of::<EndpointInfo>() <= 40,
        "{}",
        size_of::<EndpointInfo>()
    );
    assert!(
        size_of::<EndpointPortInfo>() <= 24,
        "{}",
        size_of::<EndpointPortInfo>()
    );
    assert!(
        size_of::<ServicePortInfo>() <= 48,
        "{}",
        size_of::<ServicePortInfo>()
    );
}

#[test]
fn endpoints_on_one_node_share_its_name() {
    let s = slice(json!({
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.5"], "nodeName": "n1"},
                      {"addresses": ["10.244.0.6"], "nodeName": "n1"},
                      {"addresses": ["10.244.0.7"], "nodeName": "n2"}],
    }));
    let mut model = Model::new("n1");
    model.apply(SourceEvent::slice(Update::Apply(s)));
    let info = model.endpoint_slices(&name("default/web")).next().unwrap();
    let names: Vec<&Arc<str>> = info
        .endpoints
        .iter()
        .map(|e| e.node_name.as_ref().unwrap())
        .collect();
    assert!(Arc::ptr_eq(names[0], names[1]));
    assert_eq!((&**names[1], &**names[2]), ("n1", "n2"));
}

/// A slice of `default/<svc>` named `n` with one endpoint per node in `nodes`.
fn slice_on_nodes(n: &str, svc: &str, nodes: &[String]) -> EndpointSlice {
    let eps: Vec<Value> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| json!({"addresses": [format!("10.244.0.{i}")], "nodeName": node}))
        .collect();
    slice(json!({
        "metadata": {"namespace": "default", "name": n,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": eps,
    }))
}

#[test]
fn names_are_shared_across_objects_and_forgotten_once_unused() {
    let node_name_of = |model: &Model, svc: &str| -> Arc<str> {
        let slice = model.endpoint_slices(&name(svc)).next().expect("a slice");
        slice.endpoints[0].node_name.clone().expect("a node name")
    };
    let mut model = Model::new("n1");
    let n1 = ["n1".to_owned()];
    for svc in ["a", "b"] {
        let s = slice_on_nodes(&format!("{svc}-1"), svc, &n1);
        model.apply(SourceEvent::slice(Update::Apply(s)));
    }
    let listed = vec![slice_on_nodes("c-1", "c", &n1)];
    model.apply(SourceEvent::slice(Update::Replace(listed)));
    model.apply(SourceEvent::slice(Update::Apply(slice_on_nodes(
        "a-1", "a", &n1,
    ))));
    let shared = node_name_of(&model, "default/c");
    assert!(
        Arc::ptr_eq(&shared, &node_name_of(&model, "default/a")),
        "applied after a list, still one allocation"
    );
    model.apply(SourceEvent::service(Update::Apply(web("a", "10.96.0.1"))));
    let service = &model.service(&name("default/a")).expect("filed").name;
    let slice = model.endpoint_slices(&name("default/a")).next().unwrap();
    assert!(
        Arc::ptr_eq(&service.namespace, &slice.service.namespace),
        "one namespace for the Service and its slice"
    );

    // Nodes come and go: the names of the gone ones do not pile up.
    for round in 0..20 {
        let nodes: Vec<String> = (0..50).map(|i| format!("node-{round}-{i}")).collect();
        model.apply(SourceEvent::slice(Update::Apply(slice_on_nodes(
            "b-1", "b", &nodes,
        ))));
    }
    // At most twice the names in use at the last sweep (the slice being
    // replaced still held its own then), plus one slice's: not the 1,001 made.
    let held = model.names.names.len();
    assert!(
        held <= 2 * 101 + 50,
        "{held} names held for 51 nodes in use"
    );
    assert!(model.names.names.contains("n1"), "still in use");
}

#[test]
fn source_ranges_and_pod_cidrs() {
    let lb = |extra: Value| {
        let mut v = json!({"metadata": {"namespace": "default", "name": "lb"},
                           "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.1"}});
        for (k, val) in extra.as_object().unwrap() {
            match k.as_str() {
                "annotations" => v["metadata"]["annotations"] = val.clone(),
                _ => v["spec"][k] = val.clone(),
            }
        }
        ServiceInfo::from_service(&service(v)).unwrap()
    };
    let nets =
        |list: &[&str]| -> Vec<ipnet::IpNet> { list.iter().map(|n| n.parse().unwrap()).collect() };
    let field = lb(
        json!({"loadBalancerSourceRanges": [" 192.0.2.7/24", "198.51.100.0/24"],
                          "annotations": {"service.beta.kubernetes.io/load-balancer-source-ranges": "203.0.113.0/24"}}),
    );
    assert_eq!(
        field.load_balancer_source_ranges,
        nets(&["192.0.2.0/24", "198.51.100.0/24"]),
        "the field wins; spaces trimmed and host bits cleared"
    );
    let annotation = lb(json!({"annotations":
        {"service.beta.kubernetes.io/load-balancer-source-ranges": "203.0.113.0/24,198.51.100.0/24"}}));
    assert_eq!(
        annotation.load_balancer_source_ranges,
        nets(&["203.0.113.0/24", "198.51.100.0/24"])
    );
    assert!(lb(json!({})).load_balancer_source_ranges.is_empty());
    let cluster_ip = service(json!({"metadata": {"name": "c"},
        "spec": {"clusterIP": "10.96.0.2", "loadBalancerSourceRanges": ["192.0.2.0/24"]}}));
    assert!(
        ServiceInfo::from_service(&cluster_ip)
            .unwrap()
            .load_balancer_source_ranges
            .is_empty(),
        "only LoadBalancer services have source ranges"
    );

    let with_cidrs = node(json!({"metadata": {"name": "n1"},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:244:1::/64"]}}));
    assert_eq!(
        NodeInfo::from_node(&with_cidrs).unwrap().pod_cidrs,
        nets(&["10.244.1.0/24", "fd00:244:1::/64"])
    );
    let legacy = node(json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.2.0/24"}}));
    assert_eq!(
        NodeInfo::from_node(&legacy).unwrap().pod_cidrs,
        nets(&["10.244.2.0/24"])
    );
    let bad = node(json!({"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/99"]}}));
    assert_eq!(
        NodeInfo::from_node(&bad).unwrap_err().to_string(),
        r#"Node n1: spec.podCIDRs[0]: invalid CIDR "10.244.1.0/99""#
    );
}

// ---- healthCheckNodePort ----------------------------------------------------

#[test]
fn health_check_node_port_is_read_for_load_balancers_with_local_traffic_only() {
    // (case, type, externalTrafficPolicy, healthCheckNodePort, expected)
    let cases = [
        (
            "LoadBalancer, Local",
            "LoadBalancer",
            "Local",
            json!(32000),
            Some(32000),
        ),
        (
            "LoadBalancer, Local, unset",
            "LoadBalancer",
            "Local",
            Value::Null,
            None,
        ),
        (
            "LoadBalancer, Cluster",
            "LoadBalancer",
            "Cluster",
            json!(32000),
            None,
        ),
        ("NodePort, Local", "NodePort", "Local", json!(32000), None),
    ];
    for (case, type_, policy, port, want) in cases {
        let mut spec = json!({"type": type_, "clusterIP": "10.96.0.1",
                              "externalTrafficPolicy": policy,
                              "ports": [{"port": 80, "nodePort": 30080}]});
        if !port.is_null() {
            spec["healthCheckNodePort"] = port;
        }
        let svc =
            service(json!({"metadata": {"namespace": "default", "name": "web"}, "spec": spec}));
        let info = ServiceInfo::from_service(&svc).expect(case);
        assert_eq!(info.health_check_node_port, want, "{case}");
    }
}

#[test]
fn health_check_node_port_out_of_range_names_the_field_and_value() {
    for value in [0, -1, 65536] {
        let svc = service(json!({"metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.1",
                     "externalTrafficPolicy": "Local", "healthCheckNodePort": value,
                     "ports": [{"port": 80, "nodePort": 30080}]}}));
        let err = ServiceInfo::from_service(&svc).expect_err("out of range");
        assert_eq!(
            err.to_string(),
            format!("Service default/web: spec.healthCheckNodePort: value {value} out of range")
        );
    }
}

// --- Topology hints -------------------------------------------------------------

#[test]
fn slice_endpoint_hints_are_kept_sorted_and_shared() {
    let s = slice(json!({
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.0.5"], "nodeName": "n1",
             "hints": {"forZones": [{"name": "zone-b"}, {"name": "zone-a"}, {"name": "zone-b"}]}},
            {"addresses": ["10.244.0.6"], "nodeName": "n2",
             "hints": {"forZones": [{"name": "zone-a"}, {"name": "zone-b"}]}},
            {"addresses": ["10.244.0.7"], "nodeName": "n3",
             "hints": {"forZones": [{"name": "zone-c"}], "forNodes": [{"name": "n3"}]}},
            {"addresses": ["10.244.0.8"], "nodeName": "n4", "hints": {"forZones": [], "forNodes": []}},
            {"addresses": ["10.244.0.9"], "nodeName": "n5", "hints": {}},
            {"addresses": ["10.244.0.10"], "nodeName": "n6"},
        ],
    }));
    let info = EndpointSliceInfo::from_slice(&s).unwrap().unwrap();
    let hints: Vec<Option<(Vec<&str>, Vec<&str>)>> = info
        .endpoints
        .iter()
        .map(|e| {
            info.hints_of(e).map(|h| {
                (
                    h.zones.iter().map(|z| &**z).collect(),
                    h.nodes.iter().map(|n| &**n).collect(),
                )
            })
        })
        .collect();
    assert_eq!(
        hints,
        vec![
            Some((vec!["zone-a", "zone-b"], vec![])),
            Some((vec!["zone-a", "zone-b"], vec![])),
            Some((vec!["zone-c"], vec!["n3"])),
            None,
            None,
            None,
        ]
    );
    assert_eq!(info.hints.len(), 2, "equal hints share one entry");
    let h = info.hints_of(&info.endpoints[2]).unwrap();
    assert!(h.for_zone("zone-c") && !h.for_zone("zone-a"));
    assert!(h.for_node("n3") && !h.for_node("n1"));
}

#[test]
fn reordered_hints_are_no_change() {
    let hinted = |zones: Value| {
        slice(json!({
            "metadata": {"namespace": "default", "name": "web-abc",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.5"], "hints": {"forZones": zones}}],
        }))
    };
    let mut model = Model::new("n1");
    let first = model.apply(SourceEvent::slice(Update::Apply(hinted(
        json!([{"name": "zone-a"}, {"name": "zone-b"}]),
    ))));
    assert_eq!(first.services, names(&["default/web"]));
    let reordered = model.apply(SourceEvent::slice(Update::Apply(hinted(
        json!([{"name": "zone-b"}, {"name": "zone-a"}]),
    ))));
    assert!(reordered.is_empty(), "{reordered:?}");
    let changed = model.apply(SourceEvent::slice(Update::Apply(hinted(
        json!([{"name": "zone-b"}]),
    ))));
    assert_eq!(
        changed.services,
        names(&["default/web"]),
        "a new hint is a change"
    );
}

#[test]
fn node_zone_is_its_zone_label_unless_empty() {
    let zone = |labels: Value| {
        NodeInfo::from_node(&node(json!({"metadata": {"name": "n1", "labels": labels}})))
            .unwrap()
            .zone()
            .map(str::to_owned)
    };
    assert_eq!(
        zone(json!({ZONE_LABEL: "zone-a"})),
        Some("zone-a".to_owned())
    );
    assert_eq!(zone(json!({ZONE_LABEL: ""})), None);
    assert_eq!(
        zone(json!({"failure-domain.beta.kubernetes.io/zone": "zone-a"})),
        None
    );
    assert_eq!(zone(json!(null)), None);
}

#[test]
fn node_zone_change_translates_every_service_again() {
    let labelled =
        |zone: &str| node(json!({"metadata": {"name": "n1", "labels": {ZONE_LABEL: zone}}}));
    let mut model = Model::new("n1");
    model.apply(SourceEvent::node(Update::Apply(labelled("zone-a"))));
    assert!(
        model
            .apply(SourceEvent::node(Update::Apply(labelled("zone-b"))))
            .all
    );
    assert!(model
        .apply(SourceEvent::node(Update::Apply(labelled("zone-b"))))
        .is_empty());
}

#[test]
fn traffic_distribution_and_topology_annotations_never_reject_a_service() {
    // Upstream's proxy reads neither; an unknown value is not an error.
    for (spec_extra, annotations) in [
        (json!({"trafficDistribution": "SomethingNew"}), json!({})),
        (json!({"trafficDistribution": "PreferSameNode"}), json!({})),
        (
            json!({}),
            json!({"service.kubernetes.io/topology-mode": "bogus"}),
        ),
        (
            json!({}),
            json!({"service.kubernetes.io/topology-aware-hints": "Auto"}),
        ),
    ] {
        let mut spec = json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]});
        for (k, v) in spec_extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let with = service(json!({
            "metadata": {"namespace": "default", "name": "web", "annotations": annotations},
            "spec": spec,
        }));
        let without = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
        }));
        assert_eq!(
            ServiceInfo::from_service(&with).unwrap(),
            ServiceInfo::from_service(&without).unwrap(),
            "{spec_extra} {annotations}"
        );
    }
}
