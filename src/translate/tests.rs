//! Translate tests: one named case per rule, each from API objects (as JSON)
//! through the model's conversions to the exact [`ServiceDesired`].

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

use super::*;
use crate::desired::Protocol;
use crate::source::{SourceEvent, Update};

/// `"TCP 10.96.0.10:80"` with scheduler, persistence and `"ip:port"` real servers.
fn vs(
    spec: &str,
    scheduler: &str,
    persistence: Option<u32>,
    reals: &[&str],
) -> DesiredVirtualServer {
    let (proto, addr) = spec.split_once(' ').unwrap();
    let protocol = match proto {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        other => panic!("protocol {other}"),
    };
    let addr: SocketAddr = addr.parse().unwrap();
    DesiredVirtualServer {
        server: VirtualServer {
            key: VirtualServerKey {
                addr: addr.ip(),
                protocol,
                port: addr.port(),
            },
            scheduler: scheduler.into(),
            persistence,
        },
        real_servers: reals
            .iter()
            .map(|r| {
                let r: SocketAddr = r.parse().unwrap();
                RealServer {
                    key: RealServerKey {
                        addr: r.ip(),
                        port: r.port(),
                    },
                    weight: 1,
                }
            })
            .collect(),
    }
}

fn desired(virtual_servers: Vec<DesiredVirtualServer>, bind: &[&str]) -> ServiceDesired {
    ServiceDesired {
        virtual_servers,
        bind_addrs: bind.iter().map(|a| a.parse().unwrap()).collect(),
        ..Default::default()
    }
}

/// `desired` without its set elements, for tests of the IPVS side alone.
fn ipvs_only(desired: ServiceDesired) -> ServiceDesired {
    ServiceDesired {
        nft_elements: Vec::new(),
        ..desired
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// An IPv4-only node "n1" with one node address.
fn node_v4() -> NodeFacts {
    NodeFacts {
        name: "n1".into(),
        node_addresses: ips(&["192.168.0.10"]),
        ipv4: true,
        ipv6: false,
        local_addresses: ips(&["192.168.0.10"]),
    }
}

/// A dual-stack node "n1" with one node address per family.
fn node_dual() -> NodeFacts {
    NodeFacts {
        name: "n1".into(),
        node_addresses: ips(&["192.168.0.10", "fd00:1::10"]),
        ipv4: true,
        ipv6: true,
        local_addresses: ips(&["192.168.0.10", "fd00:1::10"]),
    }
}

/// Service `default/web`: `extra` is merged into a spec with one TCP port
/// 80 named "http" and clusterIP 10.96.0.10 (each key of `extra` replaces).
fn web(extra: Value) -> Value {
    let mut svc = json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]},
    });
    for (k, v) in extra.as_object().unwrap() {
        match k.as_str() {
            "metadata" | "status" => {
                svc[k] = v.clone();
            }
            _ => {
                svc["spec"][k] = v.clone();
            }
        }
    }
    svc
}

/// A slice of `default/web` with ports `ports` and endpoints `eps`.
fn slice(name: &str, address_type: &str, ports: Value, eps: Value) -> Value {
    json!({
        "metadata": {"namespace": "default", "name": name,
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": address_type,
        "ports": ports,
        "endpoints": eps,
    })
}

/// An IPv4 slice with port "http" 8080 and the given endpoints.
fn http_slice(name: &str, eps: Value) -> Value {
    slice(name, "IPv4", json!([{"name": "http", "port": 8080}]), eps)
}

fn ep(addr: &str, node: &str) -> Value {
    json!({"addresses": [addr], "nodeName": node})
}

fn ep_with(addr: &str, node: &str, conditions: Value) -> Value {
    json!({"addresses": [addr], "nodeName": node, "conditions": conditions})
}

fn terminating(serving: bool) -> Value {
    json!({"ready": false, "serving": serving, "terminating": true})
}

struct Case {
    name: &'static str,
    service: Value,
    slices: Vec<Value>,
    node: NodeFacts,
    cfg: TranslateConfig,
    want: ServiceDesired,
    warnings: &'static [&'static str],
    /// The set elements, as "SET KEY" in any order; `None`: not checked.
    nft: Option<&'static [&'static str]>,
}

impl Case {
    fn new(name: &'static str, service: Value, slices: Vec<Value>, want: ServiceDesired) -> Case {
        Case {
            name,
            service,
            slices,
            node: node_v4(),
            cfg: TranslateConfig::default(),
            want,
            warnings: &[],
            nft: None,
        }
    }

