//! What each benchmark phase measured: one JSON line per phase and scale,
//! written in the VM and turned into the table on the host.

use serde::{Deserialize, Serialize};

use crate::synthetic::Scale;

/// One line of the results file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Record {
    /// Where the run happened.
    Environment(Environment),
    /// `ipvsadm -R` loading the scale from a file.
    Ipvsadm(IpvsadmRestore),
    /// netlink-ipvs alone: one pipelined batch of the same operations.
    RawFloor(RawFloor),
    /// The same state's VIPs (kube-ipvs0 addresses or local routes), alone
    /// and beside the IPVS batch.
    AddressFloor(AddressFloor),
    /// The whole kernel state: set elements, then IPVS and addresses at once.
    StateFloor(StateFloor),
    /// The proxy's pipeline in-process: cold sync, single changes, idle resync.
    Proxy(Box<ProxyRun>),
    /// A cold sync alone, again: the goals compare medians.
    Cold(ColdRepeat),
    /// The `kube-ipvs-proxy` binary's memory.
    Rss(RssRun),
    /// A phase that could not be measured, and why.
    Failed(Failure),
}

/// The machine and the date of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// `uname -r` in the VM.
    pub kernel: String,
    /// "TCG" or "KVM".
    pub cpu_mode: String,
    /// Online CPUs in the VM.
    pub cpus: usize,
    /// The guest's memory (MemTotal) in MiB.
    pub memory_mib: u64,
    /// UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
    /// `--ipvs-vip-mode` of every phase of the run: `address` or `route`.
    /// Runs from before the flag bound VIPs as addresses.
    #[serde(default = "address_mode")]
    pub vip_mode: String,
    /// The guest kernel's clock source (`tsc`, or `hpet` under TCG without
    /// `tsc=reliable`). Runs from before it was recorded read the HPET.
    #[serde(default)]
    pub clocksource: Option<String>,
}

fn address_mode() -> String {
    "address".to_owned()
}

/// `ipvsadm -R < rules`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpvsadmRestore {
    pub scale: Scale,
    pub seconds: f64,
}

/// One `handle.batch(ops).execute()` of every operation of the scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawFloor {
    pub scale: Scale,
    pub seconds: f64,
    /// Netlink messages sent.
    pub messages: u64,
    /// `sendmsg` calls.
    pub sends: u64,
    /// One pipelined `handle.dump()` of the loaded table: the floor of a
    /// full sync's kernel read.
    pub dump_seconds: f64,
}

/// Every cluster IP of the scale added to kube-ipvs0, batched as the proxy
/// batches them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddressFloor {
    pub scale: Scale,
    /// The additions alone.
    pub seconds: f64,
    /// The additions and the raw IPVS batch at the same time, as a cold sync
    /// sends them: the floor of the whole kernel state.
    pub with_ipvs_seconds: f64,
}

/// The whole kernel state of the scale, sent raw in the order a cold sync
/// sends it: every nftables set element in one transaction, then the IPVS
/// batch and the kube-ipvs0 additions at the same time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateFloor {
    pub scale: Scale,
    /// Set elements in the transaction.
    pub nft_elements: usize,
    /// Creating the empty table (`ensure_ruleset`), before the clock starts.
    pub table_seconds: f64,
    /// The nftables transaction alone.
    pub nft_seconds: f64,
    /// The IPVS batch and the additions at the same time, after it.
    pub ipvs_and_addresses_seconds: f64,
    /// All of it: the floor of the whole kernel state.
    pub seconds: f64,
}

/// The proxy's model → translate → reconcile → netlink pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyRun {
    pub scale: Scale,
    pub cold: ColdSync,
    pub change: ChangeLatency,
    pub churn: ServiceChurn,
    pub idle: IdleResync,
}

/// One whole service deleted, then created again (its address leaves and
/// returns to kube-ipvs0), a few times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceChurn {
    pub trials: usize,
    /// Median seconds from the Delete event to the kernel's ACK.
    pub delete_p50_seconds: f64,
    /// Median seconds from the re-created Service's event to the ACK.
    pub create_p50_seconds: f64,
    /// Writes of one delete (virtual server and address).
    pub delete_writes: usize,
}

/// One more cold sync of the pipeline in-process, from a freshly loaded
/// IPVS: under TCG one sample of a cold sync varies by a quarter from one
/// phase to the next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColdRepeat {
    pub scale: Scale,
    pub cold: ColdSync,
}

/// From an empty kernel to converged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColdSync {
    /// From the first source event to the last ACK.
    pub seconds: f64,
    /// Of which before the sync: in the model (the sync translates the
    /// services and hands them to the reconciler as it goes, as the run
    /// loop's first full sync does; before 3b9239b, this also held
    /// translate and `set_service`).
    pub absorb_seconds: f64,
    /// Of which in `IpvsKernel::apply` (the IPVS batch).
    pub ipvs_apply_seconds: f64,
    /// Of which in `IpvsKernel::dump` (reading the empty table).
    pub ipvs_dump_seconds: f64,
    /// Of which on kube-ipvs0 (reading it and binding every VIP).
    pub address_seconds: f64,
    /// Of that, reading kube-ipvs0 and the VIPs bound (`ensure_link`).
    pub link_seconds: f64,
    /// Of which in nftables (reading the table and the element transactions).
    pub nft_seconds: f64,
    /// Of that, reading the table's sets (`ensure_ruleset`).
    pub nft_table_seconds: f64,
    /// Before the clock, as `run` does at start while its lists come in:
    /// creating kube-ipvs0 (`DummyLink::create`) and the nftables table
    /// (`ensure_ruleset`). Absent in results from before the cold sync
    /// started from a prepared kernel (they paid both inside the clock).
    #[serde(default)]
    pub prepare_seconds: Option<PrepareSeconds>,
    /// nftables set elements added.
    pub nft_elements: usize,
    /// nftables transactions of set elements.
    pub nft_batches: usize,
    /// IPVS netlink messages sent (operations and dump requests).
    pub ipvs_messages: u64,
    /// IPVS `sendmsg` calls.
    pub ipvs_sends: u64,
    /// rtnetlink address additions (one message each).
    pub address_writes: u64,
    /// `SyncReport::writes`.
    pub writes: usize,
    /// From the first source event to the first IPVS write: the model, the
    /// reads of the kernel, the translation of the first services and the
    /// diff of the first chunk.
    /// Absent in results from before it was measured.
    #[serde(default)]
    pub first_write_seconds: Option<f64>,
    /// From the last IPVS answer to the end of the sync.
    #[serde(default)]
    pub after_last_answer_seconds: Option<f64>,
}

