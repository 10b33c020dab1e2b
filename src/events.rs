//! Kubernetes Events on the Services the proxy cannot program as asked: a
//! rejected field, a refused external IP, a scheduler the node lacks, two
//! services wanting one virtual server. `kubectl describe service` then
//! shows the operator what the node's log says, naming the field and the
//! value.
//!
//! As upstream kube-proxy, Events are `events.k8s.io/v1`, from the
//! reporting controller `kube-ipvs-proxy` with the node's name as the
//! instance. They never hold up the sync loop: the loop hands each problem
//! to a bounded queue ([`EventSink::report`]; a full queue drops and counts),
//! and a background task decides and posts. What it posts is limited as
//! client-go's event recorder limits it ([`Limiter`]):
//! - one Event per distinct problem (service, reason, note): a repeat within
//!   [`Limits::window`] is counted, not posted; a repeat after it updates the
//!   Event's `series` (a PATCH) rather than creating another;
//! - a token bucket per Service (client-go's spam filter: a burst of 25, then
//!   one every five minutes);
//! - both maps bounded by [`Limits::capacity`], the least recently seen
//!   entry evicted first, so churn cannot grow memory.
//!
//! Only the in-cluster source posts; `--manifests` mode logs, as before.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::mpsc;

use crate::desired::{Op, ServiceName};
use crate::kernel::KernelError;
use crate::metrics::Metrics;
use crate::model::{ModelError, Uid};
use crate::reconcile::{ClaimNotice, OpDescription, SyncError};
use crate::source::kube::error_chain;
use crate::translate::TranslateError;

/// `reportingController` of every Event the proxy posts.
pub const REPORTING_CONTROLLER: &str = "kube-ipvs-proxy";

/// The API's limit on an Event's note (1 kB).
const MAX_NOTE_BYTES: usize = 1024;

/// How many problems may wait for the background task before new ones are
/// dropped (and counted).
const QUEUE: usize = 256;

/// Why an Event is posted: its `reason`, stable so that an operator can
/// select on it (`kubectl get events --field-selector reason=…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A field the model rejected; the Service's last valid version (if
    /// any) stays in force.
    InvalidField,
    /// An ExternalIP or LoadBalancer IP the node will not serve.
    ExternalIPRefused,
    /// A scheduler the annotation names that the kernel does not offer.
    UnknownScheduler,
    /// An SCTP port on a node that cannot load the `sctp` module.
    SCTPUnavailable,
    /// The kernel refused a virtual server for another reason.
    VirtualServerRejected,
    /// Another Service, older, holds a virtual server this one wants.
    VirtualServerConflict,
    /// This Service now holds a virtual server the older owner let go of.
    VirtualServerHandedOver,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidField => "InvalidField",
            Reason::ExternalIPRefused => "ExternalIPRefused",
            Reason::UnknownScheduler => "UnknownScheduler",
            Reason::SCTPUnavailable => "SCTPUnavailable",
            Reason::VirtualServerRejected => "VirtualServerRejected",
            Reason::VirtualServerConflict => "VirtualServerConflict",
            Reason::VirtualServerHandedOver => "VirtualServerHandedOver",
        }
    }

    /// `Warning` for a problem, `Normal` for one resolved.
    pub fn event_type(self) -> &'static str {
        match self {
            Reason::VirtualServerHandedOver => "Normal",
            _ => "Warning",
        }
    }

    /// The Event's `action`: what the proxy was doing.
    fn action(self) -> &'static str {
        match self {
            Reason::InvalidField => "Read",
            Reason::VirtualServerConflict | Reason::VirtualServerHandedOver => "Claim",
            _ => "Program",
        }
    }
}

/// One thing about one Service that the proxy could not do as asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Problem {
    pub service: ServiceName,
    /// The Service's `metadata.uid`, when known: `kubectl describe` shows
    /// only the Events whose reference carries it.
    pub uid: Option<Uid>,
    pub reason: Reason,
    /// Names the field and the value.
    pub note: String,
}

impl Problem {
    fn new(service: &ServiceName, uid: Option<Uid>, reason: Reason, note: String) -> Problem {
        Problem {
            service: service.clone(),
            uid,
            reason,
            note: truncate(note),
        }
    }

    /// A rejected object that belongs to a Service (the Service itself, its
    /// EndpointSlice or its Endpoints); `None` for a Node or a nameless one.
    /// `uid_of` finds the uid of a Service the error does not carry.
    pub fn from_model_error(
        error: &ModelError,
        uid_of: impl FnOnce(&ServiceName) -> Option<Uid>,
    ) -> Option<Problem> {
        let service = &error.service.as_deref()?.name;
        let uid = error.service.as_deref()?.uid.or_else(|| uid_of(service));
        let note = format!(
            "{} {}: {}: {}; the proxy keeps the last valid version",
            error.kind, error.object, error.field, error.problem
        );
        Some(Problem::new(service, uid, Reason::InvalidField, note))
    }

