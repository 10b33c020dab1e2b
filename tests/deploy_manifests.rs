//! deploy/ as `kubectl apply -k deploy/` applies it: every manifest parses
//! into its k8s-openapi type, the DaemonSet's arguments and configuration
//! parse with the proxy's own command line, it runs with capabilities rather
//! than privileged, its image tag is the release, and the ClusterRole grants
//! exactly the API calls the in-cluster source and the Event poster make
//! (recorded by the test API server, not listed by hand).

#[allow(
    dead_code,
    reason = "this target uses only part of the shared test API server"
)]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube_ipvs_proxy::config::parse_args;
use kube_ipvs_proxy::metrics::Metrics;
use kube_ipvs_proxy::source::kube::{client, watch};
use kube_ipvs_proxy::source::SourceEvent;
use serde_json::Value;
use support::apiserver::{ApiCall, TestApiServer};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// What `kubectl apply -k deploy/` applies, by kind.
#[derive(Debug, Default)]
struct Applied {
    config_maps: Vec<ConfigMap>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemon_sets: Vec<DaemonSet>,
}

/// Reads the kustomization and every resource it lists, each document into
/// its k8s-openapi type; fails on a kind it does not expect.
fn applied() -> Applied {
    let dir = deploy_dir();
    let kustomization: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("kustomization.yaml"))
            .expect("deploy/kustomization.yaml"),
    )
    .expect("the kustomization is YAML");
    assert_eq!(kustomization["kind"], "Kustomization");
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources: a list")
        .iter()
        .map(|r| r.as_str().expect("a file name"))
        .collect();
    // Every manifest beside the kustomization is one of its resources.
    let mut beside: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    beside.sort();
    let mut listed: Vec<String> = resources.iter().map(|r| (*r).to_owned()).collect();
    listed.sort();
    assert_eq!(
        listed, beside,
        "deploy/*.yaml and the kustomization's resources"
    );

    let mut out = Applied::default();
    for resource in resources {
        let text = std::fs::read_to_string(dir.join(resource)).expect(resource);
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{resource}: {e}"));
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            let what = format!("{resource}: {kind}");
            let parsed = match kind.as_str() {
                "ConfigMap" => out_push(&mut out.config_maps, value),
                "ServiceAccount" => out_push(&mut out.service_accounts, value),
                "ClusterRole" => out_push(&mut out.cluster_roles, value),
                "ClusterRoleBinding" => out_push(&mut out.bindings, value),
                "DaemonSet" => out_push(&mut out.daemon_sets, value),
                other => Err(format!("unexpected kind {other:?}")),
            };
            parsed.unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
    out
}

fn out_push<T: serde::de::DeserializeOwned>(list: &mut Vec<T>, value: Value) -> Result<(), String> {
    list.push(serde_json::from_value(value).map_err(|e| e.to_string())?);
    Ok(())
}

/// The DaemonSet's containers, init containers first.
fn containers(ds: &DaemonSet) -> Vec<&Container> {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect()
}

/// The file the ConfigMap mounted at `path`'s directory provides, if any.
fn config_file<'a>(
    ds: &DaemonSet,
    container: &Container,
    maps: &'a [ConfigMap],
    path: &str,
) -> &'a str {
    let (dir, key) = path.rsplit_once('/').unwrap();
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == dir)
        .unwrap_or_else(|| panic!("{}: nothing is mounted at {dir}", container.name));
    let volumes = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap();
    let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
    let map_name = &volume.config_map.as_ref().expect("a ConfigMap volume").name;
    let map = maps
        .iter()
        .find(|m| m.metadata.name.as_ref() == Some(map_name))
        .unwrap_or_else(|| panic!("no ConfigMap {map_name} in deploy/"));
    map.data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("ConfigMap {map_name} has no key {key}"))
}

#[test]
fn every_manifest_parses_and_the_daemonset_reads_its_configmap() {
    let applied = applied();
    assert_eq!(applied.daemon_sets.len(), 1);
    assert_eq!(applied.cluster_roles.len(), 1);
    let ds = &applied.daemon_sets[0];
    let version_tag = format!("v{}", env!("CARGO_PKG_VERSION"));
    let names: Vec<&str> = containers(ds).iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["prepare", "kube-ipvs-proxy"]);
    for container in containers(ds) {
        let image = container.image.as_deref().unwrap();
        assert_eq!(
            image.rsplit_once(':').map(|(_, tag)| tag),
            Some(version_tag.as_str()),
            "{}: image {image}",
            container.name
        );
        // The arguments parse with the proxy's own command line, the
        // configuration file included, with nothing to warn about.
        let args = container.args.as_ref().unwrap();
        let config = args
            .iter()
            .find_map(|a| a.strip_prefix("--config="))
            .unwrap_or_else(|| panic!("{}: no --config", container.name));
        let text = config_file(ds, container, &applied.config_maps, config);
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("config.conf");
        std::fs::write(&local, text).unwrap();
        let argv: Vec<String> = std::iter::once("kube-ipvs-proxy".to_owned())
            .chain(args.iter().map(|a| match a.strip_prefix("--config=") {
                Some(_) => format!("--config={}", local.display()),
                None => a.clone(),
            }))
            .collect();
        let (cli, file) = parse_args(argv).unwrap_or_else(|e| panic!("{}: {e}", container.name));
        assert_eq!(file.warnings, Vec::<String>::new(), "{}", container.name);
        assert_eq!(
            cli.options.cluster_cidr,
            vec!["10.244.0.0/16".parse::<ipnet::IpNet>().unwrap()],
            "the ConfigMap's clusterCIDR reaches the options"
        );
    }

    // The service account, its binding and the role fit together.
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let account = spec.service_account_name.as_deref().unwrap();
    assert!(applied
        .service_accounts
        .iter()
        .any(|a| a.metadata.name.as_deref() == Some(account)));
    let binding = &applied.bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&binding.role_ref.name),
        applied.cluster_roles[0].metadata.name.as_ref()
    );
    assert!(binding
        .subjects
        .iter()
        .flatten()
        .any(|s| s.kind == "ServiceAccount" && s.name == account));
}

