//! The manifests directory source, as the standalone proxy and `plan` see it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_ipvs_proxy::source::manifests::{
    read_dir, watch_dir, Kinds, ManifestDir, Manifests, Rescan,
};
use kube_ipvs_proxy::source::{EndpointSlice, SourceEvent, Update};

fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: web\n\
         spec:\n  clusterIP: 10.96.0.10\n  ports:\n  - port: {port}\n    protocol: TCP\n"
    )
}

fn slice(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
         namespace: web\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\n\
         endpoints:\n- addresses: [\"{ip}\"]\nports:\n- port: 8080\n"
    )
}

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n";
const ENDPOINTS: &str = "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: legacy\n\
    subsets:\n- addresses:\n  - ip: 10.0.0.9\n  ports:\n  - port: 80\n";
const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\n";

fn write(dir: &Path, name: &str, content: &str) {
    std::fs::write(dir.join(name), content).unwrap();
}

/// What a test compares: kind/namespace/name and, for services, the ports.
fn names(manifests: &Manifests) -> Vec<String> {
    let mut names = Vec::new();
    for s in &manifests.services {
        let ports: Vec<i32> = s
            .spec
            .iter()
            .flat_map(|spec| spec.ports.iter().flatten())
            .map(|p| p.port)
            .collect();
        names.push(format!(
            "Service {}/{} {:?}",
            ns(&s.metadata),
            name(&s.metadata),
            ports
        ));
    }
    for s in &manifests.endpoint_slices {
        names.push(format!(
            "EndpointSlice {}/{}",
            ns(&s.metadata),
            name(&s.metadata)
        ));
    }
    for e in &manifests.endpoints {
        names.push(format!(
            "Endpoints {}/{}",
            ns(&e.metadata),
            name(&e.metadata)
        ));
    }
    for n in &manifests.nodes {
        names.push(format!("Node {}", name(&n.metadata)));
    }
    names
}

fn ns(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("-")
}

fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("-")
}

/// Folds a source's events into lists, as a consumer would see the state:
/// a list replaces a kind, `Apply` replaces an object in place or adds it,
/// `Delete` removes it.
fn fold(state: &mut Manifests, event: SourceEvent) {
    /// `K` is the object or its box, as the event carries it.
    fn put<T, K>(list: &mut Vec<K>, update: Update<K>)
    where
        T: k8s_openapi::Metadata<Ty = ObjectMeta>,
        K: std::borrow::Borrow<T>,
    {
        let same = |a: &K, b: &K| {
            let (a, b) = (a.borrow().metadata(), b.borrow().metadata());
            (&a.namespace, &a.name) == (&b.namespace, &b.name)
        };
        match update {
            Update::ListStart => list.clear(),
            Update::Listed(object) | Update::Apply(object) => {
                match list.iter_mut().find(|o| same(o, &object)) {
                    Some(at) => *at = object,
                    None => list.push(object),
                }
            }
            Update::Delete(object) => list.retain(|o| !same(o, &object)),
            Update::Replace(objects) => *list = objects,
            Update::ListDone => {}
        }
    }
    match event {
        SourceEvent::Service(u) => put::<Service, _>(&mut state.services, u),
        SourceEvent::EndpointSlice(u) => put::<EndpointSlice, _>(&mut state.endpoint_slices, u),
        SourceEvent::Endpoints(u) => put::<Endpoints, _>(&mut state.endpoints, u),
        SourceEvent::Node(u) => put::<Node, _>(&mut state.nodes, u),
        SourceEvent::Synced => {}
    }
}

/// A rescan whose events are folded into `state`.
fn folded_rescan(dir: &mut ManifestDir, state: &mut Manifests) -> Rescan {
    dir.rescan(&mut |event| fold(state, event))
}

