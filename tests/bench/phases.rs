//! The in-VM measurements that need no proxy binary: `ipvsadm -R`, the raw
//! floors (netlink-ipvs, kube-ipvs0, nftables), and the proxy's pipeline
//! in-process (model → translate → reconciler → nftables, NetlinkIpvs and
//! kube-ipvs0), counting every message and write.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube_ipvs_proxy::desired::{NftChange, NftElement, NftRuleset, Op, VirtualServerKey};
use kube_ipvs_proxy::kernel::conntrack::NetlinkConntrack;
use kube_ipvs_proxy::kernel::link::{DummyLink, VipMode};
use kube_ipvs_proxy::kernel::netlink::NetlinkIpvs;
use kube_ipvs_proxy::kernel::nftables::NetlinkNft;
use kube_ipvs_proxy::kernel::{
    AddressKernel, IpvsKernel, KernelError, ListedRealServers, ListedVirtualServer, NftKernel,
    Prepared,
};

use crate::kernel_state::{self, Ipvs, INTERFACE};
use crate::pipeline::{endpoint_change, service_change, Pipeline};
use crate::record::{
    median, quantile, AddressFloor, ChangeLatency, ColdRepeat, ColdSync, CompleteRead, CpuSplit,
    IdleResync, IdleStages, IpvsadmRestore, PrepareSeconds, ProxyRun, RawFloor, ServiceChurn,
    StateFloor, Verification,
};
use crate::synthetic::{self, Scale};