    /// What translate worked around for a Service.
    pub fn from_translate(warning: &TranslateError, uid: Option<Uid>) -> Problem {
        let (service, reason) = match warning {
            TranslateError::Scheduler { service, .. } => (service, Reason::UnknownScheduler),
            TranslateError::RefusedAddress { service, .. } => (service, Reason::ExternalIPRefused),
            TranslateError::SctpUnavailable { service, .. } => (service, Reason::SCTPUnavailable),
        };
        // The message names the service first; the Event is on it already.
        let text = warning.to_string();
        let prefix = format!("Service {service}: ");
        let note = text.strip_prefix(&prefix).unwrap_or(&text).to_owned();
        Problem::new(service, uid, reason, note)
    }

    /// A change in who holds a contested virtual server.
    pub fn from_claim(notice: &ClaimNotice, uid: Option<Uid>) -> Problem {
        match notice {
            ClaimNotice::Lost {
                service,
                key,
                owner,
            } => Problem::new(
                service,
                uid,
                Reason::VirtualServerConflict,
                format!(
                    "virtual server {key} is also wanted by Service {owner}, which was created earlier (or, created in the same second, sorts first by namespace/name) and holds it; this Service is not served there"
                ),
            ),
            ClaimNotice::HandedOver { service, key, from } => Problem::new(
                service,
                uid,
                Reason::VirtualServerHandedOver,
                format!("virtual server {key} now serves this Service: Service {from}, which held it, let it go"),
            ),
        }
    }

    /// A kernel refusal of a Service's virtual server, which retrying will
    /// not cure; `None` for every other sync error.
    pub fn from_sync_error(error: &SyncError, uid: Option<Uid>) -> Option<Problem> {
        let SyncError::Operation {
            service: Some(service),
            op: op @ (Op::AddVirtualServer(vs) | Op::UpdateVirtualServer(vs)),
            error,
        } = error
        else {
            return None;
        };
        let (reason, note) = match error {
            KernelError::UnknownScheduler(detail) => (
                Reason::UnknownScheduler,
                format!(
                    "the kernel has no scheduler {:?} for virtual server {} (annotation {}): {detail}",
                    &*vs.scheduler,
                    vs.key,
                    crate::model::SCHEDULER_ANNOTATION
                ),
            ),
            KernelError::Invalid(detail) => (
                Reason::VirtualServerRejected,
                format!("the kernel refused to {}: {detail}", OpDescription(op)),
            ),
            _ => return None,
        };
        Some(Problem::new(service, uid, reason, note))
    }
}

/// Cuts a note to the API's limit, on a character boundary.
fn truncate(mut note: String) -> String {
    if note.len() > MAX_NOTE_BYTES {
        let mut end = MAX_NOTE_BYTES - '…'.len_utf8();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

/// How much the proxy posts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A repeat of a problem within this time of its last post is counted,
    /// not posted; a problem not seen for this long is forgotten.
    pub window: Duration,
    /// Events a Service may have posted at once (client-go: 25).
    pub burst: u32,
    /// One more Event per Service after each of these (client-go: 5 min).
    pub refill: Duration,
    /// Problems, and Services, remembered at most.
    pub capacity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            window: Duration::from_secs(10 * 60),
            burst: 25,
            refill: Duration::from_secs(5 * 60),
            capacity: 4096,
        }
    }
}

/// What to do with one sighting of a problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Create an Event of this name.
    Create { name: String },
    /// Update the Event of this name: the problem was seen `count` times.
    Patch { name: String, count: i32 },
    /// Posted recently: counted only.
    Repeat,
    /// The Service has posted too much lately: dropped.
    RateLimited,
}

#[derive(Clone, Debug)]
struct Posted {
    name: String,
    count: i32,
    written: Instant,
    seen: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    refilled: Instant,
    used: Instant,
}

/// Decides, for each sighting of a problem, whether and how to post it; a
/// pure function of the sightings and the times given.
#[derive(Debug)]
pub struct Limiter {
    limits: Limits,
    problems: HashMap<(ServiceName, Reason, String), Posted>,
    buckets: HashMap<ServiceName, Bucket>,
    /// Event names are `<service>.<hex>`, the hex counting up from a seed.
    next_name: u64,
}

impl Limiter {
    /// `name_seed` starts the names' suffixes (the wall clock's nanoseconds,
    /// as client-go's, so that a restart does not reuse a name).
    pub fn new(limits: Limits, name_seed: u64) -> Limiter {
        Limiter {
            limits,
            problems: HashMap::new(),
            buckets: HashMap::new(),
            next_name: name_seed,
        }
    }

