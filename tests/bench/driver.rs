//! The benchmark driver behind `tests/bench.sh` (issue 4). Each subcommand
//! measures one phase at one scale in the VM and prints one JSON line;
//! `table` turns a run's lines into the table on the host.
//!
//! `cargo bench` alone runs nothing here: the phases need a kernel with
//! IPVS, which only the VM has. Use `tests/bench.sh`.

mod binary;
mod kernel_state;
mod observe;
mod phases;
mod pipeline;
mod record;
mod synthetic;
mod table;

// The test API server of tests/kube_source.rs, included as it is: the
// benchmark uses only part of its API, and its lints are its own target's.
#[allow(dead_code, clippy::all)]
#[path = "../support/apiserver.rs"]
mod apiserver;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube_ipvs_proxy::kernel::link::VipMode;

use record::{Environment, Failure, Record, SourceMode};
use synthetic::Scale;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "kube-ipvs-proxy benchmark phases (run tests/bench.sh)"
)]
struct Cli {
    #[command(subcommand)]
    phase: Option<Phase>,
    /// How the proxy binds VIPs in every phase that binds them (the raw
    /// floors of the VIPs and of the whole state, the pipeline, the binary).
    #[arg(long, value_enum, global = true, default_value_t = VipMode::Address)]
    vip_mode: VipMode,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Subcommand)]
enum Phase {
    /// Records the kernel, CPU mode and date.
    Env {
        #[arg(long)]
        cpu_mode: String,
        /// UTC date and time, as `date -u '+%F %H:%M'` prints it.
        #[arg(long)]
        date: String,
    },
    /// Times `ipvsadm -R` loading the scale.
    Ipvsadm {
        #[arg(long)]
        scale: Scale,
        /// Where to write the rules file.
        #[arg(long)]
        rules: PathBuf,
    },
    /// Times one netlink-ipvs batch of the scale's operations.
    Raw {
        #[arg(long)]
        scale: Scale,
    },
    /// Times the scale's VIP bindings, alone and beside the IPVS batch.
    RawAddresses {
        #[arg(long)]
        scale: Scale,
    },
    /// Times the whole kernel state: the scale's nftables set elements in one
    /// transaction, then the IPVS batch and the VIP bindings at once.
    RawState {
        #[arg(long)]
        scale: Scale,
    },
    /// The proxy's pipeline in-process: cold sync, single changes, idle resync.
    Proxy {
        #[arg(long)]
        scale: Scale,
        /// Add-then-remove trials of the single-change latency.
        #[arg(long, default_value_t = 100)]
        trials: usize,
        /// Idle resyncs; the median is reported.
        #[arg(long, default_value_t = 3)]
        idle_runs: usize,
    },
    /// A cold sync alone: another sample for the medians the goals compare.
    Cold {
        #[arg(long)]
        scale: Scale,
    },
    /// The binary's memory after its first sync.
    Rss {
        #[arg(long)]
        scale: Scale,
        #[arg(long, value_enum)]
        mode: Mode,
        /// The kube-ipvs-proxy executable.
        #[arg(long)]
        proxy_bin: PathBuf,
        /// Where manifests are written.
        #[arg(long)]
        workdir: PathBuf,
        /// Where the binary's log is copied.
        #[arg(long)]
        log: PathBuf,
    },
    /// Prints the table of a results file (JSON lines); exits 1 if a phase failed.
    Table { results: PathBuf },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Mode {
    Manifests,
    Cluster,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(phase) = cli.phase else {
        eprintln!("the IPVS benchmark needs the VM: run tests/bench.sh");
        return ExitCode::SUCCESS;
    };
    if let Phase::Table { results } = &phase {
        return print_table(results);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (scale, what) = phase.describe();
    let record = runtime
        .block_on(measure(phase, cli.vip_mode))
        .unwrap_or_else(|error| Record::Failed(Failure { scale, what, error }));
    let failed = matches!(record, Record::Failed(_));
    match serde_json::to_string(&record) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("serializing the result: {e}");
            return ExitCode::FAILURE;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

impl Phase {
    /// The scale and the phase's name, for a failure record.
    fn describe(&self) -> (Option<Scale>, String) {
        match self {
            Phase::Env { .. } => (None, "environment".into()),
            Phase::Ipvsadm { scale, .. } => (Some(*scale), "ipvsadm -R".into()),
            Phase::Raw { scale } => (Some(*scale), "raw floor".into()),
            Phase::RawAddresses { scale } => (Some(*scale), "raw floor, VIPs".into()),
            Phase::RawState { scale } => (Some(*scale), "raw floor, whole state".into()),
            Phase::Proxy { scale, .. } => (Some(*scale), "proxy in-process".into()),
            Phase::Cold { scale } => (Some(*scale), "cold sync, again".into()),
            Phase::Rss { scale, mode, .. } => (
                Some(*scale),
                format!("binary RSS, {}", SourceMode::from(*mode).label()),
            ),
            Phase::Table { .. } => (None, "table".into()),
        }
    }
}

impl From<Mode> for SourceMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Manifests => SourceMode::Manifests,
            Mode::Cluster => SourceMode::Cluster,
        }
    }
}

async fn measure(phase: Phase, vip_mode: VipMode) -> Result<Record, String> {
    Ok(match phase {
        Phase::Env { cpu_mode, date } => {
            Record::Environment(environment(cpu_mode, date, vip_mode)?)
        }
        Phase::Ipvsadm { scale, rules } => {
            Record::Ipvsadm(phases::ipvsadm_restore(scale, &rules).await?)
        }
        Phase::Raw { scale } => Record::RawFloor(phases::raw_floor(scale).await?),
        Phase::RawAddresses { scale } => {
            Record::AddressFloor(phases::address_floor(scale, vip_mode).await?)
        }
        Phase::RawState { scale } => {
            Record::StateFloor(phases::state_floor(scale, vip_mode).await?)
        }
        Phase::Proxy {
            scale,
            trials,
            idle_runs,
        } => Record::Proxy(Box::new(
            phases::proxy(scale, trials, idle_runs, vip_mode).await?,
        )),
        Phase::Cold { scale } => Record::Cold(phases::cold(scale, vip_mode).await?),
        Phase::Rss {
            scale,
            mode,
            proxy_bin,
            workdir,
            log,
        } => Record::Rss(
            binary::rss(scale, mode.into(), vip_mode, &proxy_bin, &workdir, &log).await?,
        ),
        Phase::Table { .. } => return Err("table is not a measurement".into()),
    })
}

fn environment(cpu_mode: String, date: String, vip_mode: VipMode) -> Result<Environment, String> {
    let read =
        |path: &str| std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"));
    let kernel = read("/proc/sys/kernel/osrelease")?.trim().to_owned();
    let meminfo = read("/proc/meminfo")?;
    let memory_mib = observe::status_kib(&meminfo, "MemTotal")? / 1024;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let clocksource = read("/sys/devices/system/clocksource/clocksource0/current_clocksource")?
        .trim()
        .to_owned();
    Ok(Environment {
        kernel,
        cpu_mode,
        cpus,
        memory_mib,
        date,
        vip_mode: vip_mode.to_string(),
        clocksource: Some(clocksource),
    })
}

fn print_table(path: &PathBuf) -> ExitCode {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("opening {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let mut records = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                eprintln!("reading {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(&line) {
            Ok(record) => records.push(record),
            Err(e) => {
                eprintln!(
                    "{}:{}: not a result line ({e}): {line}",
                    path.display(),
                    n + 1
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let results = table::Results::new(records);
    print!("{}", results.render());
    if results.has_failures() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