/// `ipvsadm -R` from a rules file written to `rules_path` beforehand
/// (writing it is not timed).
pub async fn ipvsadm_restore(scale: Scale, rules_path: &Path) -> Result<IpvsadmRestore, String> {
    let ipvs = Ipvs::connect().await?;
    kernel_state::reset(&ipvs).await?;
    let rules = synthetic::ipvsadm_rules(scale);
    std::fs::write(rules_path, rules)
        .map_err(|e| format!("writing {}: {e}", rules_path.display()))?;
    let input = std::fs::File::open(rules_path)
        .map_err(|e| format!("opening {}: {e}", rules_path.display()))?;
    let started = Instant::now();
    let output = Command::new("ipvsadm")
        .arg("-R")
        .stdin(input)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running ipvsadm -R: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        return Err(format!(
            "ipvsadm -R < {} failed ({}): {}",
            rules_path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    kernel_state::verify(&ipvs, scale, &[])
        .await
        .map_err(|e| format!("after ipvsadm -R: {e}"))?;
    kernel_state::reset(&ipvs).await?;
    Ok(IpvsadmRestore { scale, seconds })
}

/// Every operation of the scale in one pipelined batch, built beforehand.
pub async fn raw_floor(scale: Scale) -> Result<RawFloor, String> {
    let ipvs = Ipvs::connect().await?;
    kernel_state::reset(&ipvs).await?;
    let operations = synthetic::operations(scale);
    let before = ipvs.handle.stats();
    let started = Instant::now();
    let results = ipvs.handle.batch(operations).execute().await;
    let seconds = started.elapsed().as_secs_f64();
    let after = ipvs.handle.stats();
    ipvs_batch_succeeded(&results)?;
    let dump_started = Instant::now();
    let dumped = ipvs.handle.dump().execute().await;
    let dump_seconds = dump_started.elapsed().as_secs_f64();
    dumped.map_err(|e| format!("dumping the raw batch's table: {e}"))?;
    kernel_state::verify(&ipvs, scale, &[])
        .await
        .map_err(|e| format!("after the raw batch: {e}"))?;
    kernel_state::reset(&ipvs).await?;
    Ok(RawFloor {
        scale,
        seconds,
        messages: after.messages_sent - before.messages_sent,
        sends: after.sends - before.sends,
        dump_seconds,
    })
}

/// The VIPs' share of the scale: every cluster IP bound as the proxy binds
/// them in `mode` (batched on one rtnetlink socket), alone; then again at
/// the same time as the IPVS batch, as a cold sync sends them. None of it
/// translates or diffs anything.
///
/// A phase of its own, run on a freshly loaded ip_vs: after a flush, every
/// real-server add scans the kernel's destination trash, so an IPVS batch
/// that followed [`raw_floor`]'s would be timed on a slower kernel (it took
/// 147 s instead of about 4 at 10,000 × 10). The additions alone touch no
/// IPVS, so they go first.
pub async fn address_floor(scale: Scale, mode: VipMode) -> Result<AddressFloor, String> {
    let ipvs = Ipvs::connect().await?;
    kernel_state::reset(&ipvs).await?;
    let addresses: Vec<IpAddr> = (0..scale.services).map(synthetic::cluster_ip).collect();

    let mut link = empty_link(mode).await?;
    let started = Instant::now();
    let added = link.add_addresses(&addresses).await;
    let seconds = started.elapsed().as_secs_f64();
    addresses_succeeded(&mut link, &addresses, added).await?;
    drop(link);
    kernel_state::reset(&ipvs).await?;

    let mut link = empty_link(mode).await?;
    let operations = synthetic::operations(scale);
    let started = Instant::now();
    let (results, added) = futures::join!(
        ipvs.handle.batch(operations).execute(),
        link.add_addresses(&addresses)
    );
    let with_ipvs_seconds = started.elapsed().as_secs_f64();
    ipvs_batch_succeeded(&results)?;
    addresses_succeeded(&mut link, &addresses, added).await?;
    kernel_state::verify(&ipvs, scale, &[])
        .await
        .map_err(|e| format!("after the raw batch beside the addresses: {e}"))?;
    kernel_state::reset(&ipvs).await?;
    Ok(AddressFloor {
        scale,
        seconds,
        with_ipvs_seconds,
    })
}

/// The whole kernel state of the scale at raw speed, sent as a cold sync
/// sends it (`proxy::Kernel::sync`): the set elements in one nftables
/// transaction first, then the IPVS batch and kube-ipvs0's additions at the
/// same time. The table and kube-ipvs0 are created empty before the clock
/// starts. None of it translates or diffs anything.
///
/// A phase of its own, on a freshly loaded ip_vs, for the reason
/// [`address_floor`] gives.
pub async fn state_floor(scale: Scale, mode: VipMode) -> Result<StateFloor, String> {
    let ipvs = Ipvs::connect().await?;
    kernel_state::reset(&ipvs).await?;
    let elements = synthetic::nft_elements(scale);
    let changes: Vec<NftChange> = elements.iter().copied().map(NftChange::Add).collect();
    let addresses: Vec<IpAddr> = (0..scale.services).map(synthetic::cluster_ip).collect();
    let operations = synthetic::operations(scale);

    let mut nft = NetlinkNft::new().map_err(|e| format!("opening nftables: {e}"))?;
    let table_started = Instant::now();
    let held = nft
        .ensure_ruleset(&NftRuleset::default())
        .await
        .map_err(|e| format!("creating the nftables table: {e}"))?;
    let table_seconds = table_started.elapsed().as_secs_f64();
    if !held.is_empty() {
        return Err(format!(
            "the nftables table was just created and already holds {} elements",
            held.len()
        ));
    }
    let mut link = empty_link(mode).await?;

    let started = Instant::now();
    let applied = nft.apply(&changes).await;
    let nft_done = Instant::now();
    applied.map_err(|e| {
        format!(
            "the nftables transaction of {} set elements: {e}",
            changes.len()
        )
    })?;
    let (results, added) = futures::join!(
        ipvs.handle.batch(operations).execute(),
        link.add_addresses(&addresses)
    );
    let finished = Instant::now();
    ipvs_batch_succeeded(&results)?;
    addresses_succeeded(&mut link, &addresses, added).await?;
    nft_elements_held(&mut nft, &elements).await?;
    kernel_state::verify(&ipvs, scale, &[])
        .await
        .map_err(|e| format!("after the whole raw state: {e}"))?;
    kernel_state::reset(&ipvs).await?;
    Ok(StateFloor {
        scale,
        nft_elements: elements.len(),
        table_seconds,
        nft_seconds: (nft_done - started).as_secs_f64(),
        ipvs_and_addresses_seconds: (finished - nft_done).as_secs_f64(),
        seconds: (finished - started).as_secs_f64(),
    })
}

/// The proxy's table holds exactly `wanted` (sorted).
async fn nft_elements_held(nft: &mut NetlinkNft, wanted: &[NftElement]) -> Result<(), String> {
    let mut held = nft
        .dump_elements()
        .await
        .map_err(|e| format!("listing the nftables set elements: {e}"))?;
    held.sort_unstable();
    if held != wanted {
        let missing = wanted.iter().find(|e| held.binary_search(e).is_err());
        let extra = held.iter().find(|e| wanted.binary_search(e).is_err());
        return Err(format!(
            "the nftables sets hold {} elements, {} wanted; first missing: {}, first unwanted: {}",
            held.len(),
            wanted.len(),
            missing.map_or("none".to_owned(), ToString::to_string),
            extra.map_or("none".to_owned(), ToString::to_string),
        ));
    }
    Ok(())
}

fn ipvs_batch_succeeded<E: std::fmt::Display>(results: &[Result<(), E>]) -> Result<(), String> {
    match results.iter().find_map(|r| r.as_ref().err()) {
        None => Ok(()),
        Some(error) => Err(format!(
            "{} operations of the raw batch failed, first: {error}",
            results.iter().filter(|r| r.is_err()).count()
        )),
    }
}

/// kube-ipvs0, created, with no VIP bound either way (not timed).
async fn empty_link(mode: VipMode) -> Result<DummyLink, String> {
    let mut link = DummyLink::new(INTERFACE)
        .map_err(|e| format!("opening rtnetlink: {e}"))?
        .with_mode(mode, &[]);
    let held = link
        .ensure_link()
        .await
        .map_err(|e| format!("creating {INTERFACE}: {e}"))?;
    if !held.is_empty() {
        return Err(format!(
            "{INTERFACE} was just created and already holds {} addresses",
            held.len()
        ));
    }
    Ok(link)
}

/// Every address added, and the link holds exactly them.
async fn addresses_succeeded(
    link: &mut DummyLink,
    wanted: &[IpAddr],
    added: Vec<Result<(), KernelError>>,
) -> Result<(), String> {
    if added.len() != wanted.len() {
        return Err(format!(
            "{} results for {} address additions",
            added.len(),
            wanted.len()
        ));
    }
    if let Some((addr, Err(error))) = wanted.iter().zip(&added).find(|(_, r)| r.is_err()) {
        let failed = added.iter().filter(|r| r.is_err()).count();
        return Err(format!(
            "{failed} address additions failed, first {addr}: {error}"
        ));
    }
    let addresses = link
        .current_addresses()
        .await
        .map_err(|e| format!("listing the addresses of {INTERFACE}: {e}"))?;
    let routes = link
        .local_routes()
        .await
        .map_err(|e| format!("listing the proxy's local routes: {e}"))?;
    let (mut held, other, what) = match link.mode() {
        VipMode::Address => (addresses, routes, format!("{INTERFACE} holds")),
        VipMode::Route => (routes, addresses, "table local holds".to_owned()),
    };
    held.sort_unstable();
    let mut wanted = wanted.to_vec();
    wanted.sort_unstable();
    if held != wanted || !other.is_empty() {
        return Err(format!(
            "{what} {} VIPs after binding {} ({} bound the other way); they differ",
            held.len(),
            wanted.len(),
            other.len()
        ));
    }
    Ok(())
}

/// [`NetlinkIpvs`] with the time spent in each call added up.
#[derive(Debug)]
struct TimedIpvs {
    inner: NetlinkIpvs,
    apply: Duration,
    /// When the first write was sent, and the last answered.
    first_apply: Option<Instant>,
    last_answer: Option<Instant>,
    dump: Duration,
    /// The calling thread's CPU time in `list_virtual_servers`: the
    /// runtime's, which also runs the netlink connection (see [`CpuTime`]).
    list_cpu: CpuTime,
    /// The calling thread's CPU time in `list_real_servers`.
    real_servers_cpu: CpuTime,
}

impl IpvsKernel for TimedIpvs {
    async fn list_virtual_servers(&mut self) -> Result<Vec<ListedVirtualServer>, KernelError> {
        let started = Instant::now();
        let cpu = CpuTime::thread_now();
        let result = self.inner.list_virtual_servers().await;
        self.list_cpu += CpuTime::thread_now() - cpu;
        self.dump += started.elapsed();
        result
    }

    async fn list_real_servers(
        &mut self,
        keys: &[VirtualServerKey],
    ) -> Result<Vec<ListedRealServers>, KernelError> {
        let started = Instant::now();
        let cpu = CpuTime::thread_now();
        let result = self.inner.list_real_servers(keys).await;
        self.real_servers_cpu += CpuTime::thread_now() - cpu;
        self.dump += started.elapsed();
        result
    }

    async fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
        self.apply_prepared(ops, Self::prepare(ops)).await
    }

    fn prepare(ops: &[Op]) -> Prepared {
        NetlinkIpvs::prepare(ops)
    }

    async fn apply_prepared(
        &mut self,
        ops: &[Op],
        prepared: Prepared,
    ) -> Vec<Result<(), KernelError>> {
        let started = Instant::now();
        self.first_apply.get_or_insert(started);
        let results = self.inner.apply_prepared(ops, prepared).await;
        let answered = Instant::now();
        self.apply += answered - started;
        self.last_answer = Some(answered);
        results
    }
}

/// [`DummyLink`] with its time and address writes added up.
#[derive(Debug)]
struct TimedLink {
    inner: DummyLink,
    time: Duration,
    /// Of `time`, in `ensure_link`.
    link_time: Duration,
    /// The calling thread's CPU time in `ensure_link`.
    link_cpu: CpuTime,
    writes: u64,
    /// Creating kube-ipvs0, before any clock (see [`real_pipeline`]).
    created: Duration,
}

impl AddressKernel for TimedLink {
    async fn ensure_link(&mut self) -> Result<Vec<IpAddr>, KernelError> {
        let started = Instant::now();
        let cpu = CpuTime::thread_now();
        let result = self.inner.ensure_link().await;
        self.link_cpu += CpuTime::thread_now() - cpu;
        let spent = started.elapsed();
        self.time += spent;
        self.link_time += spent;
        result
    }

    async fn add_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        let started = Instant::now();
        let result = self.inner.add_address(addr).await;
        self.time += started.elapsed();
        self.writes += 1;
        result
    }

    /// Forwarded as one batch: that is what the proxy sends, and what is
    /// measured.
    async fn add_addresses(&mut self, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>> {
        let started = Instant::now();
        let results = self.inner.add_addresses(addrs).await;
        self.time += started.elapsed();
        self.writes += addrs.len() as u64;
        results
    }

    async fn del_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        let started = Instant::now();
        let result = self.inner.del_address(addr).await;
        self.time += started.elapsed();
        self.writes += 1;
        result
    }
}