    /// One sighting of `problem` at `now`.
    pub fn decide(&mut self, problem: &Problem, now: Instant) -> Decision {
        let key = (
            problem.service.clone(),
            problem.reason,
            problem.note.clone(),
        );
        let window = self.limits.window;
        let fresh = self
            .problems
            .get(&key)
            .filter(|p| now.saturating_duration_since(p.seen) <= window)
            .map(|p| now.saturating_duration_since(p.written) < window);
        if let Some(fresh) = fresh {
            if let Some(posted) = self.problems.get_mut(&key) {
                posted.count = posted.count.saturating_add(1);
                posted.seen = now;
            }
            if fresh {
                return Decision::Repeat;
            }
            if !self.take_token(&problem.service, now) {
                return Decision::RateLimited;
            }
            if let Some(posted) = self.problems.get_mut(&key) {
                posted.written = now;
                return Decision::Patch {
                    name: posted.name.clone(),
                    count: posted.count,
                };
            }
        }
        if !self.take_token(&problem.service, now) {
            return Decision::RateLimited;
        }
        let mut name = String::with_capacity(problem.service.name.len() + 17);
        let _ = write!(name, "{}.{:x}", problem.service.name, self.next_name);
        self.next_name = self.next_name.wrapping_add(1);
        // A stale entry of the same problem is replaced, not counted.
        self.problems.remove(&key);
        evict_oldest(&mut self.problems, self.limits.capacity, |p| p.seen);
        self.problems.insert(
            key,
            Posted {
                name: name.clone(),
                count: 1,
                written: now,
                seen: now,
            },
        );
        Decision::Create { name }
    }

    /// Forgets `problem`, whose post failed: its next sighting posts again.
    pub fn forget(&mut self, problem: &Problem) {
        let key = (
            problem.service.clone(),
            problem.reason,
            problem.note.clone(),
        );
        self.problems.remove(&key);
    }

    /// Problems and Services remembered now.
    pub fn remembered(&self) -> (usize, usize) {
        (self.problems.len(), self.buckets.len())
    }

    fn take_token(&mut self, service: &ServiceName, now: Instant) -> bool {
        let Limits { burst, refill, .. } = self.limits;
        if !self.buckets.contains_key(service) {
            evict_oldest(&mut self.buckets, self.limits.capacity, |b| b.used);
        }
        let bucket = self.buckets.entry(service.clone()).or_insert(Bucket {
            tokens: burst,
            refilled: now,
            used: now,
        });
        bucket.used = now;
        let elapsed = now.saturating_duration_since(bucket.refilled);
        let earned = match refill.as_nanos() {
            0 => u128::from(burst),
            step => elapsed.as_nanos() / step,
        };
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        if earned > 0 {
            bucket.tokens = bucket.tokens.saturating_add(earned).min(burst);
            bucket.refilled = if bucket.tokens == burst {
                now
            } else {
                bucket.refilled + refill * earned
            };
        }
        if bucket.tokens == 0 {
            return false;
        }
        bucket.tokens -= 1;
        true
    }
}

/// Makes room for one more entry in a map holding at most `capacity`.
fn evict_oldest<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    capacity: usize,
    age: impl Fn(&V) -> Instant,
) {
    while !map.is_empty() && map.len() >= capacity.max(1) {
        let oldest = map
            .iter()
            .min_by_key(|(_, v)| age(v))
            .map(|(k, _)| k.clone());
        match oldest {
            Some(key) => map.remove(&key),
            None => break,
        };
    }
}

/// Where the sync loop reports problems: to the background task that posts
/// Events, or (standalone) nowhere. Never blocks.
#[derive(Clone, Debug, Default)]
pub struct EventSink {
    queue: Option<(mpsc::Sender<Problem>, Metrics)>,
}

impl EventSink {
    /// A sink that posts nothing (`--manifests` mode, `plan`, tests).
    pub fn disabled() -> EventSink {
        EventSink::default()
    }

