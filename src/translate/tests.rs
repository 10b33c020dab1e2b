//! Translate tests: one named case per rule, each from API objects (as JSON)
//! through the model's conversions to the exact [`ServiceDesired`].

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use serde_json::{json, Value};

use super::*;
use crate::desired::Protocol;
use crate::source::{EndpointSlice, SourceEvent, Update};

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
    model.apply(SourceEvent::service(Update::Replace(vec![
        svc(web(json!({}))),
        svc(
            json!({"metadata": {"namespace": "default", "name": "headless"},
                   "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
        ),
    ])));
    let s1: EndpointSlice =
        serde_json::from_value(http_slice("s1", json!([ep("10.244.1.5", "n1")]))).unwrap();
    model.apply(SourceEvent::slice(Update::Apply(s1)));

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
    model.apply(SourceEvent::service(Update::Replace(services)));
    model.apply(SourceEvent::slice(Update::Replace(slices)));

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

// --- Topology-aware routing (EndpointSlice hints) -----------------------------
//
// Upstream's rules (pkg/proxy/topology.go, feature gates at their defaults):
// hints narrow the ready endpoints of Cluster traffic policy only, and only
// when every ready endpoint is hinted and one is hinted for this node (node
// hints) or for this node's zone (zone hints).

/// An endpoint on `node` with zone hints `zones` and node hints `nodes`
/// (each list left out when empty), and `conditions` unless null.
fn ep_hinted(addr: &str, node: &str, zones: &[&str], nodes: &[&str], conditions: Value) -> Value {
    let mut hints = json!({});
    if !zones.is_empty() {
        hints["forZones"] = zones.iter().map(|z| json!({"name": z})).collect();
    }
    if !nodes.is_empty() {
        hints["forNodes"] = nodes.iter().map(|n| json!({"name": n})).collect();
    }
    let mut ep = json!({"addresses": [addr], "nodeName": node, "hints": hints});
    if !conditions.is_null() {
        ep["conditions"] = conditions;
    }
    ep
}

/// A ready endpoint on `node` hinted for the zones `zones`.
fn ep_zone(addr: &str, node: &str, zones: &[&str]) -> Value {
    ep_hinted(addr, node, zones, &[], Value::Null)
}

/// Each virtual server of `service` on node "n1" (IPv4, node address
/// 192.168.0.10) in `zone`, as "TCP 10.96.0.10:80", with its real servers.
fn reals_in_zone(
    service: Value,
    slices: Vec<Value>,
    zone: Option<&str>,
) -> Vec<(String, Vec<String>)> {
    let svc: Service = serde_json::from_value(service).unwrap();
    let svc = ServiceInfo::from_service(&svc).unwrap();
    let slices: Vec<EndpointSliceInfo> = slices
        .into_iter()
        .map(|s| {
            let s: EndpointSlice = serde_json::from_value(s).unwrap();
            EndpointSliceInfo::from_slice(&s).unwrap().unwrap()
        })
        .collect();
    let got =
        translate_service_in_zone(&svc, &slices, &node_v4(), zone, &TranslateConfig::default());
    got.desired
        .virtual_servers
        .iter()
        .map(|v| {
            let k = v.server.key;
            let reals = v
                .real_servers
                .iter()
                .map(|r| SocketAddr::new(r.key.addr, r.key.port).to_string())
                .collect();
            (
                format!("{:?} {}", k.protocol, SocketAddr::new(k.addr, k.port)).to_uppercase(),
                reals,
            )
        })
        .collect()
}

/// `[("TCP 10.96.0.10:80", ["10.244.1.5:8080", …])]` from literals.
fn want(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    list.iter()
        .map(|(vs, reals)| {
            (
                vs.to_string(),
                reals.iter().map(ToString::to_string).collect(),
            )
        })
        .collect()
}

/// Four ready endpoints, two hinted for zone-a, one each for zone-b and zone-c.
fn four_zoned() -> Vec<Value> {
    vec![http_slice(
        "s1",
        json!([
            ep_zone("10.244.1.3", "n1", &["zone-a"]),
            ep_zone("10.244.2.4", "n2", &["zone-b"]),
            ep_zone("10.244.3.5", "n3", &["zone-c"]),
            ep_zone("10.244.4.6", "n4", &["zone-a"]),
        ]),
    )]
}

const ALL_FOUR: &[&str] = &[
    "10.244.1.3:8080",
    "10.244.2.4:8080",
    "10.244.3.5:8080",
    "10.244.4.6:8080",
];
const ZONE_A: &[&str] = &["10.244.1.3:8080", "10.244.4.6:8080"];

#[test]
fn zone_hints_narrow_cluster_endpoints_to_this_zone() {
    assert_eq!(
        reals_in_zone(web(json!({})), four_zoned(), Some("zone-a")),
        want(&[("TCP 10.96.0.10:80", ZONE_A)])
    );
}

#[test]
fn zone_hints_are_ignored_when_a_ready_endpoint_lacks_them() {
    let slices = vec![http_slice(
        "s1",
        json!([
            ep_zone("10.244.1.3", "n1", &["zone-a"]),
            ep_zone("10.244.2.4", "n2", &["zone-b"]),
            ep("10.244.3.5", "n3"),
            ep_zone("10.244.4.6", "n4", &["zone-a"]),
        ]),
    )];
    assert_eq!(
        reals_in_zone(web(json!({})), slices, Some("zone-a")),
        want(&[("TCP 10.96.0.10:80", ALL_FOUR)])
    );
}

#[test]
fn zone_hints_with_empty_lists_count_as_missing() {
    // `hints: {}` and `forZones: []` are no hint at all.
    let slices = vec![http_slice(
        "s1",
        json!([
            ep_zone("10.244.1.3", "n1", &["zone-a"]),
            {"addresses": ["10.244.2.4"], "nodeName": "n2", "hints": {"forZones": []}},
        ]),
    )];
    assert_eq!(
        reals_in_zone(web(json!({})), slices, Some("zone-a")),
        want(&[("TCP 10.96.0.10:80", &["10.244.1.3:8080", "10.244.2.4:8080"])])
    );
}

#[test]
fn zone_hints_are_ignored_when_none_is_for_this_zone() {
    assert_eq!(
        reals_in_zone(web(json!({})), four_zoned(), Some("zone-d")),
        want(&[("TCP 10.96.0.10:80", ALL_FOUR)])
    );
}

#[test]
fn zone_hints_are_ignored_on_a_node_without_a_zone() {
    assert_eq!(
        reals_in_zone(web(json!({})), four_zoned(), None),
        want(&[("TCP 10.96.0.10:80", ALL_FOUR)])
    );
    // translate_service is the node without a zone.
    let svc: Service = serde_json::from_value(web(json!({}))).unwrap();
    let svc = ServiceInfo::from_service(&svc).unwrap();
    let s: EndpointSlice = serde_json::from_value(four_zoned().remove(0)).unwrap();
    let slices = [EndpointSliceInfo::from_slice(&s).unwrap().unwrap()];
    let got = translate_service(&svc, &slices, &node_v4(), &TranslateConfig::default());
    assert_eq!(got.desired.virtual_servers[0].real_servers.len(), 4);
}

#[test]
fn zone_hints_naming_several_zones_admit_the_endpoint_in_each() {
    let slices = vec![http_slice(
        "s1",
        json!([
            ep_zone("10.244.1.3", "n1", &["zone-a", "zone-b", "zone-c"]),
            ep_zone("10.244.2.4", "n2", &["zone-b", "zone-c"]),
            ep_zone("10.244.3.5", "n3", &["zone-b", "zone-d"]),
            ep_zone("10.244.4.6", "n4", &["zone-c"]),
        ]),
    )];
    assert_eq!(
        reals_in_zone(web(json!({})), slices, Some("zone-c")),
        want(&[(
            "TCP 10.96.0.10:80",
            &["10.244.1.3:8080", "10.244.2.4:8080", "10.244.4.6:8080"]
        )])
    );
}

#[test]
fn zone_hints_of_unready_endpoints_do_not_count() {
    // The unready endpoint needs no hint, and is never used.
    let mut slices = four_zoned();
    slices[0]["endpoints"][3]["conditions"] = json!({"ready": false});
    slices[0]["endpoints"].as_array_mut().unwrap().push(ep_with(
        "10.244.5.7",
        "n5",
        json!({"ready": false}),
    ));
    assert_eq!(
        reals_in_zone(web(json!({})), slices, Some("zone-a")),
        want(&[("TCP 10.96.0.10:80", &["10.244.1.3:8080"])])
    );
    // Only unready endpoints hinted for this zone: no zone to prefer.
    let mut slices = four_zoned();
    slices[0]["endpoints"][0]["conditions"] = json!({"ready": false});
    slices[0]["endpoints"][3]["conditions"] = json!({"ready": false});
    assert_eq!(
        reals_in_zone(web(json!({})), slices, Some("zone-a")),
        want(&[("TCP 10.96.0.10:80", &["10.244.2.4:8080", "10.244.3.5:8080"])])
    );
}

#[test]
fn zone_hints_do_not_narrow_the_terminating_fallback() {
    // No endpoint is ready: every serving-and-terminating one is used,
    // hinted for this zone or not.
    let slices = vec![http_slice(
        "s1",
        json!([
            ep_hinted("10.244.1.3", "n1", &["zone-a"], &[], terminating(true)),
            ep_hinted("10.244.2.4", "n2", &["zone-b"], &[], terminating(true)),
            ep_hinted("10.244.3.5", "n3", &["zone-a"], &[], terminating(false)),
        ]),
    )];
    assert_eq!(
        reals_in_zone(web(json!({})), slices, Some("zone-a")),
        want(&[("TCP 10.96.0.10:80", &["10.244.1.3:8080", "10.244.2.4:8080"])])
    );
}

#[test]
fn zone_hints_do_not_narrow_local_traffic_policies() {
    // n1's endpoints 10.244.1.3 (zone-a) and 10.244.1.4 (zone-b); remote
    // 10.244.2.5 (zone-c) and 10.244.2.6 (zone-a).
    let slices = vec![http_slice(
        "s1",
        json!([
            ep_zone("10.244.1.3", "n1", &["zone-a"]),
            ep_zone("10.244.1.4", "n1", &["zone-b"]),
            ep_zone("10.244.2.5", "n2", &["zone-c"]),
            ep_zone("10.244.2.6", "n2", &["zone-a"]),
        ]),
    )];
    let local: &[&str] = &["10.244.1.3:8080", "10.244.1.4:8080"];
    let cluster_zone_a: &[&str] = &["10.244.1.3:8080", "10.244.2.6:8080"];
    let node_port = |extra: Value| {
        let mut svc = web(json!({"type": "NodePort",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}));
        for (k, v) in extra.as_object().unwrap() {
            svc["spec"][k] = v.clone();
        }
        svc
    };
    // externalTrafficPolicy Local: node ports use every local endpoint; the
    // cluster IP keeps its Cluster policy, narrowed to the zone.
    assert_eq!(
        reals_in_zone(
            node_port(json!({"externalTrafficPolicy": "Local"})),
            slices.clone(),
            Some("zone-a")
        ),
        want(&[
            ("TCP 10.96.0.10:80", cluster_zone_a),
            ("TCP 192.168.0.10:30080", local)
        ])
    );
    // internalTrafficPolicy Local: the other way round.
    assert_eq!(
        reals_in_zone(
            node_port(json!({"internalTrafficPolicy": "Local"})),
            slices,
            Some("zone-a")
        ),
        want(&[
            ("TCP 10.96.0.10:80", local),
            ("TCP 192.168.0.10:30080", cluster_zone_a)
        ])
    );
}

#[test]
fn zone_hints_narrow_external_and_node_port_addresses_with_cluster_policy() {
    let service = web(json!({"type": "NodePort", "externalIPs": ["203.0.113.7"],
        "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}));
    assert_eq!(
        reals_in_zone(service, four_zoned(), Some("zone-a")),
        want(&[
            ("TCP 10.96.0.10:80", ZONE_A),
            ("TCP 192.168.0.10:30080", ZONE_A),
            ("TCP 203.0.113.7:80", ZONE_A),
        ])
    );
}

#[test]
fn node_hints_narrow_cluster_endpoints_to_this_node() {
    // PreferSameNode: every ready endpoint has node hints (and zone hints,
    // as the EndpointSlice controller writes both), one is for n1.
    let slices = vec![http_slice(
        "s1",
        json!([
            ep_hinted("10.244.1.3", "n1", &["zone-a"], &["n1"], Value::Null),
            ep_hinted("10.244.2.4", "n2", &["zone-a"], &["n2"], Value::Null),
            ep_hinted("10.244.3.5", "n3", &["zone-b"], &["n3"], Value::Null),
        ]),
    )];
    assert_eq!(
        reals_in_zone(web(json!({})), slices, Some("zone-a")),
        want(&[("TCP 10.96.0.10:80", &["10.244.1.3:8080"])])
    );
}

#[test]
fn node_hints_fall_back_to_zone_hints() {
    // No endpoint is hinted for n1: the zone hints apply.
    let no_endpoint_for_this_node = vec![http_slice(
        "s1",
        json!([
            ep_hinted("10.244.2.4", "n2", &["zone-a"], &["n2"], Value::Null),
            ep_hinted("10.244.3.5", "n3", &["zone-b"], &["n3"], Value::Null),
        ]),
    )];
    assert_eq!(
        reals_in_zone(web(json!({})), no_endpoint_for_this_node, Some("zone-a")),
        want(&[("TCP 10.96.0.10:80", &["10.244.2.4:8080"])])
    );
    // One ready endpoint lacks node hints: the zone hints apply.
    let partial_node_hints = vec![http_slice(
        "s1",
        json!([
            ep_hinted("10.244.1.3", "n1", &["zone-a"], &["n1"], Value::Null),
            ep_hinted("10.244.2.4", "n2", &["zone-a"], &[], Value::Null),
            ep_hinted("10.244.3.5", "n3", &["zone-b"], &["n3"], Value::Null),
        ]),
    )];
    assert_eq!(
        reals_in_zone(web(json!({})), partial_node_hints, Some("zone-a")),
        want(&[("TCP 10.96.0.10:80", &["10.244.1.3:8080", "10.244.2.4:8080"])])
    );
    // Node hints alone, none for n1: every endpoint.
    let node_hints_only = vec![http_slice(
        "s1",
        json!([
            ep_hinted("10.244.2.4", "n2", &[], &["n2"], Value::Null),
            ep_hinted("10.244.3.5", "n3", &[], &["n3"], Value::Null),
        ]),
    )];
    assert_eq!(
        reals_in_zone(web(json!({})), node_hints_only, Some("zone-a")),
        want(&[("TCP 10.96.0.10:80", &["10.244.2.4:8080", "10.244.3.5:8080"])])
    );
}

#[test]
fn node_hints_apply_on_a_node_without_a_zone() {
    let slices = vec![http_slice(
        "s1",
        json!([
            ep_hinted("10.244.1.3", "n1", &[], &["n1"], Value::Null),
            ep_hinted("10.244.2.4", "n2", &[], &["n2"], Value::Null),
        ]),
    )];
    assert_eq!(
        reals_in_zone(web(json!({})), slices, None),
        want(&[("TCP 10.96.0.10:80", &["10.244.1.3:8080"])])
    );
}

#[test]
fn zone_hints_are_used_whatever_the_service_asks() {
    // The hints are the proxy's only input: trafficDistribution and the
    // topology-mode annotations tell the EndpointSlice controller whether
    // to write them. So hints apply with "Disabled", without any of them,
    // and with a trafficDistribution value this proxy does not know.
    let services = [
        web(json!({})),
        web(json!({"trafficDistribution": "PreferClose"})),
        web(json!({"trafficDistribution": "PreferSameZone"})),
        web(json!({"trafficDistribution": "SomethingNew"})),
        web(json!({"metadata": {"namespace": "default", "name": "web",
            "annotations": {"service.kubernetes.io/topology-mode": "Auto"}}})),
        web(json!({"metadata": {"namespace": "default", "name": "web",
            "annotations": {"service.kubernetes.io/topology-mode": "Disabled"}}})),
        web(json!({"metadata": {"namespace": "default", "name": "web",
            "annotations": {"service.kubernetes.io/topology-aware-hints": "disabled"}}})),
    ];
    for service in services {
        assert_eq!(
            reals_in_zone(service.clone(), four_zoned(), Some("zone-a")),
            want(&[("TCP 10.96.0.10:80", ZONE_A)]),
            "{service}"
        );
    }
    // Nor does PreferClose without hints narrow anything.
    let unhinted = vec![http_slice(
        "s1",
        json!([ep("10.244.1.3", "n1"), ep("10.244.2.4", "n2")]),
    )];
    assert_eq!(
        reals_in_zone(
            web(json!({"trafficDistribution": "PreferClose"})),
            unhinted,
            Some("zone-a")
        ),
        want(&[("TCP 10.96.0.10:80", &["10.244.1.3:8080", "10.244.2.4:8080"])])
    );
}

#[test]
fn zone_hints_are_read_per_slice_and_per_family() {
    // Hints across two slices of one family are decided together: the
    // second slice's unhinted endpoint turns them off.
    let two_slices = vec![
        http_slice("s1", json!([ep_zone("10.244.1.3", "n1", &["zone-a"])])),
        http_slice("s2", json!([ep("10.244.2.4", "n2")])),
    ];
    assert_eq!(
        reals_in_zone(web(json!({})), two_slices, Some("zone-a")),
        want(&[("TCP 10.96.0.10:80", &["10.244.1.3:8080", "10.244.2.4:8080"])])
    );
    // An unhinted IPv6 slice does not turn off the IPv4 family's hints.
    let families = vec![
        http_slice(
            "s1",
            json!([
                ep_zone("10.244.1.3", "n1", &["zone-a"]),
                ep_zone("10.244.2.4", "n2", &["zone-b"])
            ]),
        ),
        slice(
            "s6",
            "IPv6",
            json!([{"name": "http", "port": 8080}]),
            json!([ep("fd00:244::5", "n2")]),
        ),
    ];
    assert_eq!(
        reals_in_zone(web(json!({})), families, Some("zone-a")),
        want(&[("TCP 10.96.0.10:80", &["10.244.1.3:8080"])])
    );
}

#[test]
fn zone_of_the_model_node_reaches_translation() {
    // translate_named and translate_model read the zone from this node's
    // Node object in the model; a Node without the label uses every endpoint.
    let mut model = Model::new("n1");
    let svc: Service = serde_json::from_value(web(json!({}))).unwrap();
    model.apply(SourceEvent::service(Update::Apply(svc)));
    let s1: EndpointSlice = serde_json::from_value(four_zoned().remove(0)).unwrap();
    model.apply(SourceEvent::slice(Update::Apply(s1)));
    let name = ServiceName::new("default", "web");
    let reals = |model: &Model| {
        let named = translate_named(model, &name, &node_v4(), &TranslateConfig::default());
        let (all, _) = translate_model(model, &node_v4(), &TranslateConfig::default());
        assert_eq!(all[&name], named.desired);
        named.desired.virtual_servers[0].real_servers.len()
    };
    assert_eq!(reals(&model), 4, "no Node yet");
    let node = |labels: Value| -> k8s_openapi::api::core::v1::Node {
        serde_json::from_value(json!({"metadata": {"name": "n1", "labels": labels}})).unwrap()
    };
    let changes = model.apply(SourceEvent::node(Update::Apply(node(
        json!({"topology.kubernetes.io/zone": "zone-a"}),
    ))));
    assert!(changes.all, "a new zone translates every service again");
    assert_eq!(reals(&model), 2, "zone-a");
    let changes = model.apply(SourceEvent::node(Update::Apply(node(
        json!({"topology.kubernetes.io/zone": "zone-b"}),
    ))));
    assert!(changes.all);
    assert_eq!(reals(&model), 1, "zone-b");
    model.apply(SourceEvent::node(Update::Apply(node(
        json!({"topology.kubernetes.io/zone": ""}),
    ))));
    assert_eq!(reals(&model), 4, "an empty label is no zone");
}

// ---- healthCheckNodePort ----------------------------------------------------

/// `web` as a LoadBalancer with externalTrafficPolicy Local and
/// healthCheckNodePort 32000; `extra` as for [`web`].
fn local_lb(extra: Value) -> Value {
    let mut svc = web(json!({
        "type": "LoadBalancer",
        "externalTrafficPolicy": "Local",
        "healthCheckNodePort": 32000,
        "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
    }));
    for (k, v) in extra.as_object().unwrap() {
        svc["spec"][k] = v.clone();
    }
    svc
}

#[test]
fn health_check_counts_this_nodes_ready_endpoints_as_upstream() {
    let two_ports = json!([{"name": "http", "port": 8080}, {"name": "https", "port": 8443}]);
    // (case, service, slices, node, expected count; None: no health check)
    let cases = vec![
        (
            "local ready endpoints, others' left out",
            local_lb(json!({})),
            vec![http_slice(
                "s1",
                json!([
                    ep("10.0.0.1", "n1"),
                    ep("10.0.0.2", "n1"),
                    ep("10.0.0.3", "n2")
                ]),
            )],
            node_v4(),
            Some(2),
        ),
        (
            "no local endpoint: a check that answers 503",
            local_lb(json!({})),
            vec![http_slice("s1", json!([ep("10.0.0.3", "n2")]))],
            node_v4(),
            Some(0),
        ),
        (
            "no slice at all",
            local_lb(json!({})),
            vec![],
            node_v4(),
            Some(0),
        ),
        (
            "an address on two ports and in two slices counts once",
            local_lb(
                json!({"ports": [{"name": "http", "port": 80, "nodePort": 30080},
                                      {"name": "https", "port": 443, "nodePort": 30443}]}),
            ),
            vec![
                slice(
                    "s1",
                    "IPv4",
                    two_ports.clone(),
                    json!([ep("10.0.0.1", "n1")]),
                ),
                slice(
                    "s2",
                    "IPv4",
                    two_ports,
                    json!([ep("10.0.0.1", "n1"), ep("10.0.0.2", "n1")]),
                ),
            ],
            node_v4(),
            Some(2),
        ),
        (
            "terminating endpoints do not count, serving or not",
            local_lb(json!({})),
            vec![http_slice(
                "s1",
                json!([
                    ep_with("10.0.0.1", "n1", terminating(true)),
                    ep_with("10.0.0.2", "n1", terminating(false)),
                    ep_with("10.0.0.3", "n1", json!({"ready": false})),
                ]),
            )],
            node_v4(),
            Some(0),
        ),
        (
            "a slice without ports serves nothing",
            local_lb(json!({})),
            vec![slice(
                "s1",
                "IPv4",
                json!([]),
                json!([ep("10.0.0.1", "n1")]),
            )],
            node_v4(),
            Some(0),
        ),
        (
            "dual-stack: both families count",
            local_lb(json!({"clusterIPs": ["10.96.0.10", "fd00::10"]})),
            vec![
                http_slice("s4", json!([ep("10.0.0.1", "n1")])),
                slice(
                    "s6",
                    "IPv6",
                    json!([{"name": "http", "port": 8080}]),
                    json!([ep("fd00:2::1", "n1")]),
                ),
            ],
            node_dual(),
            Some(2),
        ),
        (
            "dual-stack service on an IPv4 node: IPv4 only",
            local_lb(json!({"clusterIPs": ["10.96.0.10", "fd00::10"]})),
            vec![
                http_slice("s4", json!([ep("10.0.0.1", "n1")])),
                slice(
                    "s6",
                    "IPv6",
                    json!([{"name": "http", "port": 8080}]),
                    json!([ep("fd00:2::1", "n1")]),
                ),
            ],
            node_v4(),
            Some(1),
        ),
        (
            "an IPv6 service is not served on an IPv4 node",
            local_lb(json!({"clusterIP": "fd00::10"})),
            vec![],
            node_v4(),
            None,
        ),
        (
            "externalTrafficPolicy Cluster has no health check",
            local_lb(json!({"externalTrafficPolicy": "Cluster"})),
            vec![http_slice("s1", json!([ep("10.0.0.1", "n1")]))],
            node_v4(),
            None,
        ),
        (
            "LoadBalancer Local without a port has no health check",
            {
                let mut svc = local_lb(json!({}));
                svc["spec"]
                    .as_object_mut()
                    .unwrap()
                    .remove("healthCheckNodePort");
                svc
            },
            vec![http_slice("s1", json!([ep("10.0.0.1", "n1")]))],
            node_v4(),
            None,
        ),
    ];
    for (case, service, slices, node, want) in cases {
        let svc: Service = serde_json::from_value(service).unwrap();
        let svc = ServiceInfo::from_service(&svc).unwrap_or_else(|e| panic!("{case}: {e}"));
        let slices: Vec<EndpointSliceInfo> = slices
            .into_iter()
            .map(|s| {
                let s: EndpointSlice = serde_json::from_value(s).unwrap();
                EndpointSliceInfo::from_slice(&s).unwrap().unwrap()
            })
            .collect();
        let translation = translate_service(&svc, &slices, &node, &TranslateConfig::default());
        let want = want.map(|local_endpoints| HealthCheck {
            port: 32000,
            local_endpoints,
        });
        assert_eq!(translation.health_check, want, "{case}");
    }
}

// --- Ports left without a local endpoint (upstream's no_local_endpoints) -----

#[test]
fn no_local_endpoints_counts_local_policies_left_without_a_local_endpoint() {
    let here = || ep("10.244.1.5", "n1");
    let elsewhere = || ep("10.244.2.5", "n2");
    let node_port =
        json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]});
    let with = |mut spec: Value, extra: Value| {
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        spec
    };
    // (case, service spec, endpoints, internal, external)
    #[rustfmt::skip]
    let cases = [
        ("cluster policies never count",
            with(node_port.clone(), json!({})), json!([elsewhere()]), 0, 0),
        ("internal Local, endpoints only elsewhere",
            json!({"internalTrafficPolicy": "Local"}), json!([elsewhere()]), 1, 0),
        ("internal Local with a local endpoint",
            json!({"internalTrafficPolicy": "Local"}), json!([here(), elsewhere()]), 0, 0),
        ("internal Local and no endpoints at all: rejected, not counted",
            json!({"internalTrafficPolicy": "Local"}), json!([]), 0, 0),
        ("external Local on a NodePort, endpoints only elsewhere",
            with(node_port.clone(), json!({"externalTrafficPolicy": "Local"})), json!([elsewhere()]), 0, 1),
        ("external Local on a NodePort with a local endpoint",
            with(node_port.clone(), json!({"externalTrafficPolicy": "Local"})), json!([here()]), 0, 0),
        ("both Local, endpoints only elsewhere",
            with(node_port, json!({"externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local"})),
            json!([elsewhere()]), 1, 1),
    ];
    for (name, spec, eps, internal, external) in cases {
        let svc: Service = serde_json::from_value(web(spec)).unwrap();
        let svc = ServiceInfo::from_service(&svc).unwrap_or_else(|e| panic!("{name}: {e}"));
        let s: EndpointSlice = serde_json::from_value(http_slice("s1", eps)).unwrap();
        let slices = [EndpointSliceInfo::from_slice(&s).unwrap().unwrap()];
        let got = translate_service(&svc, &slices, &node_v4(), &TranslateConfig::default());
        let expected = NoLocalEndpoints { internal, external };
        assert_eq!(got.no_local_endpoints, expected, "{name}");
    }
}

// --- the packet path's ip6 table ------------------------------------------------

#[test]
fn ipv6_addresses_fill_the_ip6_table_as_ipv4_ones_fill_the_ip_table() {
    let svc = web(json!({
        "type": "LoadBalancer",
        "externalTrafficPolicy": "Local",
        "clusterIPs": ["10.96.0.10", "fd00:10:96::a"],
        "ipFamilies": ["IPv4", "IPv6"],
        "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        // Each family admits its own ranges; fd00:1::/64 holds the node.
        "loadBalancerSourceRanges": ["198.51.100.0/24", "2001:db8:2::/65", "2001:db8:2:0:8000::/65", "fd00:1::/64"],
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.20"}, {"ip": "2001:db8:1::20"}]}},
    }));
    let svc: Service = serde_json::from_value(svc).unwrap();
    let svc = ServiceInfo::from_service(&svc).unwrap();
    let slices: Vec<EndpointSliceInfo> = [
        http_slice("s4", json!([ep("10.244.2.5", "n2")])),
        slice(
            "s6",
            "IPv6",
            json!([{"name": "http", "port": 8080}]),
            json!([ep("fd00:10:244:1::5", "n1")]),
        ),
    ]
    .into_iter()
    .map(|s| {
        let s: EndpointSlice = serde_json::from_value(s).unwrap();
        EndpointSliceInfo::from_slice(&s).unwrap().unwrap()
    })
    .collect();
    let got = translate_service(&svc, &slices, &node_dual(), &TranslateConfig::default());
    let mut elements: Vec<String> = got
        .desired
        .nft_elements
        .iter()
        .map(ToString::to_string)
        .collect();
    elements.sort();
    let mut want = vec![
        // IPv4: no endpoint on this node, so eTP Local drops.
        "add element ip kube-ipvs-proxy cluster-ips { 10.96.0.10 . tcp . 80 }",
        "add element ip kube-ipvs-proxy service-ips { 10.96.0.10 }",
        "add element ip kube-ipvs-proxy external-ips-local { 203.0.113.20 . tcp . 80 }",
        "add element ip kube-ipvs-proxy no-local-endpoints { 203.0.113.20 . tcp . 80 }",
        "add element ip kube-ipvs-proxy service-ips { 203.0.113.20 }",
        "add element ip kube-ipvs-proxy nodeports-no-local-endpoints { tcp . 30080 }",
        "add element ip kube-ipvs-proxy firewall-ips { 203.0.113.20 . tcp . 80 }",
        "add element ip kube-ipvs-proxy firewall-allow { 203.0.113.20 . tcp . 80 . 198.51.100.0/24 }",
        // IPv6: an endpoint here (hairpin), so nothing is dropped; the
        // ranges merged, and the LoadBalancer IP itself for the node.
        "add element ip6 kube-ipvs-proxy cluster-ips { fd00:10:96::a . tcp . 80 }",
        "add element ip6 kube-ipvs-proxy service-ips { fd00:10:96::a }",
        "add element ip6 kube-ipvs-proxy external-ips-local { 2001:db8:1::20 . tcp . 80 }",
        "add element ip6 kube-ipvs-proxy service-ips { 2001:db8:1::20 }",
        "add element ip6 kube-ipvs-proxy firewall-ips { 2001:db8:1::20 . tcp . 80 }",
        "add element ip6 kube-ipvs-proxy firewall-allow { 2001:db8:1::20 . tcp . 80 . 2001:db8:2::/64 }",
        "add element ip6 kube-ipvs-proxy firewall-allow { 2001:db8:1::20 . tcp . 80 . fd00:1::/64 }",
        "add element ip6 kube-ipvs-proxy firewall-allow { 2001:db8:1::20 . tcp . 80 . 2001:db8:1::20/128 }",
        "add element ip6 kube-ipvs-proxy hairpin { fd00:10:244:1::5 . tcp . 8080 . fd00:10:244:1::5 }",
    ];
    want.sort();
    assert_eq!(elements, want);
}