/// [`NetlinkNft`] with the time spent in each call added up.
#[derive(Debug)]
struct TimedNft {
    inner: NetlinkNft,
    time: Duration,
    /// Of `time`, in `ensure_ruleset`.
    table_time: Duration,
    /// The CPU time of the process's other threads during `ensure_ruleset`:
    /// the blocking thread that reads the table, while the calling thread
    /// reads kube-ipvs0 and lists the virtual servers (see [`CpuTime`]).
    table_cpu: CpuTime,
    /// Creating the table, before any clock (see [`real_pipeline`]).
    created: Duration,
}

/// When a read of the table began, by the wall clock and the CPU clocks.
struct TableRead {
    started: Instant,
    cpu: CpuTime,
    own: CpuTime,
}

impl TableRead {
    fn begin() -> Self {
        TableRead {
            started: Instant::now(),
            cpu: CpuTime::now(),
            own: CpuTime::thread_now(),
        }
    }
}

impl TimedNft {
    /// Adds a read of the table that began at `read` and ends now.
    fn table_read(&mut self, read: TableRead) {
        self.table_cpu += (CpuTime::now() - read.cpu) - (CpuTime::thread_now() - read.own);
        let spent = read.started.elapsed();
        self.time += spent;
        self.table_time += spent;
    }
}

