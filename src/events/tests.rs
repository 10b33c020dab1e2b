//! The limiter on a clock the tests move by hand (instants given, never
//! read), and the notes each kind of problem gets.

use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::desired::{Protocol, VirtualServer, VirtualServerKey};
use crate::model::{ObjectKind, Problem as FieldProblem, ServiceOf};
use crate::translate::{RefusedAddress, SchedulerProblem};

const MINUTE: Duration = Duration::from_secs(60);

fn web() -> ServiceName {
    ServiceName::new("default", "web")
}

fn problem(service: &ServiceName, note: &str) -> Problem {
    Problem::new(service, None, Reason::InvalidField, note.to_owned())
}

fn limits() -> Limits {
    Limits {
        window: 10 * MINUTE,
        burst: 3,
        refill: 5 * MINUTE,
        capacity: 8,
    }
}

#[test]
fn a_problem_is_created_once_and_its_repeats_update_it_after_the_window() {
    let mut limiter = Limiter::new(limits(), 0x10);
    let t0 = Instant::now();
    let bad = problem(&web(), "spec.ports[0].protocol: unsupported value \"HTTP\"");
    assert_eq!(
        limiter.decide(&bad, t0),
        Decision::Create {
            name: "web.10".into()
        }
    );
    // Seen at every sync, every minute: counted, not posted.
    for minute in 1..10 {
        assert_eq!(
            limiter.decide(&bad, t0 + MINUTE * minute),
            Decision::Repeat,
            "minute {minute}"
        );
    }
    assert_eq!(
        limiter.decide(&bad, t0 + 10 * MINUTE),
        Decision::Patch {
            name: "web.10".into(),
            count: 11
        },
        "a window after the post: the series is updated, not a second Event"
    );
    assert_eq!(limiter.decide(&bad, t0 + 11 * MINUTE), Decision::Repeat);
}

#[test]
fn a_different_note_or_reason_is_a_different_problem() {
    let mut limiter = Limiter::new(limits(), 0);
    let t0 = Instant::now();
    let first = problem(&web(), "spec.type: unsupported value \"Foo\"");
    let other_value = problem(&web(), "spec.type: unsupported value \"Bar\"");
    let other_reason = Problem {
        reason: Reason::ExternalIPRefused,
        ..first.clone()
    };
    let created = |d: Decision| matches!(d, Decision::Create { .. });
    assert!(created(limiter.decide(&first, t0)));
    assert!(created(limiter.decide(&other_value, t0)));
    assert!(created(limiter.decide(&other_reason, t0)));
    assert_eq!(limiter.remembered(), (3, 1));
}

#[test]
fn a_problem_not_seen_for_a_window_is_forgotten_and_created_anew() {
    let mut limiter = Limiter::new(limits(), 0);
    let t0 = Instant::now();
    let bad = problem(&web(), "spec.externalIPs: 127.0.0.1 is a loopback address");
    assert!(matches!(limiter.decide(&bad, t0), Decision::Create { .. }));
    assert_eq!(
        limiter.decide(&bad, t0 + 11 * MINUTE),
        Decision::Create {
            name: "web.1".into()
        }
    );
}

#[test]
fn each_service_has_a_token_bucket_like_client_gos_spam_filter() {
    let mut limiter = Limiter::new(limits(), 0);
    let t0 = Instant::now();
    let api = ServiceName::new("default", "api");
    let posts = |limiter: &mut Limiter, service: &ServiceName, at: Instant, notes: &[&str]| {
        notes
            .iter()
            .map(|n| limiter.decide(&problem(service, n), at))
            .filter(|d| matches!(d, Decision::Create { .. }))
            .count()
    };
    assert_eq!(
        posts(&mut limiter, &web(), t0, &["a", "b", "c", "d", "e"]),
        3,
        "a burst of three"
    );
    assert_eq!(
        posts(&mut limiter, &api, t0, &["a"]),
        1,
        "another service has its own bucket"
    );
    assert_eq!(
        posts(&mut limiter, &web(), t0 + 4 * MINUTE, &["f"]),
        0,
        "no token yet"
    );
    assert_eq!(
        posts(&mut limiter, &web(), t0 + 5 * MINUTE, &["g", "h"]),
        1,
        "one token per five minutes"
    );
    assert_eq!(
        posts(
            &mut limiter,
            &web(),
            t0 + 60 * MINUTE,
            &["i", "j", "k", "l"]
        ),
        3,
        "refilled to the burst, not beyond"
    );
}

