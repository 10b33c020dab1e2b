//! The `kube-ipvs-proxy` binary at a scale: started on a manifests
//! directory or against the test API server, watched until its first full
//! sync is done, then measured from /proc (VmHWM, VmRSS) and checked against
//! the kernel.

use std::collections::VecDeque;
use std::io::{BufRead, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube_ipvs_proxy::kernel::link::VipMode;
use tokio::sync::mpsc;

use crate::apiserver::TestApiServer;
use crate::kernel_state::{self, Ipvs};
use crate::observe::{status_kib, StartupLog, SyncDone};
use crate::record::{RssRun, SourceMode, Startup};
use crate::synthetic::{self, Scale};

/// How long the binary may take to converge before the run is a failure.
const SYNC_DEADLINE: Duration = Duration::from_secs(900);
/// The binary's `--ipvs-sync-period` here: short, so that its steady RSS
/// is read after an idle full sync, as a node's is for most of its life
/// (the default period is 30 s).
const SYNC_PERIOD: &str = "5s";
/// How long the binary idles after its first idle full sync before RSS is
/// read: well inside [`SYNC_PERIOD`], so that no sync runs meanwhile.
const SETTLE: Duration = Duration::from_secs(2);
/// Log lines kept to explain a failure.
const TAIL: usize = 20;

/// The CA a kubeconfig names, as a pod's service account always has one: a
/// self-signed certificate made for the benchmark (its key was thrown away).
/// The test API server speaks plain HTTP, so it is never used to verify;
/// without any CA, the client would load the machine's whole trust store
/// at start, which the VM reads over its 9p root: 3 s per start under TCG.
const BENCH_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBnDCCAUOgAwIBAgIUCnhw4bMTQ+Wl3MMq/6iPWRW3qc8wCgYIKoZIzj0EAwIw
IzEhMB8GA1UEAwwYa3ViZS1pcHZzLXByb3h5IGJlbmNoIENBMCAXDTI2MTIwMzIx
MTAwN1oYDzIxMjYxMTA5MjExMDA3WjAjMSEwHwYDVQQDDBhrdWJlLWlwdnMtcHJv
eHkgYmVuY2ggQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAS3BY1DVppW1DUF
qwRQEbXEjIm4/CE+0qYdaRBCxSg1UvEP3orbUTB3nACBbF7zuCbM9W3jgqpn0riK
QXBZTkoMo1MwUTAdBgNVHQ4EFgQU4sQWp9hxUGWLffy/+pmBpN77w/4wHwYDVR0j
BBgwFoAU4sQWp9hxUGWLffy/+pmBpN77w/4wDwYDVR0TAQH/BAUwAwEB/zAKBggq
hkjOPQQDAgNHADBEAiBqvCsru8xS6NhK220x5unTqKZEZEddvCBYXgCw8s82vAIg
J/BqEkkmqhx+30kAqfgRMK5rzkr/tVAJcQbVBGFi/RM=
-----END CERTIFICATE-----
";

/// A kubeconfig for the test API server at `url`, with [`BENCH_CA`], as
/// the binary reads one in a cluster.
fn write_kubeconfig(url: &str, workdir: &Path) -> Result<std::path::PathBuf, String> {
    let ca = workdir.join("bench-ca.pem");
    let kubeconfig = workdir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: bench\n  cluster:\n    server: {url}\n    certificate-authority: {}\n\
         users:\n- name: bench\n  user: {{}}\n\
         contexts:\n- name: bench\n  context:\n    cluster: bench\n    user: bench\n\
         current-context: bench\n",
        ca.display()
    );
    for (path, contents) in [(&ca, BENCH_CA), (&kubeconfig, text.as_str())] {
        std::fs::write(path, contents).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(kubeconfig)
}

/// Kills the child however the run ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One run of the binary at `scale` in `mode`; `workdir` holds the
/// manifests, and the binary's log is copied to `log`.
pub async fn rss(
    scale: Scale,
    mode: SourceMode,
    vip_mode: VipMode,
    proxy_bin: &Path,
    workdir: &Path,
    log: &Path,
) -> Result<RssRun, String> {
    let mut log = std::io::BufWriter::new(
        std::fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?,
    );
    let ipvs = Ipvs::connect().await?;
    kernel_state::reset(&ipvs).await?;

    let mut args: Vec<String> = vec![
        "--hostname-override".into(),
        synthetic::NODE_NAME.into(),
        "--logging-format".into(),
        "json".into(),
        "--ipvs-vip-mode".into(),
        vip_mode.to_string(),
        "--ipvs-sync-period".into(),
        SYNC_PERIOD.into(),
    ];
    // Kept alive until the run ends: the binary watches it.
    let mut apiserver = None;
    match mode {
        SourceMode::Manifests => {
            let dir = workdir.join(format!("manifests-{}", scale.arg()));
            write_manifests(scale, &dir)?;
            args.extend(["--manifests".into(), dir.display().to_string()]);
        }
        SourceMode::Cluster => {
            let server = populated_apiserver(scale).await;
            let kubeconfig = write_kubeconfig(&server.url(), workdir)?;
            args.extend(["--kubeconfig".into(), kubeconfig.display().to_string()]);
            apiserver = Some(server);
        }
    }

    let started = Instant::now();
    let mut child = Command::new(proxy_bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", proxy_bin.display()))?;
    let pid = child.id();
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let lines_tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(lines_tx);
    let mut child = Running(child);

    let mut tail = VecDeque::with_capacity(TAIL);
    let mut startup = StartupLog::default();
    let synced = loop {
        let remaining = SYNC_DEADLINE.saturating_sub(started.elapsed());
        let line = match tokio::time::timeout(remaining, lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                let status = child
                    .0
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                return Err(format!(
                    "the proxy exited ({status}) before its first full sync; last lines:\n{}",
                    Vec::from(tail).join("\n")
                ));
            }
            Err(_) => {
                return Err(format!(
                    "no full sync within {} s; last lines:\n{}",
                    SYNC_DEADLINE.as_secs(),
                    Vec::from(tail).join("\n")
                ))
            }
        };
        let _ = writeln!(log, "{line}");
        startup.read(&line);
        if let Some(sync) = SyncDone::parse(&line) {
            if sync.kind == "full" {
                break sync;
            }
        }
        if tail.len() == TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    };
    let start_to_synced_seconds = started.elapsed().as_secs_f64();
    if synced.failed > 0 || synced.writes < scale.ipvs_objects() {
        return Err(format!(
            "the first full sync made {} writes with {} failures; {} IPVS objects wanted",
            synced.writes,
            synced.failed,
            scale.ipvs_objects()
        ));
    }
    // Steady state is after the next full sync, which finds nothing to do:
    // what it reads (the virtual servers' counters among it) and keeps is
    // a node's memory from then on.
    let idle = loop {
        let remaining = SYNC_DEADLINE.saturating_sub(started.elapsed());
        let line = match tokio::time::timeout(remaining, lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => return Err("the proxy exited after its first full sync".to_owned()),
            Err(_) => {
                return Err(format!(
                    "no second full sync within {} s of the start",
                    SYNC_DEADLINE.as_secs()
                ))
            }
        };
        let _ = writeln!(log, "{line}");
        if let Some(sync) = SyncDone::parse(&line) {
            if sync.kind == "full" {
                break sync;
            }
        }
    };
    if idle.writes > 0 || idle.failed > 0 {
        return Err(format!(
            "the full sync after the first made {} writes with {} failures; an idle one makes none",
            idle.writes, idle.failed
        ));
    }
    // Keep draining the log so the child never blocks on a full pipe.
    let drain = tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            let _ = writeln!(log, "{line}");
        }
    });
    tokio::time::sleep(SETTLE).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    let peak_kib = status_kib(&status, "VmHWM")?;
    let steady_kib = status_kib(&status, "VmRSS")?;
    kernel_state::verify(&ipvs, scale, &[])
        .await
        .map_err(|e| format!("after the binary's first sync: {e}"))?;
    drop(child);
    drain.abort();
    drop(apiserver);
    kernel_state::reset(&ipvs).await?;
    let breakdown = (|| {
        Some(Startup {
            prepare_seconds: startup.prepare_ms? / 1e3,
            lists_seconds: startup.waiting_for_lists_ms? / 1e3,
            model_seconds: startup.model_ms? / 1e3,
            first_sync_seconds: startup.first_sync_ms? / 1e3,
        })
    })();
    if breakdown.is_none() {
        return Err(format!(
            "the binary's log lacks its start-up breakdown before its first full sync: {startup:?}"
        ));
    }
    Ok(RssRun {
        scale,
        mode,
        start_to_synced_seconds,
        peak_kib,
        steady_kib,
        startup: breakdown,
    })
}

fn write_manifests(scale: Scale, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for (name, value) in synthetic::manifest_files(scale) {
        let path = dir.join(name);
        let file = std::fs::File::create(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        serde_json::to_writer(std::io::BufWriter::new(file), &value)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A test API server holding the node and the scale, its history compacted
/// so that it keeps one copy of each object, as etcd after compaction.
async fn populated_apiserver(scale: Scale) -> TestApiServer {
    let server = TestApiServer::start().await;
    server.apply(&synthetic::node());
    for i in 0..scale.services {
        server.apply(&synthetic::service(i));
        server.apply(&synthetic::endpoint_slice(scale, i, false));
    }
    server.compact_history();
    server
}