impl NftKernel for TimedNft {
    async fn ensure_ruleset(
        &mut self,
        ruleset: &NftRuleset,
    ) -> Result<Vec<NftElement>, KernelError> {
        let read = TableRead::begin();
        let result = self.inner.ensure_ruleset(ruleset).await;
        self.table_read(read);
        result
    }

    async fn dump_elements(&mut self) -> Result<Vec<NftElement>, KernelError> {
        let started = Instant::now();
        let result = self.inner.dump_elements().await;
        self.time += started.elapsed();
        result
    }

    /// Counted as a read of the table: a full sync reads the generation
    /// first, and the sets only when it moved.
    async fn generation(&mut self) -> Option<u32> {
        let read = TableRead::begin();
        let generation = self.inner.generation().await;
        self.table_read(read);
        generation
    }

    async fn apply(&mut self, changes: &[NftChange]) -> Result<(), KernelError> {
        let started = Instant::now();
        let result = self.inner.apply(changes).await;
        self.time += started.elapsed();
        result
    }

    async fn delete_table(&mut self) -> Result<bool, KernelError> {
        let started = Instant::now();
        let result = self.inner.delete_table().await;
        self.time += started.elapsed();
        result
    }
}

/// One single-change sample.
#[derive(Clone, Copy, Debug)]
struct Sample {
    seconds: f64,
    absorb_seconds: f64,
    writes: usize,
    messages: u64,
    nft_batches: usize,
}

