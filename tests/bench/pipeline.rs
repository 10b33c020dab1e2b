//! The proxy's state as its run loop holds it, minus the loop and the
//! timers: events go into the model, the services they touch are translated
//! again and handed to the reconciler (as `proxy::State::absorb` does), and
//! a sync sends the difference to whatever kernel it is given.

use std::time::{Duration, Instant};

use clap::Parser;
use kube_ipvs_proxy::cli::Cli;
use kube_ipvs_proxy::desired::{NftRuleset, ServiceName};
use kube_ipvs_proxy::kernel::link::VipMode;
use kube_ipvs_proxy::kernel::{AddressKernel, ConntrackKernel, IpvsKernel, NftKernel};
use kube_ipvs_proxy::model::{Changes, Model, Spent};
use kube_ipvs_proxy::proxy::{set_desired, Kernel, TranslationFeed};
use kube_ipvs_proxy::reconcile::{Ownership, Reconciler, SyncReport};
use kube_ipvs_proxy::source::{SourceEvent, Update};
use kube_ipvs_proxy::translate::{translate_each, NodeFacts, TranslateConfig};

use crate::synthetic::{self, Scale};

/// Model, translation settings and reconciler over one kernel: IPVS,
/// kube-ipvs0, the nftables table and conntrack, synced as the run loop
/// syncs them (`proxy::Kernel::sync`).
pub struct Pipeline<K, A, N, C> {
    model: Model,
    node: NodeFacts,
    translate: TranslateConfig,
    ruleset: NftRuleset,
    pub reconciler: Reconciler,
    /// How the link binds VIPs (`--ipvs-vip-mode`): it decides whether the
    /// cold sync translates as it goes (see `Kernel::sync_feeding`).
    vip_mode: VipMode,
    pub ipvs: K,
    pub link: A,
    pub nft: N,
    pub conntrack: C,
}

impl<K: IpvsKernel, A: AddressKernel, N: NftKernel, C: ConntrackKernel> Pipeline<K, A, N, C> {
    /// An empty pipeline for the synthetic node (IPv4, no NodePort
    /// addresses), whose link binds VIPs as `vip_mode`.
    pub fn new(ipvs: K, link: A, nft: N, conntrack: C, vip_mode: VipMode) -> Self {
        Pipeline {
            model: Model::new(synthetic::NODE_NAME),
            node: NodeFacts {
                name: synthetic::NODE_NAME.into(),
                node_addresses: Vec::new(),
                local_addresses: Vec::new(),
                ipv4: true,
                ipv6: false,
            },
            translate: TranslateConfig::default(),
            ruleset: NftRuleset::default(),
            reconciler: default_reconciler(),
            vip_mode,
            ipvs,
            link,
            nft,
            conntrack,
        }
    }

    /// The run loop's first full sync: the services the initial lists
    /// brought are translated and handed over as the sync asks for them
    /// (`proxy::Kernel::sync_feeding`).
    async fn first_sync(&mut self, names: Vec<ServiceName>, spent: Spent) -> SyncReport {
        let mut kernel = Kernel {
            ipvs: &mut self.ipvs,
            link: &mut self.link,
            nft: &mut self.nft,
            conntrack: &mut self.conntrack,
        };
        let (model, node, translate) = (&self.model, &self.node, &self.translate);
        let mut feed =
            TranslationFeed::new(model, node, translate, names, set_desired).with_spent(spent);
        kernel
            .sync_feeding(
                &mut self.reconciler,
                &self.ruleset,
                true,
                self.vip_mode,
                &mut feed,
            )
            .await
    }

    /// One sync of every subsystem, as the run loop does it.
    async fn sync(&mut self, full: bool) -> SyncReport {
        let mut kernel = Kernel {
            ipvs: &mut self.ipvs,
            link: &mut self.link,
            nft: &mut self.nft,
            conntrack: &mut self.conntrack,
        };
        kernel
            .sync(&mut self.reconciler, &self.ruleset, true, full)
            .await
    }

    /// The events of a source's first list of the whole scale.
    pub fn initial_list(scale: Scale) -> Vec<SourceEvent> {
        vec![
            SourceEvent::node(Update::Replace(vec![synthetic::node()])),
            SourceEvent::service(Update::Replace(synthetic::services(scale))),
            SourceEvent::slice(Update::Replace(
                synthetic::endpoint_slices(scale)
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            )),
            SourceEvent::Synced,
        ]
    }