#[test]
fn read_dir_reads_every_kind_from_yaml_yml_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let multi = [service("a", 80), slice("a", "10.0.0.1"), NODE.to_owned()].join("---\n");
    write(dir.path(), "10-multi.yaml", &multi);
    write(dir.path(), "20-endpoints.yml", ENDPOINTS);
    let list = serde_json::json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b", "namespace": "web"},
             "spec": {"ports": [{"port": 443}]}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ignored"}},
        ],
    });
    write(dir.path(), "30-list.json", &list.to_string());
    write(
        dir.path(),
        "40-single.json",
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "c", "namespace": "web"}, "spec": {"ports": [{"port": 53}]},
        })
        .to_string(),
    );
    write(dir.path(), "50-other.yaml", DEPLOYMENT);
    // Not manifests: other extensions and hidden (editor temporary) files.
    write(dir.path(), "README.md", &service("readme", 1));
    write(dir.path(), ".hidden.yaml", &service("hidden", 2));
    write(dir.path(), "60-svc.yaml.swp", &service("swap", 3));

    let (manifests, errors) = read_dir(dir.path());

    assert_eq!(errors, vec![]);
    assert_eq!(
        names(&manifests),
        [
            "Service web/a [80]",
            "Service web/b [443]",
            "Service web/c [53]",
            "EndpointSlice web/a",
            // No namespace in the file: `default`, as kubectl applies it.
            "Endpoints default/legacy",
            "Node node-1",
        ]
    );
}

#[test]
fn read_dir_reports_the_file_and_document_of_each_bad_document() {
    struct Case {
        name: &'static str,
        document: String,
        error: &'static str,
        /// What the bad document still yields: a list's good items.
        loaded: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "field of the wrong type",
            document: service("x", 80).replace("port: 80", "port: eighty"),
            error: "document 2: spec.ports[0].port: invalid type: string \"eighty\", expected i32",
            loaded: &[],
        },
        Case {
            name: "no kind",
            document: "apiVersion: v1\nmetadata:\n  name: x\n".to_owned(),
            error: "document 2: kind: missing",
            loaded: &[],
        },
        Case {
            name: "kind not a string",
            document: "apiVersion: v1\nkind: [Service]\n".to_owned(),
            error: "document 2: kind: expected a string, found a sequence",
            loaded: &[],
        },
        Case {
            name: "no name",
            document: "apiVersion: v1\nkind: Service\nmetadata: {}\n".to_owned(),
            error: "document 2: metadata.name: missing",
            loaded: &[],
        },
        Case {
            name: "not a mapping",
            document: "- just\n- a list\n".to_owned(),
            error: "document 2: expected an object with apiVersion and kind, found a sequence",
            loaded: &[],
        },
        Case {
            name: "bad item of a list",
            document: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  \
                       metadata: {name: n}\n- apiVersion: v1\n  kind: Service\n  \
                       metadata: {name: s}\n  spec: {ports: [{port: x}]}\n"
                .to_owned(),
            error: "document 2: items[1] (Service default/s): spec.ports[0].port: \
                    invalid type: string \"x\", expected i32",
            loaded: &["Node n"],
        },
        Case {
            // Document 2 starts at the `---` on line 11 of the file; the
            // unclosed sequence opens on line 13 and the document ends at 14.
            name: "YAML syntax error, lines counted in the file",
            document: "apiVersion: v1\nkind: [Service\n".to_owned(),
            error: "document 2: did not find expected ',' or ']' at line 14 column 1, \
                    while parsing a flow sequence at line 13 column 7",
            loaded: &[],
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let text = [service("good-1", 80), case.document, service("good-3", 82)].join("---\n");
        write(dir.path(), "x.yaml", &text);

        let (manifests, errors) = read_dir(dir.path());

        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 1, "{}: {messages:?}", case.name);
        let expected = format!("{}: {}", dir.path().join("x.yaml").display(), case.error);
        assert!(
            messages[0].starts_with(&expected),
            "{}: {} does not start with {expected}",
            case.name,
            messages[0]
        );
        assert_eq!(errors[0].document, Some(2), "{}", case.name);
        let mut expected = vec!["Service web/good-1 [80]", "Service web/good-3 [82]"];
        expected.extend(case.loaded);
        assert_eq!(
            names(&manifests),
            expected,
            "{}: the other documents are applied",
            case.name
        );
    }
}