    fn nft(mut self, elements: &'static [&'static str]) -> Case {
        self.nft = Some(elements);
        self
    }

    fn node(mut self, node: NodeFacts) -> Case {
        self.node = node;
        self
    }

    fn cfg(mut self, cfg: TranslateConfig) -> Case {
        self.cfg = cfg;
        self
    }

    fn warnings(mut self, warnings: &'static [&'static str]) -> Case {
        self.warnings = warnings;
        self
    }

    fn run(self) {
        let svc: Service = serde_json::from_value(self.service).unwrap();
        let svc = ServiceInfo::from_service(&svc).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        let slices: Vec<EndpointSliceInfo> = self
            .slices
            .into_iter()
            .map(|s| {
                let s: EndpointSlice = serde_json::from_value(s).unwrap();
                EndpointSliceInfo::from_slice(&s).unwrap().unwrap()
            })
            .collect();
        let mut got = translate_service(&svc, &slices, &self.node, &self.cfg);
        let elements = std::mem::take(&mut got.desired.nft_elements);
        assert_eq!(got.desired, self.want, "{}", self.name);
        if let Some(want) = self.nft {
            let mut got: Vec<String> = elements
                .iter()
                .map(|e| format!("{} {}", e.set.name(), e.key))
                .collect();
            let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{}", self.name);
        }
        let warnings: Vec<String> = got.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings, self.warnings, "{}", self.name);
    }
}

fn kernel_offers(list: &[&str]) -> TranslateConfig {
    TranslateConfig::new("rr", Some(list))
}

