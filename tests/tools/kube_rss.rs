//! Memory of the in-cluster source and the model alone, without a kernel:
//! the counterpart of `manifests_rss` for the API server path.
//!
//! Two processes, so that the server's copy of the objects is not counted:
//!
//! ```text
//! cargo run --release --example kube_rss -- serve 10000 10   # prints its URL
//! cargo run --release --example kube_rss -- watch URL
//! cargo run --release --example kube_rss -- sync URL
//! ```
//!
//! `serve` holds the benchmark's synthetic state in the test API server
//! (list in pages, then watch, over HTTP). `watch` lists and watches it as
//! the proxy does, folds the events into a [`Model`], and once synced prints
//! VmHWM (peak) and VmRSS (steady, after the heap's free pages are released)
//! from /proc/self/status. `sync` goes on as the run loop's first sync does:
//! a full sync into kernels that accept every write and keep nothing, which
//! translates and hands over the services as it goes, printing the peak
//! after each step.

// The benchmark's state and the tests' API server, included as they are.
#[allow(dead_code, clippy::all, reason = "only part of each is used here")]
#[path = "../support/apiserver.rs"]
mod apiserver;
#[allow(dead_code, clippy::all, reason = "only part of each is used here")]
#[path = "../bench/synthetic.rs"]
mod synthetic;

use futures::StreamExt;
use kube_ipvs_proxy::desired::{FlowFilter, NftChange, NftElement, NftRuleset, Op};
use kube_ipvs_proxy::kernel::link::VipMode;
use kube_ipvs_proxy::kernel::{
    AddressKernel, ConntrackKernel, IpvsKernel, KernelError, KernelVirtualServer, NftKernel,
};
use kube_ipvs_proxy::model::Model;
use kube_ipvs_proxy::proxy::{set_desired, Kernel, TranslationFeed};
use kube_ipvs_proxy::reconcile::{Ownership, Reconciler};
use kube_ipvs_proxy::translate::{NodeFacts, TranslateConfig};

mod proc_status;
use proc_status::status_kib;

fn usage() -> ! {
    eprintln!("usage: kube_rss serve SERVICES ENDPOINTS | kube_rss watch|sync URL");
    std::process::exit(2);
}

async fn serve(services: usize, endpoints: usize) {
    let scale = synthetic::Scale {
        services,
        endpoints,
    };
    let server = apiserver::TestApiServer::start().await;
    server.apply(&synthetic::node());
    for i in 0..scale.services {
        server.apply(&synthetic::service(i));
        server.apply(&synthetic::endpoint_slice(scale, i, false));
    }
    // One copy of each object, as etcd keeps after compaction.
    server.compact_history();
    println!("{}", server.url());
    std::future::pending::<()>().await;
}

/// The model of the API server at `url` once every kind has listed.
async fn listed_model(url: &str) -> Model {
    let client = match kube_ipvs_proxy::source::kube::client(
        None,
        Some(url),
        &kube_ipvs_proxy::metrics::Metrics::new(),
    )
    .await
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(1);
        }
    };
    let mut events = Box::pin(kube_ipvs_proxy::source::kube::watch(
        client,
        synthetic::NODE_NAME,
    ));
    let mut model = Model::new(synthetic::NODE_NAME);
    while let Some(event) = events.next().await {
        if model.apply(event).synced {
            break;
        }
    }
    model
}

async fn watch(url: &str) {
    let model = listed_model(url).await;
    let peak = status_kib("VmHWM:");
    kube_ipvs_proxy::heap::release_free_memory();
    println!(
        "services {} VmHWM {peak} kB VmRSS {} kB",
        model.service_count(),
        status_kib("VmRSS:")
    );
}

/// Kernels that accept every write and keep nothing: what remains is the
/// proxy's own memory.
#[derive(Debug)]
struct NullKernel;

impl IpvsKernel for NullKernel {
    async fn dump(&mut self) -> Result<Vec<KernelVirtualServer>, KernelError> {
        Ok(Vec::new())
    }

    async fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
        ops.iter().map(|_| Ok(())).collect()
    }

    async fn list_virtual_servers(
        &mut self,
    ) -> Result<Vec<kube_ipvs_proxy::kernel::ListedVirtualServer>, KernelError> {
        Ok(Vec::new())
    }

    async fn list_real_servers(
        &mut self,
        keys: &[kube_ipvs_proxy::desired::VirtualServerKey],
    ) -> Result<Vec<kube_ipvs_proxy::kernel::ListedRealServers>, KernelError> {
        Ok(keys.iter().map(|_| Default::default()).collect())
    }
}

impl AddressKernel for NullKernel {
    async fn ensure_link(&mut self) -> Result<Vec<std::net::IpAddr>, KernelError> {
        Ok(Vec::new())
    }

    async fn add_address(&mut self, _: std::net::IpAddr) -> Result<(), KernelError> {
        Ok(())
    }

    async fn add_addresses(&mut self, addrs: &[std::net::IpAddr]) -> Vec<Result<(), KernelError>> {
        addrs.iter().map(|_| Ok(())).collect()
    }

    async fn del_address(&mut self, _: std::net::IpAddr) -> Result<(), KernelError> {
        Ok(())
    }
}

impl NftKernel for NullKernel {
    async fn ensure_ruleset(&mut self, _: &NftRuleset) -> Result<Vec<NftElement>, KernelError> {
        Ok(Vec::new())
    }

    async fn dump_elements(&mut self) -> Result<Vec<NftElement>, KernelError> {
        Ok(Vec::new())
    }

    async fn generation(&mut self) -> Option<u32> {
        None
    }

    async fn apply(&mut self, _: &[NftChange]) -> Result<(), KernelError> {
        Ok(())
    }

    async fn delete_table(&mut self) -> Result<bool, KernelError> {
        Ok(false)
    }
}

impl ConntrackKernel for NullKernel {
    async fn delete_flows(&mut self, _: &[FlowFilter]) -> Result<usize, KernelError> {
        Ok(0)
    }
}

async fn sync(url: &str) {
    let model = listed_model(url).await;
    println!("listed: VmHWM {} kB", status_kib("VmHWM:"));
    let node = NodeFacts {
        name: synthetic::NODE_NAME.into(),
        node_addresses: Vec::new(),
        local_addresses: Vec::new(),
        ipv4: true,
        ipv6: false,
    };
    let names: Vec<_> = model.services().map(|s| s.name.clone()).collect();
    let translate = TranslateConfig::default();
    let mut feed = TranslationFeed::new(&model, &node, &translate, names, set_desired);
    let mut reconciler = Reconciler::new(Ownership::default());
    let mut kernel = Kernel {
        ipvs: &mut NullKernel,
        link: &mut NullKernel,
        nft: &mut NullKernel,
        conntrack: &mut NullKernel,
    };
    let report = kernel
        .sync_feeding(
            &mut reconciler,
            &NftRuleset::default(),
            true,
            VipMode::default(),
            &mut feed,
        )
        .await;
    let peak = status_kib("VmHWM:");
    kube_ipvs_proxy::heap::release_free_memory();
    println!(
        "synced: writes {} failed {} VmHWM {peak} kB VmRSS {} kB",
        report.writes,
        report.failed,
        status_kib("VmRSS:")
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Single-threaded, as the proxy's own runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", services, endpoints] => {
            let (Ok(services), Ok(endpoints)) = (services.parse(), endpoints.parse()) else {
                usage()
            };
            runtime.block_on(serve(services, endpoints));
        }
        ["watch", url] => runtime.block_on(watch(url)),
        ["sync", url] => runtime.block_on(sync(url)),
        _ => usage(),
    }
}