#[test]
fn read_dir_of_a_missing_directory_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let (manifests, errors) = read_dir(&missing);
    assert_eq!(manifests, Manifests::default());
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, missing);
    assert!(
        errors[0].to_string().contains("cannot list the directory"),
        "{}",
        errors[0]
    );
}

#[test]
fn an_object_defined_twice_is_read_once_from_the_later_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &service("dup", 80));
    write(dir.path(), "b.yaml", &service("dup", 8080));
    let (manifests, errors) = read_dir(dir.path());
    assert_eq!(errors, vec![]);
    assert_eq!(names(&manifests), ["Service web/dup [8080]"]);
}

#[test]
fn a_broken_document_keeps_its_last_good_objects_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let file = |second_port: &str| {
        [
            service("first", 80),
            service("second", 81).replace("81", second_port),
        ]
        .join("---\n")
    };
    write(dir.path(), "x.yaml", &file("81"));
    let mut state = ManifestDir::new(dir.path().to_path_buf());
    let mut seen = Manifests::default();
    assert!(folded_rescan(&mut state, &mut seen).errors.is_empty());

    // The first document changes, the second breaks.
    write(
        dir.path(),
        "x.yaml",
        &file("eighty-one").replace("port: 80", "port: 90"),
    );
    let rescan = folded_rescan(&mut state, &mut seen);
    assert_eq!(rescan.errors.len(), 1);
    assert_eq!(rescan.errors[0].document, Some(2));
    assert_eq!(
        rescan.changed,
        Kinds {
            services: true,
            ..Kinds::default()
        }
    );
    assert_eq!(
        names(&seen),
        ["Service web/first [90]", "Service web/second [81]"]
    );

    // Content that cannot be read at all keeps the whole file's objects.
    std::fs::write(dir.path().join("x.yaml"), b"\xff\xfe not UTF-8").unwrap();
    let rescan = folded_rescan(&mut state, &mut seen);
    assert_eq!(rescan.errors.len(), 1);
    assert_eq!(rescan.errors[0].document, None);
    assert!(rescan.changed.is_empty());
    assert_eq!(
        names(&seen),
        ["Service web/first [90]", "Service web/second [81]"]
    );

    // Fixed.
    write(dir.path(), "x.yaml", &file("82"));
    let rescan = folded_rescan(&mut state, &mut seen);
    assert!(rescan.errors.is_empty());
    assert_eq!(
        names(&seen),
        ["Service web/first [80]", "Service web/second [82]"]
    );
}

#[test]
fn a_rescan_reports_only_the_kinds_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "svc.yaml", &service("a", 80));
    write(dir.path(), "slice.yaml", &slice("a", "10.0.0.1"));
    write(dir.path(), "node.yaml", NODE);
    let mut state = ManifestDir::new(dir.path().to_path_buf());
    let mut seen = Manifests::default();
    assert_eq!(
        folded_rescan(&mut state, &mut seen).changed,
        Kinds {
            services: true,
            endpoint_slices: true,
            nodes: true,
            endpoints: false
        }
    );

    struct Step {
        name: &'static str,
        change: Box<dyn Fn(&Path)>,
        changed: Kinds,
    }
    let steps = [
        Step {
            name: "nothing changed",
            change: Box::new(|_| {}),
            changed: Kinds::default(),
        },
        Step {
            name: "same content written again",
            change: Box::new(|d| write(d, "svc.yaml", &service("a", 80))),
            changed: Kinds::default(),
        },
        Step {
            name: "a comment added",
            change: Box::new(|d| {
                write(
                    d,
                    "svc.yaml",
                    &format!("# owner: team\n{}", service("a", 80)),
                )
            }),
            changed: Kinds::default(),
        },
        Step {
            name: "an endpoint moved",
            change: Box::new(|d| write(d, "slice.yaml", &slice("a", "10.0.0.2"))),
            changed: Kinds {
                endpoint_slices: true,
                ..Kinds::default()
            },
        },
        Step {
            name: "the node file removed",
            change: Box::new(|d| std::fs::remove_file(d.join("node.yaml")).unwrap()),
            changed: Kinds {
                nodes: true,
                ..Kinds::default()
            },
        },
    ];
    for step in steps {
        (step.change)(dir.path());
        let rescan = folded_rescan(&mut state, &mut seen);
        assert!(
            rescan.errors.is_empty(),
            "{}: {:?}",
            step.name,
            rescan.errors
        );
        assert_eq!(rescan.changed, step.changed, "{}", step.name);
    }
}