/// The pipeline over the real kernel, timed per edge.
type RealPipeline = Pipeline<TimedIpvs, TimedLink, TimedNft, NetlinkConntrack>;

async fn real_pipeline(mode: VipMode) -> Result<RealPipeline, String> {
    let ipvs = NetlinkIpvs::connect()
        .await
        .map_err(|e| format!("connecting NetlinkIpvs: {e}"))?;
    let mut link = DummyLink::new(INTERFACE)
        .map_err(|e| format!("opening rtnetlink: {e}"))?
        .with_mode(mode, &[]);
    let mut nft = NetlinkNft::new().map_err(|e| format!("opening nftables: {e}"))?;
    // Made before any clock starts, as `run` makes both at start while its
    // lists come in (and as the whole-state floor makes them).
    let started = Instant::now();
    link.create()
        .await
        .map_err(|e| format!("creating {INTERFACE}: {e}"))?;
    let link_created = started.elapsed();
    let started = Instant::now();
    nft.ensure_ruleset(&NftRuleset::default())
        .await
        .map_err(|e| format!("creating the nftables table: {e}"))?;
    let nft_created = started.elapsed();
    let conntrack = NetlinkConntrack::new().map_err(|e| format!("opening ctnetlink: {e}"))?;
    Ok(Pipeline::new(
        TimedIpvs {
            inner: ipvs,
            apply: Duration::ZERO,
            first_apply: None,
            last_answer: None,
            dump: Duration::ZERO,
            list_cpu: CpuTime::default(),
            real_servers_cpu: CpuTime::default(),
        },
        TimedLink {
            inner: link,
            time: Duration::ZERO,
            link_time: Duration::ZERO,
            link_cpu: CpuTime::default(),
            writes: 0,
            created: link_created,
        },
        TimedNft {
            inner: nft,
            time: Duration::ZERO,
            table_time: Duration::ZERO,
            table_cpu: CpuTime::default(),
            created: nft_created,
        },
        conntrack,
        mode,
    ))
}

fn ipvs_stats(pipeline: &RealPipeline) -> netlink_ipvs::ConnectionStats {
    pipeline.ipvs.inner.stats()
}

/// A cold sync alone, from a freshly loaded IPVS (see tests/bench/guest.sh):
/// another sample for the medians every goal compares.
pub async fn cold(scale: Scale, mode: VipMode) -> Result<ColdRepeat, String> {
    let ipvs = Ipvs::connect().await?;
    kernel_state::reset(&ipvs).await?;
    let mut pipeline = real_pipeline(mode).await?;
    let cold = cold_sync(&ipvs, &mut pipeline, scale).await?;
    drop(pipeline);
    kernel_state::reset(&ipvs).await?;
    Ok(ColdRepeat { scale, cold })
}

