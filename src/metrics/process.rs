//! The `process_*` families every Kubernetes component exports (client_golang's
//! process collector), read from procfs at each scrape: the "Kubernetes /
//! Proxy" dashboard plots kube-proxy's memory and CPU from
//! `process_resident_memory_bytes` and `process_cpu_seconds_total`, and
//! monitoring agents (Metricbeat's and Netdata's kube-proxy modules among
//! them) read the rest.
//!
//! A file that cannot be read or parsed leaves its families out of that
//! scrape, and says why in the log, once per kind of failure: a scrape never
//! fails for it and never shows a made-up value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The fields of `/proc/PID/stat` these families need, in the kernel's units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// User-mode CPU time, in clock ticks (field 14).
    pub utime: u64,
    /// Kernel-mode CPU time, in clock ticks (field 15).
    pub stime: u64,
    /// When the process started, in clock ticks after boot (field 22).
    pub starttime: u64,
    /// Virtual memory size in bytes (field 23).
    pub vsize: u64,
    /// Resident set size in pages (field 24).
    pub rss: u64,
}

/// Why a procfs file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// The file's contents are not what the kernel writes.
    #[error("{}: {what}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field and the value.
        what: String,
    },
}

/// Parses the text of `/proc/PID/stat`.
///
/// The second field is the command name in parentheses, which may itself
/// hold spaces and parentheses: the fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Result<Stat, String> {
    let after_comm = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| format!("no command name in parentheses in {:?}", short(text)))?;
    // Field 3 (the state) is the first after the command name.
    let fields: Vec<&str> = after_comm.split_ascii_whitespace().collect();
    let field = |number: usize, name: &str| -> Result<u64, String> {
        let value = fields
            .get(number - 3)
            .ok_or_else(|| format!("field {number} ({name}) is missing"))?;
        value
            .parse()
            .map_err(|_| format!("field {number} ({name}) is {value:?}, not a count"))
    };
    Ok(Stat {
        utime: field(14, "utime")?,
        stime: field(15, "stime")?,
        starttime: field(22, "starttime")?,
        vsize: field(23, "vsize")?,
        rss: field(24, "rss")?,
    })
}

/// The boot time in seconds since the epoch, from the text of `/proc/stat`.
pub fn parse_boot_time(text: &str) -> Result<u64, String> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .ok_or("no btime line")?;
    line.trim()
        .parse()
        .map_err(|_| format!("btime is {:?}, not a count of seconds", line.trim()))
}

/// At most this much of a file's text goes into an error.
fn short(text: &str) -> &str {
    let end = text.char_indices().nth(80).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

/// One scrape's values, in the families' units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// `process_cpu_seconds_total`.
    pub cpu_seconds: f64,
    /// `process_resident_memory_bytes`.
    pub resident_bytes: u64,
    /// `process_virtual_memory_bytes`.
    pub virtual_bytes: u64,
    /// `process_start_time_seconds`, since the epoch; `None` when
    /// `/proc/stat` gave no boot time.
    pub start_time_seconds: Option<f64>,
}

/// What the kernel says of the process whose procfs directory this is:
/// `/proc/self` for the collector, another process's in tests.
#[derive(Debug)]
pub struct Process {
    dir: PathBuf,
    /// `/proc/stat`'s `btime`, read once: the boot time does not move.
    boot_time: Result<u64, String>,
    /// Clock ticks per second and the page size, from `sysconf`.
    ticks_per_second: u64,
    page_size: u64,
    /// Whether each kind of [`Failure`] was logged already.
    logged: [AtomicBool; Failure::KINDS],
}

impl Process {
    /// The process at `dir` (a `/proc/PID` or `/proc/self`), on the system
    /// whose `/proc/stat` is `proc_stat`.
    pub fn new(dir: impl Into<PathBuf>, proc_stat: &Path) -> Process {
        let boot_time = std::fs::read_to_string(proc_stat)
            .map_err(|e| format!("reading {}: {e}", proc_stat.display()))
            .and_then(|text| {
                parse_boot_time(&text).map_err(|e| format!("{}: {e}", proc_stat.display()))
            });
        Process {
            dir: dir.into(),
            boot_time,
            ticks_per_second: sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100),
            page_size: sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096),
            logged: Default::default(),
        }
    }

    /// This process.
    pub fn current() -> Process {
        Process::new("/proc/self", Path::new("/proc/stat"))
    }

    /// CPU, memory and start time, from `stat` (and `/proc/stat`'s boot
    /// time).
    pub fn sample(&self) -> Result<Sample, ProcError> {
        let path = self.dir.join("stat");
        let text = std::fs::read_to_string(&path).map_err(|source| ProcError::Read {
            path: path.clone(),
            source,
        })?;
        let stat = parse_stat(&text).map_err(|what| ProcError::Parse {
            path: path.clone(),
            what,
        })?;
        let ticks = self.ticks_per_second as f64;
        let start = |boot_time: &u64| *boot_time as f64 + stat.starttime as f64 / ticks;
        Ok(Sample {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_bytes: stat.rss.saturating_mul(self.page_size),
            virtual_bytes: stat.vsize,
            start_time_seconds: self.boot_time.as_ref().ok().map(start),
        })
    }

    /// The number of open file descriptors: the entries of `fd`.
    pub fn open_fds(&self) -> Result<u64, ProcError> {
        let path = self.dir.join("fd");
        let read = |source| ProcError::Read {
            path: path.clone(),
            source,
        };
        let mut count = 0;
        for entry in std::fs::read_dir(&path).map_err(read)? {
            entry.map_err(read)?;
            count += 1;
        }
        Ok(count)
    }

    /// Logs `error` at warn the first time a failure of this `kind` happens.
    fn report(&self, kind: Failure, error: &dyn fmt::Display) {
        if !self.logged[kind as usize].swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "process metrics left out of /metrics (logged once)");
        }
    }
}

