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

/// A `/proc/PID/status` size line (`VmRSS:   12345 kB`) in KiB.
pub fn status_kib(status: &str, field: &str) -> Result<u64, String> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("/proc status has no {field} line in kB"))
}