/// The scale's objects through `pipeline` into an empty kernel, checked
/// against the kernel afterwards.
async fn cold_sync(
    ipvs: &Ipvs,
    pipeline: &mut RealPipeline,
    scale: Scale,
) -> Result<ColdSync, String> {
    // The objects exist before the clock starts, as after a source's list.
    let events = RealPipeline::initial_list(scale);
    let before = ipvs_stats(pipeline);
    let synced = pipeline.cold_sync(events).await?;
    let after = ipvs_stats(pipeline);
    let cold = ColdSync {
        seconds: synced.elapsed.as_secs_f64(),
        absorb_seconds: synced.absorbing.as_secs_f64(),
        ipvs_apply_seconds: pipeline.ipvs.apply.as_secs_f64(),
        ipvs_dump_seconds: pipeline.ipvs.dump.as_secs_f64(),
        address_seconds: pipeline.link.time.as_secs_f64(),
        link_seconds: pipeline.link.link_time.as_secs_f64(),
        nft_seconds: pipeline.nft.time.as_secs_f64(),
        nft_table_seconds: pipeline.nft.table_time.as_secs_f64(),
        prepare_seconds: Some(PrepareSeconds {
            link: pipeline.link.created.as_secs_f64(),
            nft_table: pipeline.nft.created.as_secs_f64(),
        }),
        nft_elements: synced.report.nft_elements,
        nft_batches: synced.report.nft_batches,
        ipvs_messages: after.messages_sent - before.messages_sent,
        ipvs_sends: after.sends - before.sends,
        address_writes: pipeline.link.writes,
        writes: synced.report.writes,
        first_write_seconds: pipeline
            .ipvs
            .first_apply
            .map(|at| (at - synced.started).as_secs_f64()),
        after_last_answer_seconds: pipeline
            .ipvs
            .last_answer
            .map(|at| (synced.started + synced.elapsed - at).as_secs_f64()),
    };
    kernel_state::verify(ipvs, scale, &[])
        .await
        .map_err(|e| format!("after the cold sync: {e}"))?;
    nft_elements_held(&mut pipeline.nft.inner, &synthetic::nft_elements(scale))
        .await
        .map_err(|e| format!("after the cold sync: {e}"))?;
    Ok(cold)
}

/// Cold sync, `trials` single changes, then `idle_runs` idle resyncs.
pub async fn proxy(
    scale: Scale,
    trials: usize,
    idle_runs: usize,
    mode: VipMode,
) -> Result<ProxyRun, String> {
    let ipvs = Ipvs::connect().await?;
    kernel_state::reset(&ipvs).await?;
    let mut pipeline = real_pipeline(mode).await?;
    let cold = cold_sync(&ipvs, &mut pipeline, scale).await?;

    let change = single_changes(&mut pipeline, &ipvs, scale, trials).await?;
    kernel_state::verify(&ipvs, scale, &[])
        .await
        .map_err(|e| format!("after the single changes: {e}"))?;

    let churn = service_churn(&mut pipeline, scale, CHURN_TRIALS).await?;
    kernel_state::verify(&ipvs, scale, &[])
        .await
        .map_err(|e| format!("after deleting and re-creating services: {e}"))?;

    // The endpoints the trials removed drained at weight 0; the first full
    // sync sees them idle and deletes them. That is the trials' work, not
    // an idle resync's.
    pipeline.resync().await?;
    let idle = idle_resyncs(&mut pipeline, idle_runs).await?;
    drop(pipeline);
    kernel_state::reset(&ipvs).await?;
    Ok(ProxyRun {
        scale,
        cold,
        change,
        churn,
        idle,
    })
}

/// Trial k adds the extra endpoint to one service and removes it again,
/// spreading the trials over the services.
async fn single_changes(
    pipeline: &mut RealPipeline,
    ipvs: &Ipvs,
    scale: Scale,
    trials: usize,
) -> Result<ChangeLatency, String> {
    let mut samples = Vec::with_capacity(2 * trials);
    for trial in 0..trials {
        let i = (trial * 7919 + 13) % scale.services;
        for with_extra in [true, false] {
            let before = ipvs_stats(pipeline).messages_sent;
            let changed = pipeline
                .change(endpoint_change(scale, i, with_extra))
                .await
                .map_err(|e| format!("trial {trial} on service {i}: {e}"))?;
            samples.push(Sample {
                seconds: changed.elapsed.as_secs_f64(),
                absorb_seconds: changed.absorbing.as_secs_f64(),
                writes: changed.report.writes,
                messages: ipvs_stats(pipeline).messages_sent - before,
                nft_batches: changed.report.nft_batches,
            });
            // The ACK says the kernel holds the change; read it back once.
            if trial == 0 {
                let (serving, held) = kernel_state::real_servers_of(ipvs, i).await?;
                let wanted = scale.endpoints + usize::from(with_extra);
                // The removed endpoint drains at weight 0: held, not serving.
                let drained = scale.endpoints + 1;
                if serving != wanted || held != drained {
                    return Err(format!(
                        "after the first change the kernel holds {held} real servers for service {i}, {serving} of them serving; {drained} held and {wanted} serving wanted"
                    ));
                }
            }
        }
    }
    let mut seconds: Vec<f64> = samples.iter().map(|s| s.seconds).collect();
    seconds.sort_by(f64::total_cmp);
    Ok(ChangeLatency {
        trials,
        p50_seconds: quantile(&seconds, 0.50),
        p99_seconds: quantile(&seconds, 0.99),
        max_seconds: seconds.last().copied().unwrap_or(f64::NAN),
        absorb_p50_seconds: median(&samples.iter().map(|s| s.absorb_seconds).collect::<Vec<_>>()),
        min_writes: samples.iter().map(|s| s.writes).min().unwrap_or(0),
        max_writes: samples.iter().map(|s| s.writes).max().unwrap_or(0),
        max_messages: samples.iter().map(|s| s.messages).max().unwrap_or(0),
        max_nft_batches: samples.iter().map(|s| s.nft_batches).max().unwrap_or(0),
    })
}