#[test]
fn the_proxy_runs_with_capabilities_and_only_prepare_is_privileged() {
    let applied = applied();
    let ds = &applied.daemon_sets[0];
    let all = containers(ds);
    let (prepare, proxy) = (all[0], all[1]);
    assert_eq!(prepare.args.as_ref().unwrap()[0], "prepare");
    let privileged = |c: &Container| {
        c.security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false)
    };
    assert!(
        privileged(prepare),
        "prepare writes /proc/sys and loads modules"
    );
    assert!(!privileged(proxy), "the proxy itself is not privileged");
    let caps = proxy
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["NET_ADMIN", "SYS_MODULE"]));
    assert_eq!(proxy.args.as_ref().unwrap()[0], "run");
}

/// Whether one of `role`'s rules grants `call`.
fn grants(role: &ClusterRole, call: &ApiCall) -> bool {
    let has = |list: &Option<Vec<String>>, item: &str| {
        list.iter().flatten().any(|x| x == item || x == "*")
    };
    role.rules.iter().flatten().any(|rule| {
        has(&rule.api_groups, &call.api_group)
            && has(&rule.resources, &call.resource)
            && rule.verbs.iter().any(|v| v == &call.verb || v == "*")
    })
}

/// Every (group, resource, verb) a role names.
fn granted(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

/// Drives the Event poster through everything it can call: one Event
/// created, then, a window later, the same problem updating it.
async fn post_and_update_an_event(server: &TestApiServer) {
    use kube_ipvs_proxy::desired::ServiceName;
    use kube_ipvs_proxy::events::{self, Limits, Problem, Reason};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    let now = Arc::new(Mutex::new(Instant::now()));
    let clock = {
        let now = now.clone();
        Box::new(move || *now.lock().unwrap())
    };
    let limits = Limits::default();
    let kube = client(None, Some(&server.url()), &Metrics::new())
        .await
        .unwrap();
    let sink = events::spawn_with(kube, "node-1", Default::default(), limits, clock);
    let problem = Problem {
        service: ServiceName::new("default", "web"),
        uid: None,
        reason: Reason::InvalidField,
        note: "Service default/web: spec.type: unsupported value \"Foo\"".to_owned(),
    };
    let called = |verb: &str| {
        server
            .calls()
            .iter()
            .any(|c| c.resource == "events" && c.verb == verb)
    };
    sink.report(problem.clone());
    wait_until(|| called("create")).await;
    *now.lock().unwrap() += limits.window;
    sink.report(problem);
    wait_until(|| called("patch")).await;
}

/// Polls `done`; the bound only turns a hang into a failure.
async fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the condition never held");
}

#[tokio::test]
async fn the_cluster_role_grants_exactly_what_the_source_calls() {
    let applied = applied();
    let role = &applied.cluster_roles[0];

    let server = TestApiServer::start().await;
    server.apply(&Node {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("node-1".to_owned()),
            ..Default::default()
        },
        ..Node::default()
    });
    let client = client(None, Some(&server.url()), &Metrics::new())
        .await
        .unwrap();
    let mut events = Box::pin(watch(client, "node-1"));
    // The source runs only while polled: drive it until it has listed
    // everything and opened its three watches (the timeout guards a hang).
    let synced = async {
        while let Some(event) = events.next().await {
            if matches!(event, SourceEvent::Synced) {
                break;
            }
        }
        // Keep polling so that the watches open.
        events.next().await;
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            () = synced => panic!("the source ended"),
            () = server.wait_for_open_watches(3) => {}
        }
    })
    .await
    .expect("the source lists and watches everything within 20 s");
    post_and_update_an_event(&server).await;

    let calls: BTreeSet<ApiCall> = server.calls().into_iter().collect();
    assert!(!calls.is_empty());
    let refused: Vec<&ApiCall> = calls.iter().filter(|c| !grants(role, c)).collect();
    assert!(
        refused.is_empty(),
        "the ClusterRole does not grant {refused:?} (rules: {:?})",
        role.rules
    );
    let called: BTreeSet<(String, String, String)> = calls
        .iter()
        .map(|c| (c.api_group.clone(), c.resource.clone(), c.verb.clone()))
        .collect();
    let unused: BTreeMap<_, _> = granted(role)
        .difference(&called)
        .map(|g| (g.clone(), ()))
        .collect();
    assert!(
        unused.is_empty(),
        "the ClusterRole grants what the proxy never calls: {:?}",
        unused.keys().collect::<Vec<_>>()
    );
}