/// What a scrape could not read, each logged once.
#[derive(Clone, Copy)]
enum Failure {
    /// `stat`: CPU, memory and the start time.
    Stat,
    /// The `fd` directory.
    Fds,
    /// A resource limit.
    Limit,
    /// `/proc/stat`'s boot time: the start time alone.
    BootTime,
}

impl Failure {
    const KINDS: usize = 4;
}

fn sysconf(name: nix::unistd::SysconfVar) -> Option<u64> {
    let value = nix::unistd::sysconf(name).ok()??;
    u64::try_from(value).ok().filter(|v| *v > 0)
}

/// A resource's soft limit, or `None` if it cannot be read; unlimited reads
/// as the kernel's `RLIM_INFINITY`, as client_golang reports it.
fn soft_limit(resource: nix::sys::resource::Resource) -> Option<u64> {
    nix::sys::resource::getrlimit(resource)
        .ok()
        .map(|(soft, _hard)| soft)
}

/// Encodes one gauge family of one sample. Counts and sizes go in as
/// integers, as client_golang writes them; a limit may be the kernel's
/// RLIM_INFINITY, past `i64`, so limits go in as floats.
fn gauge<N>(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: N) -> fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A count as a gauge's integer.
fn integer(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The collector the registry encodes at each scrape.
#[derive(Debug)]
pub struct ProcessCollector(pub Process);

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let process = &self.0;
        match process.sample() {
            Ok(sample) => {
                let cpu = ConstCounter::new(sample.cpu_seconds);
                cpu.encode(encoder.encode_descriptor(
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds",
                    None,
                    cpu.metric_type(),
                )?)?;
                gauge(
                    &mut encoder,
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    integer(sample.resident_bytes),
                )?;
                gauge(
                    &mut encoder,
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes",
                    integer(sample.virtual_bytes),
                )?;
                match (sample.start_time_seconds, &process.boot_time) {
                    (Some(start), _) => gauge(
                        &mut encoder,
                        "process_start_time_seconds",
                        "Start time of the process since unix epoch in seconds",
                        start,
                    )?,
                    (None, Err(what)) => process.report(Failure::BootTime, what),
                    (None, Ok(_)) => {}
                }
            }
            Err(error) => process.report(Failure::Stat, &error),
        }
        match process.open_fds() {
            Ok(fds) => gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                integer(fds),
            )?,
            Err(error) => process.report(Failure::Fds, &error),
        }
        use nix::sys::resource::Resource;
        let limits = [
            (
                Resource::RLIMIT_NOFILE,
                "process_max_fds",
                "Maximum number of open file descriptors",
            ),
            (
                Resource::RLIMIT_AS,
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes",
            ),
        ];
        for (resource, name, help) in limits {
            match soft_limit(resource) {
                Some(limit) => gauge(&mut encoder, name, help, limit as f64)?,
                None => process.report(Failure::Limit, &format!("getrlimit({resource:?}) failed")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as Linux 6.1 writes it, for a command whose name holds a
    /// space and a parenthesis.
    const STAT: &str = "4242 (kube (ipvs) x) S 1 4242 4242 0 -1 4194560 1234 0 5 0 \
        250 75 0 0 20 0 3 0 98765 123456789 5120 18446744073709551615 1 1 0 0 0 0 0 4096 17664 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        assert_eq!(
            parse_stat(STAT),
            Ok(Stat {
                utime: 250,
                stime: 75,
                starttime: 98765,
                vsize: 123_456_789,
                rss: 5120,
            })
        );
    }

    #[test]
    fn a_bad_stat_names_the_field_and_the_value() {
        let bad = STAT.replace(" 250 75 ", " 250 x75 ");
        assert_eq!(
            parse_stat(&bad),
            Err("field 15 (stime) is \"x75\", not a count".to_owned())
        );
        assert_eq!(
            parse_stat("4242 (short) S 1 2 3"),
            Err("field 14 (utime) is missing".to_owned())
        );
        assert!(parse_stat("garbage")
            .unwrap_err()
            .contains("no command name"));
    }

    #[test]
    fn boot_time_is_the_btime_line() {
        let text = "cpu  1 2 3\nintr 5\nctxt 9\nbtime 1764000000\nprocesses 77\n";
        assert_eq!(parse_boot_time(text), Ok(1_764_000_000));
        assert_eq!(
            parse_boot_time("btime soon\n"),
            Err("btime is \"soon\", not a count of seconds".to_owned())
        );
        assert_eq!(parse_boot_time("cpu 1\n"), Err("no btime line".to_owned()));
    }

    /// A fake procfs directory whose `stat` says `STAT`.
    fn fake_proc(stat: &str) -> (tempfile::TempDir, Process) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stat"), stat).unwrap();
        std::fs::write(dir.path().join("proc_stat"), "btime 1764000000\n").unwrap();
        std::fs::create_dir(dir.path().join("fd")).unwrap();
        for fd in ["0", "1", "2", "7"] {
            std::fs::write(dir.path().join("fd").join(fd), "").unwrap();
        }
        let mut process = Process::new(dir.path(), &dir.path().join("proc_stat"));
        process.ticks_per_second = 100;
        process.page_size = 4096;
        (dir, process)
    }

    #[test]
    fn a_sample_is_in_seconds_and_bytes() {
        let (_dir, process) = fake_proc(STAT);
        assert_eq!(
            process.sample().unwrap(),
            Sample {
                cpu_seconds: 3.25,
                resident_bytes: 5120 * 4096,
                virtual_bytes: 123_456_789,
                start_time_seconds: Some(1_764_000_000.0 + 987.65),
            }
        );
        assert_eq!(process.open_fds().unwrap(), 4);
    }

    #[test]
    fn an_unreadable_stat_leaves_its_families_out_and_keeps_the_rest() {
        let (dir, process) = fake_proc("not a stat line");
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector(process)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("process_cpu_seconds"), "{text}");
        assert!(!text.contains("process_resident_memory_bytes"), "{text}");
        assert!(text.contains("process_open_fds 4\n"), "{text}");
        assert!(text.contains("process_max_fds "), "{text}");
        drop(dir);
    }

    #[test]
    fn no_boot_time_leaves_only_the_start_time_out() {
        let (dir, mut process) = fake_proc(STAT);
        process.boot_time = Err("/proc/stat: no btime line".to_owned());
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector(process)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("process_start_time_seconds"), "{text}");
        assert!(text.contains("process_cpu_seconds_total 3.25\n"), "{text}");
        assert!(
            text.contains(&format!("process_resident_memory_bytes {}\n", 5120 * 4096)),
            "{text}"
        );
        drop(dir);
    }

    /// An idle child process, read through its own procfs directory: its
    /// numbers do not move between two reads.
    #[test]
    fn a_process_reads_as_the_kernel_says() {
        let launched = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let dir = PathBuf::from(format!("/proc/{}", child.id()));
        // Until sleep has replaced the forked test binary, its memory is not sleep's.
        let mut exe = PathBuf::new();
        for _ in 0..500 {
            exe = std::fs::read_link(dir.join("exe")).unwrap_or_default();
            if exe.ends_with("sleep") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(exe.ends_with("sleep"), "{exe:?}");
        let process = Process::new(&dir, Path::new("/proc/stat"));
        let sample = process.sample();
        let status = std::fs::read_to_string(dir.join("status"));
        let fds = process.open_fds();
        let kernel_fds = std::fs::read_dir(dir.join("fd")).map(Iterator::count);
        let _ = child.kill();
        let _ = child.wait();

        let sample = sample.unwrap();
        let vm_rss_kib: u64 = status
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        // The kernel keeps RSS in per-CPU counters (Linux 6.2 on), which
        // `stat` and `status` need not read the same way: the two may
        // differ by up to a batch of pages per CPU (4 KiB against 0 for
        // sleep on this sandbox's kernel). The VM test compares on 6.1.
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as u64;
        let slack = cpus * 64 * 4096;
        assert!(
            sample.resident_bytes.abs_diff(vm_rss_kib * 1024) <= slack,
            "{sample:?} against VmRSS {vm_rss_kib} kB"
        );
        assert!(sample.virtual_bytes >= sample.resident_bytes, "{sample:?}");
        // btime is whole seconds, so the start reads up to a second early.
        let start = sample.start_time_seconds.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start >= launched - 1.5 && start <= now + 0.5,
            "{start} against {launched}..{now}"
        );
        assert_eq!(fds.unwrap() as usize, kernel_fds.unwrap());
    }
}