/// Service delete-and-recreate trials per scale: enough for a median, few
/// enough to keep the default run short.
const CHURN_TRIALS: usize = 20;

async fn service_churn(
    pipeline: &mut RealPipeline,
    scale: Scale,
    trials: usize,
) -> Result<ServiceChurn, String> {
    let mut deletes = Vec::with_capacity(trials);
    let mut creates = Vec::with_capacity(trials);
    let mut delete_writes = 0;
    for trial in 0..trials {
        let i = (trial * 104_729 + 7) % scale.services;
        let deleted = pipeline
            .change(service_change(i, false))
            .await
            .map_err(|e| format!("deleting service {i}: {e}"))?;
        deletes.push(deleted.elapsed.as_secs_f64());
        delete_writes = delete_writes.max(deleted.report.writes);
        let created = pipeline
            .change(service_change(i, true))
            .await
            .map_err(|e| format!("re-creating service {i}: {e}"))?;
        creates.push(created.elapsed.as_secs_f64());
    }
    Ok(ServiceChurn {
        trials,
        delete_p50_seconds: median(&deletes),
        create_p50_seconds: median(&creates),
        delete_writes,
    })
}

async fn idle_resyncs(pipeline: &mut RealPipeline, runs: usize) -> Result<IdleResync, String> {
    let mut cpu = Vec::with_capacity(runs);
    let mut wall = Vec::with_capacity(runs);
    let mut writes = 0;
    let mut nft_writes = 0;
    let mut messages = 0;
    let mut stages = StageCpu::default();
    for _ in 0..runs {
        let messages_before = ipvs_stats(pipeline).messages_sent;
        let stages_before = StageCpu::of(pipeline);
        let cpu_before = CpuTime::read()?;
        let resynced = pipeline.resync().await?;
        let spent = CpuTime::read()? - cpu_before;
        stages.add(StageCpu::of(pipeline) - stages_before, spent);
        cpu.push(spent.total().as_secs_f64());
        wall.push(resynced.elapsed.as_secs_f64());
        writes = writes.max(resynced.report.writes);
        nft_writes = nft_writes.max(resynced.report.nft_elements);
        messages = ipvs_stats(pipeline).messages_sent - messages_before;
    }
    // The same, reading every real server: what each run cost before the
    // rolling window, measured on the same kernel in the same run.
    pipeline.reconciler.require_full_sync();
    let messages_before = ipvs_stats(pipeline).messages_sent;
    let cpu_before = CpuTime::read()?;
    let resynced = pipeline.resync().await?;
    let complete = CompleteRead {
        cpu_seconds: (CpuTime::read()? - cpu_before).total().as_secs_f64(),
        wall_seconds: resynced.elapsed.as_secs_f64(),
        writes: resynced.report.writes,
        ipvs_messages: ipvs_stats(pipeline).messages_sent - messages_before,
    };
    Ok(IdleResync {
        runs,
        cpu_seconds: median(&cpu),
        wall_seconds: median(&wall),
        writes,
        nft_writes,
        ipvs_messages: messages,
        verification: Some(Box::new(Verification {
            rounds: crate::pipeline::verify_rounds(),
            complete,
        })),
        stages: Some(Box::new(stages.mean(runs))),
    })
}