/// The next event from the stream; the timeout only guards against a hang.
async fn next(events: &mut (impl Stream<Item = SourceEvent> + Unpin)) -> SourceEvent {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("no event within 10 s")
        .expect("the stream never ends")
}

/// The services once the next event about services is folded into
/// `state`, as names.
async fn next_services(
    events: &mut (impl Stream<Item = SourceEvent> + Unpin),
    state: &mut Manifests,
) -> Vec<String> {
    loop {
        let event = next(events).await;
        let services = matches!(event, SourceEvent::Service(_));
        fold(state, event);
        if services {
            return names(&Manifests {
                services: state.services.clone(),
                ..Manifests::default()
            });
        }
    }
}

/// Waits for the services to become `expected`: a plain write may be seen
/// half done and show an intermediate state first.
async fn services_become(
    events: &mut (impl Stream<Item = SourceEvent> + Unpin),
    state: &mut Manifests,
    expected: &[&str],
) {
    loop {
        if next_services(events, state).await == expected {
            return;
        }
    }
}

/// Folds events into `state` up to `Synced`; returns the list markers seen,
/// sorted.
async fn initial_read(
    events: &mut (impl Stream<Item = SourceEvent> + Unpin),
    state: &mut Manifests,
) -> Vec<String> {
    fn marker<K>(kind: &str, update: &Update<K>) -> Option<String> {
        match update {
            Update::ListStart => Some(format!("{kind} ListStart")),
            Update::ListDone => Some(format!("{kind} ListDone")),
            Update::Replace(_) => Some(format!("{kind} Replace")),
            _ => None,
        }
    }
    let mut markers = Vec::new();
    loop {
        let event = next(events).await;
        markers.extend(match &event {
            SourceEvent::Service(u) => marker("Service", u),
            SourceEvent::EndpointSlice(u) => marker("EndpointSlice", u),
            SourceEvent::Endpoints(u) => marker("Endpoints", u),
            SourceEvent::Node(u) => marker("Node", u),
            SourceEvent::Synced => break,
        });
        fold(state, event);
    }
    markers.sort();
    markers
}

fn replace_atomically(dir: &Path, name: &str, content: &str) {
    // As editors and `kubectl cp` do: a hidden temporary file, then a rename.
    let temporary: PathBuf = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, content).unwrap();
    std::fs::rename(&temporary, dir.join(name)).unwrap();
}