    /// Hands `problem` to the poster; a full queue drops it and counts it.
    pub fn report(&self, problem: Problem) {
        let Some((queue, metrics)) = &self.queue else {
            return;
        };
        match queue.try_send(problem) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(problem)) => {
                metrics.record_event_dropped("queue_full");
                tracing::debug!(service = %problem.service, reason = problem.reason.as_str(),
                    "event queue full; dropping the event");
            }
            // The poster stopped (the runtime is shutting down).
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Where the poster reads the time, for the limiter.
pub type Clock = Box<dyn Fn() -> Instant + Send>;

/// Starts the background task that posts Events through `client`, as
/// `node`, and returns the sink the sync loop reports to.
pub fn spawn(client: kube::Client, node: &str, metrics: Metrics) -> EventSink {
    spawn_with(
        client,
        node,
        metrics,
        Limits::default(),
        Box::new(Instant::now),
    )
}

/// As [`spawn`], with the limits and the limiter's clock given.
pub fn spawn_with(
    client: kube::Client,
    node: &str,
    metrics: Metrics,
    limits: Limits,
    clock: Clock,
) -> EventSink {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let seed = u64::try_from(Timestamp::now().as_nanosecond()).unwrap_or_default();
    let poster = Poster {
        client,
        instance: node.to_owned(),
        limiter: Limiter::new(limits, seed),
        clock,
        metrics: metrics.clone(),
    };
    tokio::spawn(poster.run(receiver));
    EventSink {
        queue: Some((sender, metrics)),
    }
}

/// The background task's state.
struct Poster {
    client: kube::Client,
    instance: String,
    limiter: Limiter,
    clock: Clock,
    metrics: Metrics,
}

/// The first and the longest pause after the API refused a post.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

impl Poster {
    async fn run(mut self, mut queue: mpsc::Receiver<Problem>) {
        let mut backoff: Option<Duration> = None;
        while let Some(problem) = queue.recv().await {
            match self.post(&problem).await {
                Ok(true) => {
                    self.metrics.record_event_posted();
                    backoff = None;
                }
                Ok(false) => {}
                Err(error) => {
                    self.limiter.forget(&problem);
                    self.metrics.record_event_dropped("api_error");
                    let pause = backoff.map_or(BACKOFF.0, |b| (b * 2).min(BACKOFF.1));
                    // The first failure is worth a warning (RBAC, say); a
                    // run of them is not worth one each.
                    if backoff.is_none() {
                        tracing::warn!(service = %problem.service, reason = problem.reason.as_str(),
                            error = %error_chain(&error), "cannot post an Event; pausing Events for {pause:?}");
                    } else {
                        tracing::debug!(service = %problem.service, reason = problem.reason.as_str(),
                            error = %error_chain(&error), "cannot post an Event; pausing Events for {pause:?}");
                    }
                    backoff = Some(pause);
                    // Problems reported meanwhile wait in the queue, or
                    // are dropped and counted when it fills.
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Posts `problem` as the limiter decides; whether it wrote to the API.
    async fn post(&mut self, problem: &Problem) -> Result<bool, kube::Error> {
        let api: kube::Api<Event> =
            kube::Api::namespaced(self.client.clone(), &problem.service.namespace);
        let decision = self.limiter.decide(problem, (self.clock)());
        match decision {
            Decision::Repeat => Ok(false),
            Decision::RateLimited => {
                self.metrics.record_event_dropped("rate_limited");
                tracing::debug!(service = %problem.service, reason = problem.reason.as_str(),
                    "too many Events for this service lately; dropping one");
                Ok(false)
            }
            Decision::Create { name } => {
                let event = self.event(problem, name);
                api.create(&kube::api::PostParams::default(), &event)
                    .await?;
                Ok(true)
            }
            Decision::Patch { name, count } => {
                let series = serde_json::json!({
                    "series": EventSeries {
                        count,
                        last_observed_time: MicroTime(Timestamp::now()),
                    },
                });
                let patch = kube::api::Patch::Merge(&series);
                match api
                    .patch(&name, &kube::api::PatchParams::default(), &patch)
                    .await
                {
                    Ok(_) => Ok(true),
                    // The API expired the Event (its TTL is an hour): a new one.
                    Err(kube::Error::Api(status)) if status.code == 404 => {
                        self.limiter.forget(problem);
                        let Decision::Create { name } =
                            self.limiter.decide(problem, (self.clock)())
                        else {
                            return Ok(false);
                        };
                        let event = self.event(problem, name);
                        api.create(&kube::api::PostParams::default(), &event)
                            .await?;
                        Ok(true)
                    }
                    Err(error) => Err(error),
                }
            }
        }
    }

    fn event(&self, problem: &Problem, name: String) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(problem.service.namespace.to_string()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
            type_: Some(problem.reason.event_type().to_owned()),
            reason: Some(problem.reason.as_str().to_owned()),
            action: Some(problem.reason.action().to_owned()),
            note: Some(problem.note.clone()),
            regarding: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Service".to_owned()),
                namespace: Some(problem.service.namespace.to_string()),
                name: Some(problem.service.name.to_string()),
                uid: problem.uid.map(|u| u.to_string()),
                ..ObjectReference::default()
            }),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

#[cfg(test)]
mod tests;