#[test]
fn an_update_spends_a_token_and_a_refused_one_still_counts() {
    let mut limiter = Limiter::new(
        Limits {
            burst: 1,
            refill: 15 * MINUTE,
            ..limits()
        },
        0,
    );
    let t0 = Instant::now();
    let bad = problem(&web(), "x");
    assert!(matches!(limiter.decide(&bad, t0), Decision::Create { .. }));
    assert_eq!(
        limiter.decide(&bad, t0 + 10 * MINUTE),
        Decision::RateLimited,
        "the window has passed, but the bucket is empty"
    );
    assert_eq!(
        limiter.decide(&bad, t0 + 15 * MINUTE),
        Decision::Patch {
            name: "web.0".into(),
            count: 3
        },
        "the refused sighting is in the count"
    );
}

#[test]
fn memory_is_bounded_however_many_services_churn() {
    let mut limiter = Limiter::new(limits(), 0);
    let t0 = Instant::now();
    for i in 0..1000u32 {
        let service = ServiceName::new("churn", &format!("s{i}"));
        let at = t0 + Duration::from_secs(i.into());
        assert!(matches!(
            limiter.decide(&problem(&service, "x"), at),
            Decision::Create { .. }
        ));
    }
    assert_eq!(limiter.remembered(), (8, 8));
    // The most recent are the ones kept.
    let last = ServiceName::new("churn", "s999");
    assert_eq!(
        limiter.decide(&problem(&last, "x"), t0 + Duration::from_secs(1000)),
        Decision::Repeat
    );
}

#[test]
fn a_failed_post_is_forgotten_so_the_next_sighting_posts_again() {
    let mut limiter = Limiter::new(limits(), 0);
    let t0 = Instant::now();
    let bad = problem(&web(), "x");
    assert!(matches!(limiter.decide(&bad, t0), Decision::Create { .. }));
    limiter.forget(&bad);
    assert!(matches!(
        limiter.decide(&bad, t0 + MINUTE),
        Decision::Create { .. }
    ));
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    let metrics = Metrics::new();
    let (sender, mut receiver) = mpsc::channel(2);
    let sink = EventSink {
        queue: Some((sender, metrics.clone())),
    };
    for note in ["a", "b", "c", "d"] {
        sink.report(problem(&web(), note));
    }
    let text = metrics.encode();
    assert!(
        text.contains("kube_ipvs_proxy_events_dropped_total{reason=\"queue_full\"} 2"),
        "{text}"
    );
    assert_eq!(receiver.try_recv().map(|p| p.note), Ok("a".to_owned()));
    EventSink::disabled().report(problem(&web(), "nowhere"));
}

fn model_error(kind: ObjectKind, service: Option<ServiceName>) -> ModelError {
    ModelError {
        kind,
        object: "default/web-abc12".into(),
        field: "endpoints[0].addresses[0]".into(),
        problem: FieldProblem::InvalidIp("10.0.0.300".into()),
        service: service.map(|name| Box::new(ServiceOf { name, uid: None })),
    }
}

#[test]
fn a_rejected_slice_is_reported_on_its_service_with_the_field_and_value() {
    let uid = Uid::parse("4f9d7a8e-0c1b-4d2e-9f3a-5b6c7d8e9f01");
    let got =
        Problem::from_model_error(&model_error(ObjectKind::EndpointSlice, Some(web())), |_| {
            uid
        })
        .unwrap();
    assert_eq!(got.service, web());
    assert_eq!(got.uid, uid);
    assert_eq!(got.reason, Reason::InvalidField);
    assert_eq!(
        got.note,
        "EndpointSlice default/web-abc12: endpoints[0].addresses[0]: invalid IP \"10.0.0.300\"; the proxy keeps the last valid version"
    );
    assert_eq!(
        Problem::from_model_error(&model_error(ObjectKind::Node, None), |_| uid),
        None,
        "a Node is no Service's"
    );
}