#[tokio::test]
async fn watch_dir_follows_files_added_edited_renamed_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &service("a", 80));
    write(dir.path(), "node.yaml", NODE);
    let mut events = Box::pin(watch_dir(dir.path().to_path_buf()));

    // The initial read: a list of every kind, then Synced.
    let mut state = Manifests::default();
    assert_eq!(
        initial_read(&mut events, &mut state).await,
        [
            "EndpointSlice ListDone",
            "EndpointSlice ListStart",
            "Endpoints ListDone",
            "Endpoints ListStart",
            "Node ListDone",
            "Node ListStart",
            "Service ListDone",
            "Service ListStart",
        ]
    );
    assert_eq!(names(&state), ["Service web/a [80]", "Node node-1"]);

    replace_atomically(dir.path(), "b.yaml", &service("b", 443));
    assert_eq!(
        next_services(&mut events, &mut state).await,
        ["Service web/a [80]", "Service web/b [443]"],
        "added"
    );

    replace_atomically(dir.path(), "a.yaml", &service("a", 8080));
    assert_eq!(
        next_services(&mut events, &mut state).await,
        ["Service web/a [8080]", "Service web/b [443]"],
        "edited by rename"
    );

    write(dir.path(), "a.yaml", &service("a", 9090));
    services_become(
        &mut events,
        &mut state,
        &["Service web/a [9090]", "Service web/b [443]"],
    )
    .await;

    std::fs::rename(dir.path().join("b.yaml"), dir.path().join("c.yaml")).unwrap();
    assert_eq!(
        next_services(&mut events, &mut state).await,
        ["Service web/a [9090]", "Service web/b [443]"],
        "renamed"
    );

    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    assert_eq!(
        next_services(&mut events, &mut state).await,
        ["Service web/b [443]"],
        "removed"
    );

    // A document that breaks keeps its objects; the next change elsewhere
    // shows them still there.
    replace_atomically(
        dir.path(),
        "c.yaml",
        &service("b", 443).replace("443", "https"),
    );
    replace_atomically(dir.path(), "d.yaml", &service("d", 53));
    assert_eq!(
        next_services(&mut events, &mut state).await,
        ["Service web/b [443]", "Service web/d [53]"],
        "broken kept"
    );
}

#[tokio::test]
async fn watch_dir_waits_for_a_missing_directory_before_syncing() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("later");
    let mut events = Box::pin(watch_dir(dir.clone()));

    std::fs::create_dir(&dir).unwrap();
    write(&dir, "a.yaml", &service("a", 80));

    // Nothing is synced from a directory that could not be read (that would
    // withdraw every service); once it exists, its content is the first state.
    let mut state = Manifests::default();
    let markers = initial_read(&mut events, &mut state).await;
    assert!(
        markers.contains(&"Service ListDone".to_owned()),
        "a list of services before Synced: {markers:?}"
    );
    let services = names(&state);
    assert!(
        services.is_empty() || services == ["Service web/a [80]"],
        "{services:?}"
    );
    if services.is_empty() {
        assert_eq!(
            next_services(&mut events, &mut state).await,
            ["Service web/a [80]"]
        );
    }
}

/// An object event as the rescan tests compare it: `Apply Service web/a
/// [80]`, `Delete Service web/a`. List markers are left out.
fn describe(event: &SourceEvent) -> Option<String> {
    /// `K` is the object or its box, as the event carries it.
    fn object<T, K>(kind: &str, update: &Update<K>, detail: impl Fn(&T) -> String) -> Option<String>
    where
        T: k8s_openapi::Metadata<Ty = ObjectMeta>,
        K: std::borrow::Borrow<T>,
    {
        let (verb, object) = match update {
            Update::Listed(o) => ("Listed", o),
            Update::Apply(o) => ("Apply", o),
            Update::Delete(o) => {
                let meta = o.borrow().metadata();
                return Some(format!("Delete {kind} {}/{}", ns(meta), name(meta)));
            }
            Update::Replace(_) => return Some(format!("Replace {kind}")),
            Update::ListStart | Update::ListDone => return None,
        };
        let object = object.borrow();
        let meta = object.metadata();
        Some(format!(
            "{verb} {kind} {}/{}{}",
            ns(meta),
            name(meta),
            detail(object)
        ))
    }
    match event {
        SourceEvent::Service(u) => object("Service", u, |s: &Service| {
            let ports: Vec<i32> = (s.spec.iter())
                .flat_map(|spec| spec.ports.iter().flatten())
                .map(|p| p.port)
                .collect();
            format!(" {ports:?}")
        }),
        SourceEvent::EndpointSlice(u) => {
            object::<EndpointSlice, _>("EndpointSlice", u, |_| String::new())
        }
        SourceEvent::Endpoints(u) => object::<Endpoints, _>("Endpoints", u, |_| String::new()),
        SourceEvent::Node(u) => object::<Node, _>("Node", u, |_| String::new()),
        SourceEvent::Synced => Some("Synced".to_owned()),
    }
}

