//! Memory of the standalone source and the model alone, without a kernel:
//! reads a manifests directory into a [`Model`] as the proxy does, then
//! prints VmHWM (peak) and VmRSS (steady, after the heap's free pages are
//! released) from /proc/self/status.
//!
//! `cargo run --release --example manifests_rss -- DIR [NODE]`

use kube_ipvs_proxy::model::Model;
use kube_ipvs_proxy::source::manifests::ManifestDir;

mod proc_status;
use proc_status::status_kib;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: manifests_rss DIR [NODE]");
        std::process::exit(2);
    };
    let node = args.next().unwrap_or_else(|| "bench-node".to_owned());
    let mut model = Model::new(node);
    // Kept to the end, as the daemon keeps it between rescans.
    let mut state = ManifestDir::new(dir.into());
    let rescan = state.rescan(&mut |event| {
        model.apply(event);
    });
    kube_ipvs_proxy::heap::release_free_memory();
    println!(
        "services {} errors {} VmHWM {} kB VmRSS {} kB",
        model.service_count(),
        rescan.errors.len(),
        status_kib("VmHWM:"),
        status_kib("VmRSS:")
    );
    drop(state);
}
