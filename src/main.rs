use std::process::ExitCode;

use kube_ipvs_proxy::cli::{Command, LogFormat};
use kube_ipvs_proxy::config::{self, ArgsError};
use kube_ipvs_proxy::proxy;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let (cli, applied) = match config::parse_args(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(ArgsError::Flags(e)) => e.exit(),
        Err(ArgsError::Config(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = match cli.to_run() {
        Ok(command) => command,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.options.logging_format, applied.log_level);
    for warning in &applied.warnings {
        tracing::warn!("{warning}");
    }
    // Before any thread starts or the heap grows (see kube_ipvs_proxy::heap).
    if let Err(error) = kube_ipvs_proxy::heap::use_small_pages() {
        tracing::warn!(%error, "cannot opt out of transparent huge pages; RSS may read up to 2 MiB higher per huge page");
    }
    // One task owns the proxy's state; a single-threaded runtime is all it
    // needs and keeps the footprint small.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let opts = &cli.options;
    let result = runtime.block_on(async {
        match command {
            Command::Run => proxy::run(opts).await,
            Command::Plan => proxy::plan(opts).await.map(|text| print!("{text}")),
            Command::Cleanup => proxy::cleanup(opts).await,
            Command::Prepare => proxy::prepare(opts),
            Command::CleanupUpstream { dry_run } => {
                kube_ipvs_proxy::kernel::upstream::cleanup_command(dry_run)
                    .map(|text| print!("{text}"))
                    .map_err(proxy::Error::from)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            ExitCode::FAILURE
        }
    }
}

/// Logs at `RUST_LOG`'s filter, else at `-v` or the configuration file's
/// `logging.verbosity`, else at info.
fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(false).init(),
    }
}