/// CPU time of this process, user and system apart, threads that have
/// exited included (`/proc/self/stat` utime and stime, in USER_HZ = 100
/// ticks): the runtime's blocking threads come and go during a long sync.
/// Or of the calling thread alone (`/proc/thread-self/stat`): a full sync
/// reads the nftables table on a blocking thread while the runtime's
/// thread reads kube-ipvs0 and the virtual servers, so the idle resync's
/// stages are told apart by thread, not by the windows of the calls.
/// System time is the kernel's work on the proxy's behalf (netlink dumps
/// and transactions); user time is parsing, diffing and bookkeeping. Both
/// are sampled at the tick, so short steps and the split between the two
/// are coarse, under TCG especially.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    /// The whole process's.
    pub fn read() -> Result<CpuTime, String> {
        CpuTime::read_stat("/proc/self/stat")
    }

    fn read_stat(path: &str) -> Result<CpuTime, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
        // Fields after the command name, which may hold spaces: state is
        // the first, utime the 12th and stime the 13th.
        let fields: Vec<&str> = text
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .map(|t| Duration::from_millis(t * 10))
                .ok_or_else(|| format!("{path}: unexpected content {text:?}"))
        };
        Ok(CpuTime {
            user: ticks(11)?,
            system: ticks(12)?,
        })
    }

    /// As [`CpuTime::read`], inside the timing wrappers: the phases read it
    /// once first, so a failure here means /proc went away mid-run.
    fn now() -> CpuTime {
        CpuTime::read().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The calling thread's, as [`CpuTime::now`] reads the process's.
    fn thread_now() -> CpuTime {
        CpuTime::read_stat("/proc/thread-self/stat").unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn total(self) -> Duration {
        self.user + self.system
    }

    fn split(self) -> CpuSplit {
        CpuSplit {
            user_seconds: self.user.as_secs_f64(),
            system_seconds: self.system.as_secs_f64(),
        }
    }
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;
    fn sub(self, other: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(other.user),
            system: self.system.saturating_sub(other.system),
        }
    }
}

impl std::ops::AddAssign for CpuTime {
    fn add_assign(&mut self, other: CpuTime) {
        self.user += other.user;
        self.system += other.system;
    }
}

/// CPU time of each kernel read of a sync, and the rest (the reconciler's
/// diff and bookkeeping, and the nftables diff): the nftables read on its
/// blocking thread, the others on the runtime's thread (see [`CpuTime`]).
#[derive(Clone, Copy, Debug, Default)]
struct StageCpu {
    nft_read: CpuTime,
    link_read: CpuTime,
    ipvs_list: CpuTime,
    real_servers: CpuTime,
    rest: CpuTime,
}

impl StageCpu {
    /// What the pipeline's wrappers have counted so far (`rest` is zero).
    fn of(pipeline: &RealPipeline) -> StageCpu {
        StageCpu {
            nft_read: pipeline.nft.table_cpu,
            link_read: pipeline.link.link_cpu,
            ipvs_list: pipeline.ipvs.list_cpu,
            real_servers: pipeline.ipvs.real_servers_cpu,
            rest: CpuTime::default(),
        }
    }

    /// Adds one sync's stages, whose whole cost was `total`.
    fn add(&mut self, stages: StageCpu, total: CpuTime) {
        let reads = [
            stages.nft_read,
            stages.link_read,
            stages.ipvs_list,
            stages.real_servers,
        ];
        let mut read = CpuTime::default();
        for stage in reads {
            read += stage;
        }
        self.nft_read += stages.nft_read;
        self.link_read += stages.link_read;
        self.ipvs_list += stages.ipvs_list;
        self.real_servers += stages.real_servers;
        self.rest += total - read;
    }

    fn mean(self, runs: usize) -> IdleStages {
        let runs = u32::try_from(runs.max(1)).unwrap_or(u32::MAX);
        let mean = |c: CpuTime| CpuTime {
            user: c.user / runs,
            system: c.system / runs,
        };
        IdleStages {
            nft_read: mean(self.nft_read).split(),
            link_read: mean(self.link_read).split(),
            ipvs_list: mean(self.ipvs_list).split(),
            real_servers: mean(self.real_servers).split(),
            rest: mean(self.rest).split(),
        }
    }
}

impl std::ops::Sub for StageCpu {
    type Output = StageCpu;
    fn sub(self, other: StageCpu) -> StageCpu {
        StageCpu {
            nft_read: self.nft_read - other.nft_read,
            link_read: self.link_read - other.link_read,
            ipvs_list: self.ipvs_list - other.ipvs_list,
            real_servers: self.real_servers - other.real_servers,
            rest: self.rest - other.rest,
        }
    }
}
