//! Events from the proxy's own run loop, in-cluster against the test API
//! server: a Service the proxy cannot program as asked gets one Event that
//! names the field and the value, a repeat does not post again, and of two
//! services wanting one virtual server the younger is told which one holds
//! it.

#[allow(
    dead_code,
    reason = "this target uses only part of the shared test API server"
)]
mod support;

use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::events::v1::Event;
use kube_ipvs_proxy::cli::Cli;
use kube_ipvs_proxy::desired::NftRuleset;
use kube_ipvs_proxy::events;
use kube_ipvs_proxy::kernel::fake::{FakeConntrack, FakeKernel, FakeNft};
use kube_ipvs_proxy::metrics::Metrics;
use kube_ipvs_proxy::proxy::{Kernel, Loop, Result as ProxyResult};
use kube_ipvs_proxy::source::kube::{client, watch};
use kube_ipvs_proxy::translate::{NodeFacts, TranslateConfig};
use serde_json::json;
use support::apiserver::TestApiServer;
use tokio::sync::oneshot;

const WEB_UID: &str = "0b8f6c4e-1d2a-4e3b-8c5d-6e7f8091a2b3";

fn service(value: serde_json::Value) -> Service {
    serde_json::from_value(value).expect("a Service")
}

/// A Service the model rejects: `spec.sessionAffinity` is not a value the
/// API knows.
fn bad_web(label: &str) -> Service {
    service(json!({
        "metadata": {"namespace": "default", "name": "web", "uid": WEB_UID,
                     "labels": {"rev": label}},
        "spec": {"clusterIP": "10.96.0.10", "sessionAffinity": "Sticky",
                 "ports": [{"port": 80}]},
    }))
}

/// A Service with ExternalIP 203.0.113.40, created at `created`.
fn external(name: &str, cluster_ip: &str, created: &str) -> Service {
    service(json!({
        "metadata": {"namespace": "default", "name": name, "creationTimestamp": created},
        "spec": {"clusterIP": cluster_ip, "externalIPs": ["203.0.113.40"],
                 "ports": [{"port": 80}]},
    }))
}

struct Running {
    server: TestApiServer,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<ProxyResult<()>>,
}

/// The proxy loop, in-cluster, posting Events, on fake kernels.
async fn start(server: TestApiServer) -> Running {
    server.apply(&Node {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("node-1".to_owned()),
            ..Default::default()
        },
        ..Node::default()
    });
    let kube = client(None, Some(&server.url()), &Metrics::new())
        .await
        .expect("client");
    let source = Box::pin(watch(kube.clone(), "node-1"));
    let metrics = Metrics::new();
    let sink = events::spawn(kube, "node-1", metrics.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // Leaked so that the loop may borrow it for the task's whole life.
        let opts = Box::leak(Box::new(
            Cli::parse_from([
                "kube-ipvs-proxy",
                "--ipvs-min-sync-period",
                "0s",
                "--ipvs-sync-period",
                "1h",
            ])
            .options,
        ));
        let node = NodeFacts {
            name: "node-1".into(),
            node_addresses: vec![],
            local_addresses: vec![],
            ipv4: true,
            ipv6: false,
        };
        let refresh = {
            let node = node.clone();
            move || std::future::ready(Ok(node.clone()))
        };
        let (mut ipvs, mut link) = (FakeKernel::new(), FakeKernel::new());
        let (mut nft, mut conntrack) = (FakeNft::new(), FakeConntrack::default());
        Loop {
            opts,
            node,
            translate: TranslateConfig::default(),
            ruleset: NftRuleset::default(),
            source_name: "kube",
            metrics,
            events: sink,
        }
        .serve(
            source,
            Kernel {
                ipvs: &mut ipvs,
                link: &mut link,
                nft: &mut nft,
                conntrack: &mut conntrack,
            },
            refresh,
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    Running {
        server,
        stop: Some(stop),
        task,
    }
}

impl Running {
    /// Waits until the server holds an Event with `reason` on `service`;
    /// the bound only turns a hang into a failure.
    async fn event(&self, service: &str, reason: &str) -> Event {
        for _ in 0..2000 {
            let found = self.server.objects::<Event>().into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(service)
            });
            if let Some(event) = found {
                return event;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "no {reason} Event on {service}; the server holds {:#?}",
            self.server.objects::<Event>()
        );
    }

    fn events_created(&self) -> usize {
        self.server
            .calls()
            .iter()
            .filter(|c| c.resource == "events" && c.verb == "create")
            .count()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the loop stops when told")
            .expect("the loop task does not panic");
        assert!(result.is_ok(), "the loop ended with {result:?}");
    }
}

#[tokio::test]
async fn a_bad_field_is_one_event_naming_the_field_and_the_value() {
    let server = TestApiServer::start().await;
    server.apply(&bad_web("1"));
    let proxy = start(server).await;

    let event = proxy.event("web", "InvalidField").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.note.as_deref(),
        Some("Service default/web: spec.sessionAffinity: unsupported value \"Sticky\"; the proxy keeps the last valid version")
    );
    assert_eq!(event.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        event.reporting_controller.as_deref(),
        Some("kube-ipvs-proxy")
    );
    assert_eq!(event.reporting_instance.as_deref(), Some("node-1"));
    let regarding = event.regarding.expect("regarding");
    assert_eq!(
        (
            regarding.kind.as_deref(),
            regarding.namespace.as_deref(),
            regarding.uid.as_deref()
        ),
        (Some("Service"), Some("default"), Some(WEB_UID)),
        "kubectl describe finds Events by the Service's uid"
    );

    // The same problem again (a new revision, as bad), then another
    // service's: once the second is posted, the poster has seen the repeat.
    proxy.server.apply(&bad_web("2"));
    proxy.server.apply(&service(json!({
        "metadata": {"namespace": "default", "name": "db"},
        "spec": {"clusterIP": "10.96.0.11", "externalTrafficPolicy": "Nearest",
                 "ports": [{"port": 5432}]},
    })));
    let db = proxy.event("db", "InvalidField").await;
    assert!(
        db.note.as_deref().is_some_and(
            |n| n.contains("spec.externalTrafficPolicy: unsupported value \"Nearest\"")
        ),
        "{db:?}"
    );
    assert_eq!(proxy.events_created(), 2, "the repeat posted nothing");
    assert_eq!(proxy.server.objects::<Event>().len(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn of_two_services_wanting_one_virtual_server_the_younger_is_told() {
    let server = TestApiServer::start().await;
    // Listed by name, so the younger claims first and the older takes over.
    server.apply(&external("a-young", "10.96.0.20", "2024-05-01T00:00:00Z"));
    server.apply(&external("z-old", "10.96.0.21", "2020-01-01T00:00:00Z"));
    let proxy = start(server).await;

    let event = proxy.event("a-young", "VirtualServerConflict").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(
        note.starts_with(
            "virtual server TCP/203.0.113.40:80 is also wanted by Service default/z-old"
        ),
        "{note}"
    );
    // The older one is not at fault: it has no Event (checked after the
    // next service's Event, which the poster handles later).
    proxy.server.apply(&bad_web("1"));
    proxy.event("web", "InvalidField").await;
    let on_old = proxy
        .server
        .objects::<Event>()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("z-old"))
        .count();
    assert_eq!(on_old, 0);
    proxy.stop().await;
}