/// A rescan's object events, in order, and its errors.
fn rescan_events(dir: &mut ManifestDir) -> (Vec<String>, Vec<String>) {
    let mut events = Vec::new();
    let rescan = dir.rescan(&mut |event| events.extend(describe(&event)));
    let errors = rescan.errors.iter().map(ToString::to_string).collect();
    (events, errors)
}

/// How a test lays its services out in the directory.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// One YAML file, one document per service.
    Documents,
    /// One file per service.
    Files,
    /// One YAML `List`, its items at the column of `items:`.
    YamlList,
    /// One YAML `List`, its items indented under `items:`.
    YamlListIndented,
    /// One JSON `List`, keys sorted as serde_json writes them.
    JsonList,
}

/// A service as a JSON value, for JSON lists.
fn service_json(name: &str, port: u16) -> serde_json::Value {
    serde_yaml_ng::from_str(&service(name, port)).unwrap()
}

/// A YAML `List` of `items` (YAML documents), its `-` at column `indent`.
fn yaml_list(items: &[String], indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut text = "apiVersion: v1\nkind: List\nitems:\n".to_owned();
    for item in items {
        for (index, line) in item.lines().enumerate() {
            let marker = if index == 0 { "- " } else { "  " };
            text.push_str(&format!("{pad}{marker}{line}\n"));
        }
        text.push_str(&format!("{pad}# end of an item\n"));
    }
    text.push_str("metadata:\n  resourceVersion: \"\"\n");
    text
}

/// Makes the directory hold exactly `services` in `layout`.
fn lay_out(dir: &Path, layout: Layout, services: &[(&str, u16)]) {
    let mut files: Vec<(String, String)> = Vec::new();
    let texts = || {
        services
            .iter()
            .map(|(n, p)| service(n, *p))
            .collect::<Vec<_>>()
    };
    match layout {
        Layout::Documents => files.push(("all.yaml".into(), texts().join("---\n"))),
        Layout::Files => {
            for (name, port) in services {
                files.push((format!("svc-{name}.yaml"), service(name, *port)));
            }
        }
        Layout::YamlList => files.push(("list.yaml".into(), yaml_list(&texts(), 0))),
        Layout::YamlListIndented => files.push(("list.yaml".into(), yaml_list(&texts(), 2))),
        Layout::JsonList => {
            let items: Vec<_> = services.iter().map(|(n, p)| service_json(n, *p)).collect();
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            files.push((
                "list.json".into(),
                serde_json::to_string_pretty(&list).unwrap(),
            ));
        }
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !files.iter().any(|(file, _)| *file == name) {
            std::fs::remove_file(path).unwrap();
        }
    }
    for (name, text) in files {
        write(dir, &name, &text);
    }
}