    /// Folds events into the model and hands what they touched to the
    /// reconciler.
    pub fn absorb(&mut self, events: Vec<SourceEvent>) -> Result<(), String> {
        let (names, _) = self.model_names(events)?;
        let translations = translate_each(&self.model, &names, &self.node, &self.translate);
        for (name, translation) in names.into_iter().zip(translations) {
            set_desired(&mut self.reconciler, name, translation);
        }
        Ok(())
    }

    /// Folds events into the model and returns the services they touched
    /// (every one, for a list), and the lists' API objects, which the run
    /// loop's first sync frees as it goes. Synthetic objects are never
    /// rejected; if one is, the benchmark is wrong and says so.
    fn model_names(
        &mut self,
        events: Vec<SourceEvent>,
    ) -> Result<(Vec<ServiceName>, Spent), String> {
        let mut changes = Changes::default();
        let mut spent = Spent::default();
        for event in events {
            changes.merge(self.model.apply_keeping(event, &mut spent));
        }
        if let Some(error) = changes.errors.first() {
            return Err(format!("the model rejected a synthetic object: {error}"));
        }
        let names = if changes.all {
            self.model.services().map(|s| s.name.clone()).collect()
        } else {
            changes.services.into_iter().collect()
        };
        Ok((names, spent))
    }

    /// The source's first list through the first full sync into an empty
    /// kernel (empty IPVS, kube-ipvs0 with no VIP, and the nftables table
    /// with no element, as `run` leaves the kernel before its first sync),
    /// which translates the services inside the sync, as the run loop's
    /// does: as it goes with VIPs as local routes, first with addresses.
    pub async fn cold_sync(&mut self, events: Vec<SourceEvent>) -> Result<Timed, String> {
        let started = Instant::now();
        let (names, spent) = self.model_names(events)?;
        let absorbed = started.elapsed();
        let report = self.first_sync(names, spent).await;
        clean(Timed::since(started, absorbed, report), "cold sync")
    }

    /// One source event through an incremental sync to the kernel's ACK.
    pub async fn change(&mut self, event: SourceEvent) -> Result<Timed, String> {
        let started = Instant::now();
        self.absorb(vec![event])?;
        let absorbed = started.elapsed();
        let report = self.sync(false).await;
        clean(Timed::since(started, absorbed, report), "incremental sync")
    }

    /// A periodic full verification.
    pub async fn resync(&mut self) -> Result<Timed, String> {
        let started = Instant::now();
        let report = self.sync(true).await;
        clean(Timed::since(started, Duration::ZERO, report), "full resync")
    }
}

/// A reconciler as the binary sets one up with its default flags: real
/// servers verified in a rolling window over `--ipvs-verify-period`.
fn default_reconciler() -> Reconciler {
    let mut reconciler = Reconciler::new(Ownership::default());
    reconciler.set_verify_rounds(verify_rounds());
    reconciler
}

/// The full syncs per verify period of the binary's default flags.
pub fn verify_rounds() -> u64 {
    Cli::parse_from(["kube-ipvs-proxy"]).options.verify_rounds()
}

/// The event that gives service `i` its extra endpoint (or takes it away).
pub fn endpoint_change(scale: Scale, i: usize, with_extra: bool) -> SourceEvent {
    SourceEvent::slice(Update::Apply(
        synthetic::endpoint_slice(scale, i, with_extra).into(),
    ))
}

/// The event that deletes service `i`, or creates it again.
pub fn service_change(i: usize, present: bool) -> SourceEvent {
    let service = synthetic::service(i);
    SourceEvent::service(if present {
        Update::Apply(service)
    } else {
        Update::Delete(service)
    })
}

/// A sync's report and how long it took from the first event.
#[derive(Debug)]
pub struct Timed {
    /// When the first event went into the model.
    pub started: Instant,
    pub elapsed: Duration,
    /// Of which before the sync: in the model, and for an incremental sync
    /// in translate and `set_service` too (a cold sync translates in the
    /// sync, as the run loop's first full sync does).
    pub absorbing: Duration,
    pub report: SyncReport,
}

impl Timed {
    fn since(started: Instant, absorbing: Duration, report: SyncReport) -> Self {
        Timed {
            started,
            elapsed: started.elapsed(),
            absorbing,
            report,
        }
    }
}

fn clean(timed: Timed, what: &str) -> Result<Timed, String> {
    match timed.report.errors.first() {
        None => Ok(timed),
        Some(error) => Err(format!(
            "{what}: {} of {} writes failed, first: {error}",
            timed.report.failed, timed.report.writes
        )),
    }
}