#[test]
fn translate_warnings_keep_their_field_and_value_without_repeating_the_service() {
    let refused = TranslateError::RefusedAddress {
        service: web(),
        field: "spec.externalIPs",
        value: "127.0.0.1".parse::<IpAddr>().unwrap(),
        reason: RefusedAddress::Loopback,
    };
    let got = Problem::from_translate(&refused, None);
    assert_eq!(got.reason, Reason::ExternalIPRefused);
    assert_eq!(
        got.note,
        "spec.externalIPs: 127.0.0.1 is a loopback address; not serving it (the service's other addresses are)"
    );
    let scheduler = TranslateError::Scheduler {
        service: web(),
        value: "fancy".into(),
        problem: SchedulerProblem::NotOffered(vec!["rr".into()]),
        fallback: "rr".into(),
    };
    let got = Problem::from_translate(&scheduler, None);
    assert_eq!(got.reason, Reason::UnknownScheduler);
    assert!(got.note.contains("\"fancy\""), "{}", got.note);
}

#[test]
fn only_kernel_refusals_of_a_services_virtual_server_are_reported() {
    let key = VirtualServerKey {
        addr: "10.96.0.10".parse().unwrap(),
        protocol: Protocol::Tcp,
        port: 80,
    };
    let add = Op::AddVirtualServer(VirtualServer {
        key,
        scheduler: "fancy".into(),
        persistence: None,
    });
    let failed = |service: Option<ServiceName>, op: &Op, error: KernelError| {
        let error = SyncError::Operation {
            service,
            op: op.clone(),
            error,
        };
        Problem::from_sync_error(&error, None)
    };
    let unknown = failed(
        Some(web()),
        &add,
        KernelError::UnknownScheduler("ENOENT".into()),
    )
    .unwrap();
    assert_eq!(unknown.reason, Reason::UnknownScheduler);
    assert_eq!(
        unknown.note,
        "the kernel has no scheduler \"fancy\" for virtual server TCP/10.96.0.10:80 (annotation kube-ipvs-proxy.io/scheduler): ENOENT"
    );
    let invalid = failed(Some(web()), &add, KernelError::Invalid("EINVAL".into())).unwrap();
    assert_eq!(invalid.reason, Reason::VirtualServerRejected);
    let cases = [
        (
            "a transient error",
            Some(web()),
            add.clone(),
            KernelError::Other("EBUSY".into()),
        ),
        (
            "no service",
            None,
            add.clone(),
            KernelError::Invalid("EINVAL".into()),
        ),
        (
            "a real server",
            Some(web()),
            Op::DeleteVirtualServer(key),
            KernelError::Invalid("EINVAL".into()),
        ),
    ];
    for (name, service, op, error) in cases {
        assert_eq!(failed(service, &op, error), None, "{name}");
    }
}

#[test]
fn a_conflict_names_the_winner_and_the_virtual_server() {
    let key = VirtualServerKey {
        addr: "203.0.113.7".parse().unwrap(),
        protocol: Protocol::Tcp,
        port: 80,
    };
    let lost = ClaimNotice::Lost {
        service: web(),
        key,
        owner: ServiceName::new("other", "old"),
    };
    let got = Problem::from_claim(&lost, None);
    assert_eq!(
        (got.service.clone(), got.reason),
        (web(), Reason::VirtualServerConflict)
    );
    assert!(
        got.note
            .starts_with("virtual server TCP/203.0.113.7:80 is also wanted by Service other/old"),
        "{}",
        got.note
    );
    assert_eq!(Reason::VirtualServerConflict.event_type(), "Warning");
    let handed = ClaimNotice::HandedOver {
        service: web(),
        key,
        from: ServiceName::new("other", "old"),
    };
    assert_eq!(
        Problem::from_claim(&handed, None).reason.event_type(),
        "Normal"
    );
}

#[test]
fn notes_are_cut_to_the_apis_limit_on_a_character_boundary() {
    let long = "é".repeat(MAX_NOTE_BYTES);
    let cut = truncate(long);
    assert!(cut.len() <= MAX_NOTE_BYTES, "{}", cut.len());
    assert!(cut.ends_with('…'));
    assert_eq!(truncate("short".into()), "short");
    let _: Arc<str> = Arc::from(cut);
}

#[test]
fn uids_round_trip_and_only_uuids_are_kept() {
    let text = "4f9d7a8e-0c1b-4d2e-9f3a-5b6c7d8e9f01";
    assert_eq!(
        Uid::parse(text).map(|u| u.to_string()),
        Some(text.to_owned())
    );
    for bad in [
        "",
        "abc",
        "4F9D7A8E-0C1B-4D2E-9F3A-5B6C7D8E9F01",
        "4f9d7a8e00c1b04d2e09f3a05b6c7d8e9f01",
    ] {
        assert_eq!(Uid::parse(bad), None, "{bad:?}");
    }
}
