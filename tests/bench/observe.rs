//! What the benchmark reads from the proxy binary: its JSON log line for a
//! finished sync, and sizes from `/proc/PID/status`.

/// The proxy's log line for a finished sync (see `proxy::log_sync`).
#[derive(Debug, PartialEq, Eq)]
pub struct SyncDone {
    pub kind: String,
    pub writes: usize,
    pub failed: usize,
}

impl SyncDone {
    /// Reads a JSON log line; `None` for any other line.
    pub fn parse(line: &str) -> Option<SyncDone> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = value.get("fields")?;
        if fields.get("message")?.as_str()? != "sync done" {
            return None;
        }
        let count = |name: &str| {
            fields
                .get(name)
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
        };
        Some(SyncDone {
            kind: fields.get("kind")?.as_str()?.to_owned(),
            writes: count("writes")?,
            failed: count("failed").unwrap_or(0),
        })
    }
}

/// The proxy's start-up breakdown (see `proxy::run` and `proxy::Startup`):
/// its two log lines, each read into the fields it carries.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StartupLog {
    /// From `run` to the loop: modules, sysctls, netlink sockets, the
    /// nftables table, the sources opened.
    pub prepare_ms: Option<f64>,
    /// Waiting for the sources' initial lists (the answers and decoding).
    pub waiting_for_lists_ms: Option<f64>,
    /// Applying the lists to the model.
    pub model_ms: Option<f64>,
    /// The first full sync.
    pub first_sync_ms: Option<f64>,
}

impl StartupLog {
    /// Takes in one JSON log line; other lines change nothing.
    pub fn read(&mut self, line: &str) {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        let Some(fields) = value.get("fields") else {
            return;
        };
        let ms = |name: &str| fields.get(name).and_then(serde_json::Value::as_f64);
        match fields.get("message").and_then(serde_json::Value::as_str) {
            Some("kernel prepared and sources opened") => self.prepare_ms = ms("elapsed_ms"),
            Some("first sync after start") => {
                self.waiting_for_lists_ms = ms("waiting_for_lists_ms");
                self.model_ms = ms("model_ms");
                self.first_sync_ms = ms("first_sync_ms");
            }
            _ => {}
        }
    }
}

/// A `/proc/PID/status` size line (`VmRSS:   12345 kB`) in KiB.
pub fn status_kib(status: &str, field: &str) -> Result<u64, String> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("/proc status has no {field} line in kB"))
}