#[test]
fn a_rescan_emits_exactly_the_objects_that_changed_in_every_layout() {
    for layout in [
        Layout::Documents,
        Layout::Files,
        Layout::YamlList,
        Layout::YamlListIndented,
        Layout::JsonList,
    ] {
        let dir = tempfile::tempdir().unwrap();
        lay_out(dir.path(), layout, &[("a", 80), ("b", 81), ("c", 82)]);
        let mut state = ManifestDir::new(dir.path().to_path_buf());
        assert_eq!(
            rescan_events(&mut state),
            (
                vec![
                    "Listed Service web/a [80]".to_owned(),
                    "Listed Service web/b [81]".to_owned(),
                    "Listed Service web/c [82]".to_owned(),
                ],
                vec![]
            ),
            "{layout:?}: the first read lists every object"
        );

        struct Step {
            name: &'static str,
            services: &'static [(&'static str, u16)],
            events: &'static [&'static str],
        }
        let steps = [
            Step {
                name: "one object edited",
                services: &[("a", 80), ("b", 8081), ("c", 82)],
                events: &["Apply Service web/b [8081]"],
            },
            Step {
                name: "one object removed",
                services: &[("a", 80), ("b", 8081)],
                events: &["Delete Service web/c"],
            },
            Step {
                name: "one object added",
                services: &[("a", 80), ("b", 8081), ("d", 83)],
                events: &["Apply Service web/d [83]"],
            },
            Step {
                name: "the same content written again",
                services: &[("a", 80), ("b", 8081), ("d", 83)],
                events: &[],
            },
            Step {
                name: "one edited and one removed at once",
                services: &[("a", 90), ("d", 83)],
                events: &["Apply Service web/a [90]", "Delete Service web/b"],
            },
        ];
        for step in steps {
            lay_out(dir.path(), layout, step.services);
            let (events, errors) = rescan_events(&mut state);
            assert_eq!(errors, Vec::<String>::new(), "{layout:?}: {}", step.name);
            assert_eq!(events, step.events, "{layout:?}: {}", step.name);
        }
    }
}

#[test]
fn an_object_defined_twice_comes_back_from_the_other_copy_when_one_goes() {
    let dir = tempfile::tempdir().unwrap();
    let a = |dup_port: Option<u16>| {
        let mut documents = vec![service("x", 1)];
        documents.extend(dup_port.map(|port| service("dup", port)));
        write(dir.path(), "10-a.yaml", &documents.join("---\n"));
    };
    let b = |items: &[(&str, u16)]| {
        let items: Vec<_> = items.iter().map(|(n, p)| service_json(n, *p)).collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        write(dir.path(), "20-b.json", &list.to_string());
    };
    let remove_b = || std::fs::remove_file(dir.path().join("20-b.json")).unwrap();
    a(Some(80));
    b(&[("dup", 8080), ("y", 2)]);
    let mut state = ManifestDir::new(dir.path().to_path_buf());
    let (events, errors) = rescan_events(&mut state);
    assert_eq!(errors, Vec::<String>::new());
    // Read in file order; the later definition is the one left in force.
    assert_eq!(
        events,
        [
            "Listed Service web/x [1]",
            "Listed Service web/dup [80]",
            "Listed Service web/dup [8080]",
            "Listed Service web/y [2]",
        ]
    );

    struct Step<'a> {
        name: &'static str,
        change: Box<dyn Fn() + 'a>,
        events: &'static [&'static str],
    }
    let steps = [
        Step {
            name: "the copy not in force edited",
            change: Box::new(|| a(Some(90))),
            events: &[],
        },
        Step {
            name: "the copy in force goes: the other one is applied, and nothing else",
            change: Box::new(remove_b),
            events: &["Delete Service web/y", "Apply Service web/dup [90]"],
        },
        Step {
            name: "a later copy comes back",
            change: Box::new(|| b(&[("dup", 8080)])),
            events: &["Apply Service web/dup [8080]"],
        },
        Step {
            name: "the earlier copy goes",
            change: Box::new(|| a(None)),
            events: &[],
        },
        Step {
            name: "the last copy goes",
            change: Box::new(remove_b),
            events: &["Delete Service web/dup"],
        },
        Step {
            name: "twice in one list: the later item wins",
            change: Box::new(|| b(&[("dup", 1), ("dup", 2)])),
            events: &["Apply Service web/dup [1]", "Apply Service web/dup [2]"],
        },
        Step {
            name: "the later item goes: the earlier is applied",
            change: Box::new(|| b(&[("dup", 1)])),
            events: &["Apply Service web/dup [1]"],
        },
    ];
    for step in steps {
        (step.change)();
        let (events, errors) = rescan_events(&mut state);
        assert_eq!(errors, Vec::<String>::new(), "{}", step.name);
        assert_eq!(events, step.events, "{}", step.name);
    }
}