#[test]
fn translate_rules() {
    let cases = vec![
        Case::new(
            "cluster IP: one virtual server per port, ready endpoints at the slice's port, address bound",
            web(json!({})),
            vec![http_slice("s1", json!([ep("10.244.2.5", "n2"), ep("10.244.1.5", "n1")]))],
            desired(
                vec![vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080", "10.244.2.5:8080"])],
                &["10.96.0.10"],
            ),
        ),
        Case::new(
            "dual-stack: every clusterIPs entry, each with endpoints of its own family only",
            web(json!({"clusterIPs": ["10.96.0.10", "fd00:96::10"]})),
            vec![
                http_slice("s4", json!([ep("10.244.1.5", "n1")])),
                slice("s6", "IPv6", json!([{"name": "http", "port": 8080}]), json!([ep("fd00:244::5", "n1")])),
            ],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080"]),
                    vs("TCP [fd00:96::10]:80", "rr", None, &["[fd00:244::5]:8080"]),
                ],
                &["10.96.0.10", "fd00:96::10"],
            ),
        )
        .node(node_dual()),
        Case::new(
            "IPv4-only node: the IPv6 cluster IP and its endpoints are left out",
            web(json!({"clusterIPs": ["10.96.0.10", "fd00:96::10"]})),
            vec![
                http_slice("s4", json!([ep("10.244.1.5", "n1")])),
                slice("s6", "IPv6", json!([{"name": "http", "port": 8080}]), json!([ep("fd00:244::5", "n1")])),
            ],
            desired(
                vec![vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080"])],
                &["10.96.0.10"],
            ),
        ),
        Case::new(
            "external IPs: a virtual server each, and bound",
            web(json!({"externalIPs": ["203.0.113.7"]})),
            vec![http_slice("s1", json!([ep("10.244.1.5", "n1")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080"]),
                    vs("TCP 203.0.113.7:80", "rr", None, &["10.244.1.5:8080"]),
                ],
                &["10.96.0.10", "203.0.113.7"],
            ),
        ),
        Case::new(
            "NodePort: one virtual server per node address at the node port, node addresses not bound",
            web(json!({"type": "NodePort", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
            vec![http_slice("s1", json!([ep("10.244.1.5", "n1")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080"]),
                    vs("TCP 192.168.0.10:30080", "rr", None, &["10.244.1.5:8080"]),
                    vs("TCP [fd00:1::10]:30080", "rr", None, &[]),
                    vs("TCP [fd00:96::10]:80", "rr", None, &[]),
                ],
                &["10.96.0.10", "fd00:96::10"],
            ),
        )
        .node(node_dual()),
        Case::new(
            "single-stack NodePort on a dual-stack node: node ports on its family's node addresses only",
            web(json!({"type": "NodePort", "externalIPs": ["2001:db8::7"],
                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
            vec![http_slice("s1", json!([ep("10.244.1.5", "n1")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080"]),
                    vs("TCP 192.168.0.10:30080", "rr", None, &["10.244.1.5:8080"]),
                ],
                &["10.96.0.10"],
            ),
        )
        .node(node_dual()),
        Case::new(
            "LoadBalancer: ingress IPs (not ipMode Proxy) bound, plus node ports",
            web(json!({
                "type": "LoadBalancer",
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
                "status": {"loadBalancer": {"ingress": [
                    {"ip": "198.51.100.1"}, {"ip": "198.51.100.2", "ipMode": "Proxy"}]}},
            })),
            vec![http_slice("s1", json!([ep("10.244.1.5", "n1")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080"]),
                    vs("TCP 192.168.0.10:30080", "rr", None, &["10.244.1.5:8080"]),
                    vs("TCP 198.51.100.1:80", "rr", None, &["10.244.1.5:8080"]),
                ],
                &["10.96.0.10", "198.51.100.1"],
            ),
        ),
        Case::new(
            "ClusterIP type ignores a stray nodePort",
            web(json!({"ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
            vec![http_slice("s1", json!([ep("10.244.1.5", "n1")]))],
            desired(
                vec![vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080"])],
                &["10.96.0.10"],
            ),
        ),
        Case::new(
            "multi-port TCP, UDP and SCTP: each port its own virtual server and its own endpoint port",
            web(json!({"ports": [
                {"name": "dns-tcp", "port": 53},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "sig", "port": 2905, "protocol": "SCTP"}]})),
            vec![slice(
                "s1",
                "IPv4",
                json!([{"name": "dns-tcp", "port": 5353},
                       {"name": "dns", "port": 5353, "protocol": "UDP"},
                       {"name": "sig", "port": 2905, "protocol": "SCTP"}]),
                json!([ep("10.244.1.5", "n1")]),
            )],
            desired(
                vec![
                    vs("TCP 10.96.0.10:53", "rr", None, &["10.244.1.5:5353"]),
                    vs("UDP 10.96.0.10:53", "rr", None, &["10.244.1.5:5353"]),
                    vs("SCTP 10.96.0.10:2905", "rr", None, &["10.244.1.5:2905"]),
                ],
                &["10.96.0.10"],
            ),
        ),
        Case::new(
            "an unnamed service port matches the slice port named \"\"",
            web(json!({"ports": [{"port": 80}]})),
            vec![slice("s1", "IPv4", json!([{"port": 9376}]), json!([ep("10.244.1.5", "n1")]))],
            desired(
                vec![vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:9376"])],
                &["10.96.0.10"],
            ),
        ),
        Case::new(
            "endpoint ports match by name and protocol: another name or protocol gives no real servers",
            web(json!({"ports": [{"name": "dns", "port": 53}]})),
            vec![slice(
                "s1",
                "IPv4",
                json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "other", "port": 53}]),
                json!([ep("10.244.1.5", "n1")]),
            )],
            desired(vec![vs("TCP 10.96.0.10:53", "rr", None, &[])], &["10.96.0.10"]),
        ),
        Case::new(
            "sessionAffinity ClientIP: persistence with the default 10800 seconds",
            web(json!({"sessionAffinity": "ClientIP"})),
            vec![http_slice("s1", json!([ep("10.244.1.5", "n1")]))],
            desired(
                vec![vs("TCP 10.96.0.10:80", "rr", Some(10800), &["10.244.1.5:8080"])],
                &["10.96.0.10"],
            ),
        ),
        Case::new(
            "--ipvs-scheduler sets every service's scheduler",
            web(json!({})),
            vec![],
            desired(vec![vs("TCP 10.96.0.10:80", "wlc", None, &[])], &["10.96.0.10"]),
        )
        .cfg(TranslateConfig::new("wlc", None::<[&str; 0]>)),
        Case::new(
            "scheduler annotation the kernel offers overrides the default",
            web(json!({"metadata": {"namespace": "default", "name": "web",
                                    "annotations": {"kube-ipvs-proxy.io/scheduler": "sh"}}})),
            vec![],
            desired(vec![vs("TCP 10.96.0.10:80", "sh", None, &[])], &["10.96.0.10"]),
        )
        .cfg(kernel_offers(&["rr", "sh"])),
        Case::new(
            "scheduler annotation the kernel lacks: reported, default used, service still programmed",
            web(json!({"metadata": {"namespace": "default", "name": "web",
                                    "annotations": {"kube-ipvs-proxy.io/scheduler": "mh"}}})),
            vec![],
            desired(vec![vs("TCP 10.96.0.10:80", "rr", None, &[])], &["10.96.0.10"]),
        )
        .cfg(kernel_offers(&["rr", "sh"]))
        .warnings(&[
            "Service default/web: annotation kube-ipvs-proxy.io/scheduler: \"mh\" is not offered \
             by the kernel (available: rr, sh); using the default scheduler \"rr\"",
        ]),
        Case::new(
            "malformed scheduler annotation: reported even when the kernel's list is unknown",
            web(json!({"metadata": {"namespace": "default", "name": "web",
                                    "annotations": {"kube-ipvs-proxy.io/scheduler": "Round Robin"}}})),
            vec![],
            desired(vec![vs("TCP 10.96.0.10:80", "rr", None, &[])], &["10.96.0.10"]),
        )
        .warnings(&[
            "Service default/web: annotation kube-ipvs-proxy.io/scheduler: \"Round Robin\" is not \
             a valid scheduler name; using the default scheduler \"rr\"",
        ]),
        Case::new(
            "only ready endpoints while any is ready (terminating ones wait)",
            web(json!({})),
            vec![http_slice(
                "s1",
                json!([
                    ep("10.244.1.5", "n1"),
                    ep_with("10.244.1.6", "n1", json!({"ready": false})),
                    ep_with("10.244.1.7", "n1", terminating(true)),
                ]),
            )],
            desired(
                vec![vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080"])],
                &["10.96.0.10"],
            ),
        ),
        Case::new(
            "none ready: fall back to serving-and-terminating endpoints",
            web(json!({})),
            vec![http_slice(
                "s1",
                json!([
                    ep_with("10.244.1.6", "n1", json!({"ready": false})),
                    ep_with("10.244.1.7", "n1", terminating(true)),
                    ep_with("10.244.1.8", "n2", terminating(false)),
                ]),
            )],
            desired(
                vec![vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.7:8080"])],
                &["10.96.0.10"],
            ),
        ),
        Case::new(
            "an endpoint listed by two slices is one real server",
            web(json!({})),
            vec![
                http_slice("s1", json!([ep("10.244.1.5", "n1")])),
                http_slice("s2", json!([ep("10.244.1.5", "n1"), ep("10.244.1.4", "n2")])),
            ],
            desired(
                vec![vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.4:8080", "10.244.1.5:8080"])],
                &["10.96.0.10"],
            ),
        ),
        Case::new(
            "internalTrafficPolicy Local: cluster IP gets this node's endpoints, node port all",
            web(json!({"type": "NodePort", "internalTrafficPolicy": "Local",
                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
            vec![http_slice("s1", json!([ep("10.244.1.5", "n1"), ep("10.244.2.5", "n2")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080"]),
                    vs("TCP 192.168.0.10:30080", "rr", None, &["10.244.1.5:8080", "10.244.2.5:8080"]),
                ],
                &["10.96.0.10"],
            ),
        ),
        Case::new(
            "externalTrafficPolicy Local: node port, external and LB IPs get this node's endpoints only",
            web(json!({
                "type": "LoadBalancer", "externalTrafficPolicy": "Local",
                "externalIPs": ["203.0.113.7"],
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
                "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}},
            })),
            vec![http_slice("s1", json!([ep("10.244.1.5", "n1"), ep("10.244.2.5", "n2")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080", "10.244.2.5:8080"]),
                    vs("TCP 192.168.0.10:30080", "rr", None, &["10.244.1.5:8080"]),
                    vs("TCP 198.51.100.1:80", "rr", None, &["10.244.1.5:8080"]),
                    vs("TCP 203.0.113.7:80", "rr", None, &["10.244.1.5:8080"]),
                ],
                &["10.96.0.10", "198.51.100.1", "203.0.113.7"],
            ),
        ),
        Case::new(
            "Local policy with no local endpoint: a virtual server without real servers",
            web(json!({"type": "NodePort", "externalTrafficPolicy": "Local",
                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
            vec![http_slice("s1", json!([ep("10.244.2.5", "n2")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 192.168.0.10:30080", "rr", None, &[]),
                ],
                &["10.96.0.10"],
            ),
        ),
        Case::new(
            "Local falls back to local serving-terminating endpoints even while remote ones are ready",
            web(json!({"internalTrafficPolicy": "Local"})),
            vec![http_slice(
                "s1",
                json!([ep("10.244.2.5", "n2"), ep_with("10.244.1.7", "n1", terminating(true))]),
            )],
            desired(
                vec![vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.7:8080"])],
                &["10.96.0.10"],
            ),
        ),
        Case::new(
            "a cluster IP also listed as external IP is one virtual server, under the internal policy",
            web(json!({"externalIPs": ["10.96.0.10"], "externalTrafficPolicy": "Local"})),
            vec![http_slice("s1", json!([ep("10.244.2.5", "n2")]))],
            desired(
                vec![vs("TCP 10.96.0.10:80", "rr", None, &["10.244.2.5:8080"])],
                &["10.96.0.10"],
            ),
        ),
        Case::new(
            "ExternalName: nothing",
            json!({"metadata": {"namespace": "default", "name": "web"},
                   "spec": {"type": "ExternalName", "externalName": "example.com",
                            "ports": [{"name": "http", "port": 80}]}}),
            vec![http_slice("s1", json!([ep("10.244.1.5", "n1")]))],
            ServiceDesired::default(),
        ),
        Case::new(
            "headless: nothing",
            web(json!({"clusterIP": "None"})),
            vec![http_slice("s1", json!([ep("10.244.1.5", "n1")]))],
            ServiceDesired::default(),
        ),
        Case::new(
            "service-proxy-name label: nothing",
            web(json!({"metadata": {"namespace": "default", "name": "web",
                                    "labels": {"service.kubernetes.io/service-proxy-name": "cilium"}}})),
            vec![http_slice("s1", json!([ep("10.244.1.5", "n1")]))],
            ServiceDesired::default(),
        ),
        Case::new(
            "IPv6-only service on an IPv4-only node: nothing, not even an IPv4 node port",
            web(json!({"clusterIP": "fd00:96::10", "type": "NodePort",
                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
            vec![],
            ServiceDesired::default(),
        ),
    ];
    for case in cases {
        case.run();
    }
}

#[test]
fn check_scheduler_accepts_offered_names_only() {
    let cfg = kernel_offers(&["rr", "wrr"]);
    assert_eq!(cfg.check_scheduler("wrr"), Ok(()));
    assert_eq!(
        cfg.check_scheduler("lc"),
        Err(SchedulerProblem::NotOffered(vec![
            "rr".into(),
            "wrr".into()
        ]))
    );
    let unknown_kernel = TranslateConfig::default();
    assert_eq!(unknown_kernel.check_scheduler("lblcr"), Ok(()));
    for bad in ["", "RR", "rr;", "a_very_long_scheduler"] {
        assert_eq!(
            unknown_kernel.check_scheduler(bad),
            Err(SchedulerProblem::InvalidName),
            "{bad:?}"
        );
    }
}

#[test]
fn translate_model_covers_every_programmable_service() {
    let mut model = Model::new("n1");
    let svc = |v: Value| -> Service { serde_json::from_value(v).unwrap() };
    model.apply(SourceEvent::Service(Update::Replace(vec![
        svc(web(json!({}))),
        svc(
            json!({"metadata": {"namespace": "default", "name": "headless"},
                   "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
        ),
    ])));
    let s1: EndpointSlice =
        serde_json::from_value(http_slice("s1", json!([ep("10.244.1.5", "n1")]))).unwrap();
    model.apply(SourceEvent::EndpointSlice(Update::Apply(s1)));

    let (all, warnings) = translate_model(&model, &node_v4(), &TranslateConfig::default());
    assert!(warnings.is_empty());
    let web_name = ServiceName::new("default", "web");
    assert_eq!(all.len(), 1, "the headless service wants nothing");
    let expected = desired(
        vec![vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080"])],
        &["10.96.0.10"],
    );
    assert_eq!(ipvs_only(all[&web_name].clone()), expected);
    assert_eq!(
        ipvs_only(
            translate_named(&model, &web_name, &node_v4(), &TranslateConfig::default()).desired
        ),
        expected
    );
    let gone = ServiceName::new("default", "gone");
    assert_eq!(
        translate_named(&model, &gone, &node_v4(), &TranslateConfig::default()),
        Translation::default()
    );
}

#[test]
fn translate_each_keeps_the_order_of_a_batch_split_over_threads() {
    // Enough services for several workers; each has its own cluster IP and
    // endpoint, and one name is missing from the model.
    let count = 3 * 1024 + 7;
    let mut model = Model::new("n1");
    let services: Vec<Service> = (0..count)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"namespace": "default", "name": format!("svc-{i}")},
                "spec": {"clusterIP": format!("10.96.{}.{}", i / 256, i % 256),
                         "ports": [{"name": "http", "port": 80}]},
            }))
            .unwrap()
        })
        .collect();
    let slices: Vec<EndpointSlice> = (0..count)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"namespace": "default", "name": format!("svc-{i}-1"),
                             "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [ep(&format!("10.244.{}.{}", i / 256, i % 256), "n1")],
            }))
            .unwrap()
        })
        .collect();
    model.apply(SourceEvent::Service(Update::Replace(services)));
    model.apply(SourceEvent::EndpointSlice(Update::Replace(slices)));

    let mut names: Vec<ServiceName> = (0..count)
        .rev()
        .map(|i| ServiceName::new("default", &format!("svc-{i}")))
        .collect();
    names.insert(count / 2, ServiceName::new("default", "gone"));
    let cfg = TranslateConfig::default();
    let batch = translate_each(&model, &names, &node_v4(), &cfg);
    let one_by_one: Vec<Translation> = names
        .iter()
        .map(|name| translate_named(&model, name, &node_v4(), &cfg))
        .collect();
    assert_eq!(batch.len(), names.len());
    assert_eq!(batch, one_by_one);
    let last = count - 1;
    assert_eq!(
        ipvs_only(batch[0].desired.clone()),
        desired(
            vec![vs(
                &format!("TCP 10.96.{}.{}:80", last / 256, last % 256),
                "rr",
                None,
                &[&format!("10.244.{}.{}:8080", last / 256, last % 256)],
            )],
            &[&format!("10.96.{}.{}", last / 256, last % 256)],
        ),
        "the first name is translated first"
    );
    assert_eq!(
        batch[count / 2],
        Translation::default(),
        "a missing service"
    );
}

/// The packet path's set elements, and which external addresses are served.
#[test]
fn packet_path_rules() {
    let node_port = |policy: &str| {
        web(json!({"type": "NodePort", "externalTrafficPolicy": policy,
                   "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}))
    };
    let cases = vec![
        Case::new(
            "cluster IP: masqueraded from outside the pods, and its address guarded",
            web(json!({})),
            vec![http_slice("s1", json!([ep("10.244.2.5", "n2")]))],
            desired(vec![vs("TCP 10.96.0.10:80", "rr", None, &["10.244.2.5:8080"])], &["10.96.0.10"]),
        )
        .nft(&["cluster-ips 10.96.0.10 . tcp . 80", "service-ips 10.96.0.10"]),
        Case::new(
            "hairpin: each endpoint on this node, at its own port",
            web(json!({})),
            vec![http_slice("s1", json!([ep("10.244.1.5", "n1"), ep("10.244.2.5", "n2")]))],
            desired(
                vec![vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080", "10.244.2.5:8080"])],
                &["10.96.0.10"],
            ),
        )
        .nft(&[
            "cluster-ips 10.96.0.10 . tcp . 80",
            "service-ips 10.96.0.10",
            "hairpin 10.244.1.5 . tcp . 8080 . 10.244.1.5",
        ]),
        Case::new(
            "NodePort, externalTrafficPolicy Cluster: masqueraded",
            node_port("Cluster"),
            vec![http_slice("s1", json!([ep("10.244.2.5", "n2")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 192.168.0.10:30080", "rr", None, &["10.244.2.5:8080"]),
                ],
                &["10.96.0.10"],
            ),
        )
        .nft(&["cluster-ips 10.96.0.10 . tcp . 80", "service-ips 10.96.0.10", "nodeports tcp . 30080"]),
        Case::new(
            "NodePort, externalTrafficPolicy Local with no endpoint here: dropped",
            node_port("Local"),
            vec![http_slice("s1", json!([ep("10.244.2.5", "n2")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 192.168.0.10:30080", "rr", None, &[]),
                ],
                &["10.96.0.10"],
            ),
        )
        .nft(&[
            "cluster-ips 10.96.0.10 . tcp . 80",
            "service-ips 10.96.0.10",
            "nodeports-no-local-endpoints tcp . 30080",
        ]),
        Case::new(
            "NodePort, externalTrafficPolicy Local with an endpoint here: neither masqueraded nor dropped",
            node_port("Local"),
            vec![http_slice("s1", json!([ep("10.244.1.5", "n1")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080"]),
                    vs("TCP 192.168.0.10:30080", "rr", None, &["10.244.1.5:8080"]),
                ],
                &["10.96.0.10"],
            ),
        )
        .nft(&[
            "cluster-ips 10.96.0.10 . tcp . 80",
            "service-ips 10.96.0.10",
            "hairpin 10.244.1.5 . tcp . 8080 . 10.244.1.5",
        ]),
        Case::new(
            "external IP, externalTrafficPolicy Local, no endpoint here: served locally, dropped",
            web(json!({"externalIPs": ["203.0.113.7"], "externalTrafficPolicy": "Local"})),
            vec![http_slice("s1", json!([ep("10.244.2.5", "n2")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 203.0.113.7:80", "rr", None, &[]),
                ],
                &["10.96.0.10", "203.0.113.7"],
            ),
        )
        .nft(&[
            "cluster-ips 10.96.0.10 . tcp . 80",
            "external-ips-local 203.0.113.7 . tcp . 80",
            "no-local-endpoints 203.0.113.7 . tcp . 80",
            "service-ips 10.96.0.10",
            "service-ips 203.0.113.7",
        ]),
        Case::new(
            "loadBalancerSourceRanges: the LoadBalancer IP admits the ranges (merged), and itself when a range holds a node address",
            web(json!({"type": "LoadBalancer",
                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
                       "loadBalancerSourceRanges": ["198.51.100.0/25", "198.51.100.128/25", "192.168.0.0/24"],
                       "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.20"}]}}})),
            vec![http_slice("s1", json!([ep("10.244.2.5", "n2")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 192.168.0.10:30080", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 203.0.113.20:80", "rr", None, &["10.244.2.5:8080"]),
                ],
                &["10.96.0.10", "203.0.113.20"],
            ),
        )
        .nft(&[
            "cluster-ips 10.96.0.10 . tcp . 80",
            "external-ips 203.0.113.20 . tcp . 80",
            "nodeports tcp . 30080",
            "service-ips 10.96.0.10",
            "service-ips 203.0.113.20",
            "firewall-ips 203.0.113.20 . tcp . 80",
            "firewall-allow 203.0.113.20 . tcp . 80 . 192.168.0.0/24",
            "firewall-allow 203.0.113.20 . tcp . 80 . 198.51.100.0/24",
            "firewall-allow 203.0.113.20 . tcp . 80 . 203.0.113.20/32",
        ]),
        Case::new(
            "an address that is both an external IP and the LoadBalancer IP keeps its source ranges",
            web(json!({"type": "LoadBalancer", "externalIPs": ["203.0.113.20"],
                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
                       "loadBalancerSourceRanges": ["198.51.100.0/24"],
                       "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.20"}]}}})),
            vec![http_slice("s1", json!([ep("10.244.2.5", "n2")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 192.168.0.10:30080", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 203.0.113.20:80", "rr", None, &["10.244.2.5:8080"]),
                ],
                &["10.96.0.10", "203.0.113.20"],
            ),
        )
        .nft(&[
            "cluster-ips 10.96.0.10 . tcp . 80",
            "external-ips 203.0.113.20 . tcp . 80",
            "nodeports tcp . 30080",
            "service-ips 10.96.0.10",
            "service-ips 203.0.113.20",
            "firewall-ips 203.0.113.20 . tcp . 80",
            "firewall-allow 203.0.113.20 . tcp . 80 . 198.51.100.0/24",
        ]),
        Case::new(
            "unsafe external addresses are refused, each named; the others are served",
            web(json!({"type": "LoadBalancer",
                       "externalIPs": ["127.0.0.1", "0.0.0.0", "255.255.255.255", "169.254.1.1", "224.0.0.1", "203.0.113.7"],
                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
                       "status": {"loadBalancer": {"ingress": [{"ip": "::1"}, {"ip": "203.0.113.20"}]}}})),
            vec![http_slice("s1", json!([ep("10.244.2.5", "n2")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 192.168.0.10:30080", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 203.0.113.7:80", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 203.0.113.20:80", "rr", None, &["10.244.2.5:8080"]),
                ],
                &["10.96.0.10", "203.0.113.7", "203.0.113.20"],
            ),
        )
        .warnings(&[
            "Service default/web: spec.externalIPs: 127.0.0.1 is a loopback address; not serving it (the service's other addresses are)",
            "Service default/web: spec.externalIPs: 0.0.0.0 is the unspecified address; not serving it (the service's other addresses are)",
            "Service default/web: spec.externalIPs: 255.255.255.255 is the broadcast address; not serving it (the service's other addresses are)",
            "Service default/web: spec.externalIPs: 169.254.1.1 is a link-local address; not serving it (the service's other addresses are)",
            "Service default/web: spec.externalIPs: 224.0.0.1 is a multicast address; not serving it (the service's other addresses are)",
            "Service default/web: status.loadBalancer.ingress[].ip: ::1 is a loopback address; not serving it (the service's other addresses are)",
        ]),
        Case::new(
            "--allowed-external-ip-cidrs refuses external IPs outside them, not LoadBalancer IPs",
            web(json!({"type": "LoadBalancer", "externalIPs": ["203.0.113.7", "198.51.100.7"],
                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
                       "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.20"}]}}})),
            vec![http_slice("s1", json!([ep("10.244.2.5", "n2")]))],
            desired(
                vec![
                    vs("TCP 10.96.0.10:80", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 192.0.2.20:80", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 192.168.0.10:30080", "rr", None, &["10.244.2.5:8080"]),
                    vs("TCP 203.0.113.7:80", "rr", None, &["10.244.2.5:8080"]),
                ],
                &["10.96.0.10", "192.0.2.20", "203.0.113.7"],
            ),
        )
        .cfg(TranslateConfig {
            allowed_external_ips: vec!["203.0.113.0/24".parse().unwrap()],
            ..TranslateConfig::default()
        })
        .warnings(&["Service default/web: spec.externalIPs: 198.51.100.7 is outside --allowed-external-ip-cidrs; not serving it (the service's other addresses are)"]),
        Case::new(
            "an external IP that is the node's own address: served, not bound, not guarded",
            web(json!({"externalIPs": ["192.168.0.10"]})),
            vec![http_slice("s1", json!([ep("10.244.2.5", "n2")]))],
            ServiceDesired {
                served_node_addrs: ips(&["192.168.0.10"]),
                ..desired(
                    vec![
                        vs("TCP 10.96.0.10:80", "rr", None, &["10.244.2.5:8080"]),
                        vs("TCP 192.168.0.10:80", "rr", None, &["10.244.2.5:8080"]),
                    ],
                    &["10.96.0.10"],
                )
            },
        )
        .nft(&[
            "cluster-ips 10.96.0.10 . tcp . 80",
            "external-ips 192.168.0.10 . tcp . 80",
            "service-ips 10.96.0.10",
        ]),
    ];
    for case in cases {
        case.run();
    }
}

// --- SCTP where the kernel cannot load `sctp` ----------------------------------

#[test]
fn sctp_ports_are_left_out_with_a_warning_when_the_module_cannot_be_loaded() {
    let service = web(json!({"ports": [
        {"name": "http", "port": 80},
        {"name": "assoc", "port": 7777, "protocol": "SCTP"},
    ]}));
    let slices = vec![slice(
        "s1",
        "IPv4",
        json!([{"name": "http", "port": 8080}, {"name": "assoc", "port": 7777, "protocol": "SCTP"}]),
        json!([ep("10.244.1.5", "n1")]),
    )];
    // Served when the module is there (or not yet needed, as in `plan`).
    Case::new(
        "sctp: served when the module loads",
        service.clone(),
        slices.clone(),
        desired(
            vec![
                vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080"]),
                vs("SCTP 10.96.0.10:7777", "rr", None, &["10.244.1.5:7777"]),
            ],
            &["10.96.0.10"],
        ),
    )
    .cfg(TranslateConfig {
        sctp: SctpSupport::Available,
        ..TranslateConfig::default()
    })
    .run();
    // Not served, and named, when it cannot be loaded; the TCP port stays.
    Case::new(
        "sctp: left out when the module cannot be loaded",
        service,
        slices,
        desired(
            vec![vs("TCP 10.96.0.10:80", "rr", None, &["10.244.1.5:8080"])],
            &["10.96.0.10"],
        ),
    )
    .cfg(TranslateConfig {
        sctp: SctpSupport::Unavailable("kernel module sctp is not loaded".into()),
        ..TranslateConfig::default()
    })
    .warnings(&[
        "Service default/web: spec.ports: 7777/SCTP cannot be served: kernel module sctp is not loaded; not serving this port (the service's other ports are)",
    ])
    .run();
}