/// What a cold sync finds made before its clock starts, as the binary makes
/// it at start.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepareSeconds {
    /// Creating kube-ipvs0.
    pub link: f64,
    /// Creating the nftables table, its sets and its chains.
    pub nft_table: f64,
}

/// One endpoint added, then removed, in one service, many times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeLatency {
    /// Add-then-remove trials; each gives two samples.
    pub trials: usize,
    /// Seconds from the source event to the kernel's ACK, sorted.
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
    /// Median of the part in the model, translate and `set_service`.
    pub absorb_p50_seconds: f64,
    /// Writes per change: fewest and most over every sample.
    pub min_writes: usize,
    pub max_writes: usize,
    /// IPVS netlink messages per change, most over every sample.
    pub max_messages: u64,
    /// nftables transactions per change, most over every sample.
    pub max_nft_batches: usize,
}

/// One full sync when nothing changed (the median of a few).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdleResync {
    pub runs: usize,
    /// CPU time of the process (every thread), median.
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    /// Most writes over the runs.
    pub writes: usize,
    /// Of those, most nftables set element writes over the runs.
    pub nft_writes: usize,
    /// IPVS netlink messages sent by one run (dump requests).
    pub ipvs_messages: u64,
    /// The rolling verification of real servers, and what reading them all
    /// costs. Absent in results from before it existed.
    #[serde(default)]
    pub verification: Option<Box<Verification>>,
    /// Where the CPU of a run went, the mean over the runs. Absent in
    /// results from before it was measured.
    #[serde(default)]
    pub stages: Option<Box<IdleStages>>,
}

/// An idle resync's CPU time per step, user and system apart.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdleStages {
    /// Making sure of the nftables table and reading its set elements.
    pub nft_read: CpuSplit,
    /// Reading kube-ipvs0 and its addresses.
    pub link_read: CpuSplit,
    /// Listing the IPVS virtual servers.
    pub ipvs_list: CpuSplit,
    /// Reading the real servers of the virtual servers due.
    pub real_servers: CpuSplit,
    /// Everything else: diffing and bookkeeping.
    pub rest: CpuSplit,
}

/// CPU seconds in user space and in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuSplit {
    pub user_seconds: f64,
    pub system_seconds: f64,
}

/// How much of the table an idle resync reads, against reading it all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// `--ipvs-verify-period` over `--ipvs-sync-period` at their defaults:
    /// each run reads the real servers of about 1/`rounds` of the virtual
    /// servers.
    pub rounds: u64,
    /// One more full sync with nothing changed that reads every real
    /// server, as the first sync and one after a lost connection do (and
    /// as every full sync did before the rolling window).
    pub complete: CompleteRead,
}

/// One idle full sync that reads every virtual server's real servers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompleteRead {
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    pub writes: usize,
    /// IPVS dump requests: 1 + one per virtual server.
    pub ipvs_messages: u64,
}

/// Where the binary read its objects from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceMode {
    /// `--manifests DIR`.
    Manifests,
    /// `--master URL`: the in-cluster watchers against the test API server.
    Cluster,
}

impl SourceMode {
    /// The mode in the table's words.
    pub fn label(self) -> &'static str {
        match self {
            SourceMode::Manifests => "standalone (manifests)",
            SourceMode::Cluster => "in-cluster watchers",
        }
    }
}

/// The binary from start to converged, then idle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RssRun {
    pub scale: Scale,
    pub mode: SourceMode,
    /// From spawning the process to its first "sync done" (kind full).
    pub start_to_synced_seconds: f64,
    /// VmHWM after the first sync.
    pub peak_kib: u64,
    /// VmRSS a few seconds after the first sync.
    pub steady_kib: u64,
    /// Where the time to the first sync went, from the binary's log; absent
    /// in runs from before the binary logged it.
    #[serde(default)]
    pub startup: Option<Startup>,
}

/// The binary's start-up, in the parts it logs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Startup {
    /// Modules, sysctls, netlink sockets, the nftables table, the sources.
    pub prepare_seconds: f64,
    /// Waiting for the initial lists: the API's answers and their decoding.
    pub lists_seconds: f64,
    /// Applying the lists to the model.
    pub model_seconds: f64,
    /// The first full sync.
    pub first_sync_seconds: f64,
}

/// A phase that failed; the table shows the error in its place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub scale: Option<Scale>,
    /// "ipvsadm", "raw_floor", "proxy", "rss manifests", ...
    pub what: String,
    pub error: String,
}

/// The value at quantile `q` (0..=1) of sorted `samples`, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of unsorted `samples`.
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    quantile(&sorted, 0.5)
}