#[test]
fn a_bad_list_item_is_named_and_keeps_its_last_good_definition() {
    for layout in [Layout::YamlList, Layout::JsonList] {
        let dir = tempfile::tempdir().unwrap();
        lay_out(dir.path(), layout, &[("a", 80), ("b", 81), ("c", 82)]);
        let file = std::fs::read_dir(dir.path()).unwrap().next().unwrap();
        let file = file.unwrap().path();
        let mut state = ManifestDir::new(dir.path().to_path_buf());
        assert_eq!(rescan_events(&mut state).0.len(), 3, "{layout:?}");

        // a breaks, b changes and c goes, all at once.
        lay_out(dir.path(), layout, &[("a", 80), ("b", 91)]);
        let text = std::fs::read_to_string(&file).unwrap();
        write(
            dir.path(),
            file.file_name().unwrap().to_str().unwrap(),
            &text.replacen("80", "\"eighty\"", 1),
        );
        let (events, errors) = rescan_events(&mut state);
        assert_eq!(events, ["Apply Service web/b [91]"], "{layout:?}");
        assert_eq!(
            errors,
            [format!(
                "{}: document 1: items[0] (Service web/a): spec.ports[0].port: \
                 invalid type: string \"eighty\", expected i32",
                file.display()
            )],
            "{layout:?}"
        );
        // While the list has an error, what it no longer defines may be the
        // broken item itself: c stays until the list reads in full.
        lay_out(dir.path(), layout, &[("a", 90), ("b", 91)]);
        let (events, errors) = rescan_events(&mut state);
        assert_eq!(errors, Vec::<String>::new(), "{layout:?}");
        assert_eq!(
            events,
            ["Apply Service web/a [90]", "Delete Service web/c"],
            "{layout:?}"
        );
    }
}

#[test]
fn an_object_defined_twice_in_one_file_follows_its_last_document() {
    let dir = tempfile::tempdir().unwrap();
    let file = |documents: &[(&str, u16)]| {
        let texts: Vec<_> = documents.iter().map(|(n, p)| service(n, *p)).collect();
        write(dir.path(), "a.yaml", &texts.join("---\n"));
    };
    file(&[("dup", 1), ("x", 5), ("dup", 2)]);
    let mut state = ManifestDir::new(dir.path().to_path_buf());
    assert_eq!(
        rescan_events(&mut state).0,
        [
            "Listed Service web/dup [1]",
            "Listed Service web/x [5]",
            "Listed Service web/dup [2]",
        ]
    );
    struct Step {
        name: &'static str,
        documents: &'static [(&'static str, u16)],
        events: &'static [&'static str],
    }
    let steps = [
        Step {
            name: "another object edited: the copies are not emitted",
            documents: &[("dup", 1), ("x", 6), ("dup", 2)],
            events: &["Apply Service web/x [6]"],
        },
        Step {
            name: "the later copy edited",
            documents: &[("dup", 1), ("x", 6), ("dup", 3)],
            events: &["Apply Service web/dup [3]"],
        },
        Step {
            name: "the earlier copy edited: the later is still in force",
            documents: &[("dup", 4), ("x", 6), ("dup", 3)],
            events: &[],
        },
        Step {
            name: "the later copy's document removed: the earlier comes back",
            documents: &[("dup", 4), ("x", 6)],
            events: &["Apply Service web/dup [4]"],
        },
        Step {
            name: "a document inserted before the others: nothing else emitted",
            documents: &[("y", 7), ("dup", 4), ("x", 6)],
            events: &["Apply Service web/y [7]"],
        },
    ];
    for step in steps {
        file(step.documents);
        let (events, errors) = rescan_events(&mut state);
        assert_eq!(errors, Vec::<String>::new(), "{}", step.name);
        assert_eq!(events, step.events, "{}", step.name);
    }
}
