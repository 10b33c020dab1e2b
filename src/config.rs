//! `--config FILE`: kube-proxy's own configuration file, a
//! `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`), as kubeadm
//! writes it into the `kube-proxy` ConfigMap.
//!
//! Every field that means something to an IPVS proxy sets the flag of the
//! same meaning, unless that flag was given on the command line (or through
//! its environment variable): flags override the file. As upstream reads the
//! file, a zero value (`""`, `0`, `0s`, `false`, `null`, an empty list) means
//! "the default", so kubeadm's file, which spells out every field with its
//! zero value, changes nothing it does not set. A field that is set but that
//! this proxy does not support gets one warning naming it; a value that
//! cannot be read is an error naming the field and the value.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::ArgMatches;
use ipnet::IpNet;
use serde_json::Value;

use clap::{CommandFactory, FromArgMatches, ValueEnum};

use crate::cli::{BindAddress, Cli, DetectLocalMode, LogFormat, NodePortAddress, Options};

/// The only `apiVersion` and `kind` upstream defines for this file.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const KIND: &str = "KubeProxyConfiguration";

/// Why the configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--config {path}: not a YAML or JSON document: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("--config {path}: {field}: {value} is invalid: {problem}")]
    Invalid {
        path: PathBuf,
        /// The field, as a dotted path (`ipvs.syncPeriod`).
        field: String,
        /// The value as the file spells it.
        value: String,
        problem: String,
    },
}

/// What reading the command line and the file did, apart from setting the
/// options.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// One line per field of the file, and per kube-proxy flag, that is
    /// set but not supported, naming it.
    pub warnings: Vec<String>,
    /// `-v`, else the file's `logging.verbosity`, as the level filter to
    /// log at when `RUST_LOG` gives none.
    pub log_level: Option<&'static str>,
}

/// Parses the command line `args` (program name first) and, with
/// `--config`, applies the file to the options it gives. kube-proxy's
/// flags that mean nothing here are accepted and each named in one
/// warning (see [`IGNORED_FLAGS`]), so that kube-proxy's own command line
/// starts this proxy.
pub fn parse_args<I, T>(args: I) -> Result<(Cli, Applied), ArgsError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = with_ignored_flags(Cli::command()).try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    // Flags after the subcommand are recorded in its matches.
    let sub = matches.subcommand().map(|(_, m)| m);
    let mut applied = match cli.options.config.clone() {
        None => Applied::default(),
        Some(path) => {
            let explicit =
                |id: &str| explicit(&matches, id) || sub.is_some_and(|m| explicit(m, id));
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            apply_text(&path, &text, &mut cli.options, &explicit)?
        }
    };
    for (flag, _) in IGNORED_FLAGS {
        let value = sub
            .and_then(|m| m.get_one::<String>(flag))
            .or_else(|| matches.get_one::<String>(flag));
        if let Some(value) = value.filter(|v| !flag_value_is_default(flag, v)) {
            applied.warnings.push(format!(
                "--{flag}={value}: a kube-proxy flag that kube-ipvs-proxy does not use; ignored"
            ));
        }
    }
    if let Some(verbosity) = cli.options.verbosity {
        applied.log_level = Some(crate::cli::log_level(verbosity));
    }
    Ok((cli, applied))
}

/// kube-proxy's flags that have no meaning for this proxy, and whether
/// each takes a value (`true`) or is a switch (`false`, which may be given
/// as `--flag` or `--flag=BOOL`): flags of other modes, of the API client's
/// rate limits and encoding (this proxy's few requests are lists, watches
/// and rate-limited Events), and of Go's runtime and logging.
pub const IGNORED_FLAGS: &[(&str, bool)] = &[
    ("bind-address", true),
    ("bind-address-hard-fail", false),
    ("boot-id-file", true),
    ("config-sync-period", true),
    ("feature-gates", true),
    ("iptables-localhost-nodeports", false),
    ("iptables-masquerade-bit", true),
    ("iptables-min-sync-period", true),
    ("iptables-sync-period", true),
    ("kube-api-burst", true),
    ("kube-api-content-type", true),
    ("kube-api-qps", true),
    ("log-flush-frequency", true),
    ("profiling", false),
    ("proxy-port-range", true),
    ("show-hidden-metrics-for-version", true),
    ("vmodule", true),
];

/// `command` with [`IGNORED_FLAGS`] as hidden, global arguments.
fn with_ignored_flags(command: clap::Command) -> clap::Command {
    IGNORED_FLAGS
        .iter()
        .fold(command, |command, &(flag, takes_value)| {
            let arg = clap::Arg::new(flag)
                .long(flag)
                .hide(true)
                .global(true)
                .action(clap::ArgAction::Set)
                .value_name("VALUE");
            let arg = if takes_value {
                arg.allow_hyphen_values(true)
            } else {
                arg.num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true")
            };
            command.arg(arg)
        })
}

/// Whether an ignored flag's value is the one that changes nothing: a
/// switch that is off, a zero, the bind address of every interface, or
/// JSON, which is what the proxy reads anyway.
fn flag_value_is_default(flag: &str, value: &str) -> bool {
    is_zero(&Value::String(value.to_owned()))
        || value == "false"
        || (flag == "bind-address" && (value == "0.0.0.0" || value == "::"))
        || (flag == "kube-api-content-type" && value == "application/json")
}

/// Why the command line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// A flag: clap's own error, which `exit()` prints with usage.
    #[error(transparent)]
    Flags(#[from] clap::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Applies the text of a configuration file to `opts`.
fn apply_text(
    path: &Path,
    text: &str,
    opts: &mut Options,
    explicit: &dyn Fn(&str) -> bool,
) -> Result<Applied, ConfigError> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    apply(path, &doc, opts, explicit)
}

/// Whether the flag `id` (clap's id: the field name) was given on the
/// command line or through its environment variable.
fn explicit(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// The fields this proxy reads. Every other leaf of the document that is
/// set draws a warning.
const SUPPORTED: &[&str] = &[
    "apiVersion",
    "kind",
    "mode",
    "ipvs.scheduler",
    "ipvs.syncPeriod",
    "ipvs.minSyncPeriod",
    "ipvs.excludeCIDRs",
    "ipvs.strictARP",
    "ipvs.tcpTimeout",
    "ipvs.tcpFinTimeout",
    "ipvs.udpTimeout",
    "clusterCIDR",
    "iptables.masqueradeAll",
    "nodePortAddresses",
    "healthzBindAddress",
    "metricsBindAddress",
    "hostnameOverride",
    "clientConnection.kubeconfig",
    "conntrack.maxPerCore",
    "conntrack.min",
    "conntrack.tcpEstablishedTimeout",
    "conntrack.tcpCloseWaitTimeout",
    "conntrack.tcpBeLiberal",
    "conntrack.udpTimeout",
    "conntrack.udpStreamTimeout",
    "detectLocalMode",
    "detectLocal.bridgeInterface",
    "detectLocal.interfaceNamePrefix",
    "logging.format",
    "logging.verbosity",
    "oomScoreAdj",
];

/// Unsupported fields whose value here is upstream's default: as good as
/// unset, so no warning (kubeadm writes `bindAddress: 0.0.0.0`).
const DEFAULT_VALUES: &[(&str, &str)] = &[("bindAddress", "0.0.0.0"), ("bindAddress", "::")];

/// Applies `doc` to `opts`; `explicit(id)` tells which flags the command
/// line set, which the file must not change.
fn apply(
    path: &Path,
    doc: &Value,
    opts: &mut Options,
    explicit: &dyn Fn(&str) -> bool,
) -> Result<Applied, ConfigError> {
    let file = File { path, doc };
    if !doc.is_object() {
        return Err(file.invalid("", doc, format!("expected a {KIND} mapping")));
    }
    match file.string("apiVersion")? {
        Some(v) if v == API_VERSION => {}
        _ => {
            let value = file.get("apiVersion").unwrap_or(&Value::Null);
            return Err(file.invalid("apiVersion", value, format!("expected {API_VERSION}")));
        }
    }
    match file.string("kind")? {
        Some(v) if v == KIND => {}
        _ => {
            let value = file.get("kind").unwrap_or(&Value::Null);
            return Err(file.invalid("kind", value, format!("expected {KIND}")));
        }
    }
    if let Some(mode) = file.string("mode")? {
        if mode != "ipvs" {
            let value = file.get("mode").unwrap_or(&Value::Null);
            return Err(file.invalid(
                "mode",
                value,
                "kube-ipvs-proxy implements only mode ipvs; run upstream kube-proxy for other modes"
                    .into(),
            ));
        }
    }

    // Each setter runs only when the field is set and its flag was not.
    macro_rules! set {
        ($id:literal, $value:expr => $target:expr) => {
            if let Some(v) = $value {
                if !explicit($id) {
                    $target = v;
                }
            }
        };
    }
    set!("ipvs_scheduler", file.string("ipvs.scheduler")? => opts.ipvs_scheduler);
    set!("ipvs_sync_period", file.duration("ipvs.syncPeriod")? => opts.ipvs_sync_period);
    set!("ipvs_min_sync_period", file.duration("ipvs.minSyncPeriod")? => opts.ipvs_min_sync_period);
    set!("ipvs_exclude_cidrs", file.cidrs("ipvs.excludeCIDRs")? => opts.ipvs_exclude_cidrs);
    set!("ipvs_strict_arp", file.flag("ipvs.strictARP")? => opts.ipvs_strict_arp);
    set!("ipvs_tcp_timeout", file.duration("ipvs.tcpTimeout")? => opts.ipvs_tcp_timeout);
    set!("ipvs_tcpfin_timeout", file.duration("ipvs.tcpFinTimeout")? => opts.ipvs_tcpfin_timeout);
    set!("ipvs_udp_timeout", file.duration("ipvs.udpTimeout")? => opts.ipvs_udp_timeout);
    set!("cluster_cidr", file.comma_cidrs("clusterCIDR")? => opts.cluster_cidr);
    set!("masquerade_all", file.flag("iptables.masqueradeAll")? => opts.masquerade_all);
    set!("nodeport_addresses", file.node_port_addresses()? => opts.nodeport_addresses);
    set!("healthz_bind_address", file.bind_address("healthzBindAddress", 10256)? => opts.healthz_bind_address);
    set!("metrics_bind_address", file.bind_address("metricsBindAddress", 10249)? => opts.metrics_bind_address);
    set!("hostname_override", file.string("hostnameOverride")?.map(Some) => opts.hostname_override);
    set!("kubeconfig", file.string("clientConnection.kubeconfig")?.map(|p| Some(PathBuf::from(p))) => opts.kubeconfig);
    set!("conntrack_max_per_core", file.count("conntrack.maxPerCore")? => opts.conntrack_max_per_core);
    set!("conntrack_min", file.count("conntrack.min")? => opts.conntrack_min);
    set!("conntrack_tcp_timeout_established", file.duration("conntrack.tcpEstablishedTimeout")? => opts.conntrack_tcp_timeout_established);
    set!("conntrack_tcp_timeout_close_wait", file.duration("conntrack.tcpCloseWaitTimeout")? => opts.conntrack_tcp_timeout_close_wait);
    set!("conntrack_tcp_be_liberal", file.flag("conntrack.tcpBeLiberal")? => opts.conntrack_tcp_be_liberal);
    set!("conntrack_udp_timeout", file.duration("conntrack.udpTimeout")? => opts.conntrack_udp_timeout);
    set!("conntrack_udp_timeout_stream", file.duration("conntrack.udpStreamTimeout")? => opts.conntrack_udp_timeout_stream);
    set!("detect_local_mode", file.detect_local_mode()?.map(Some) => opts.detect_local_mode);
    set!("pod_bridge_interface", file.string("detectLocal.bridgeInterface")?.map(Some) => opts.pod_bridge_interface);
    set!("pod_interface_name_prefix", file.string("detectLocal.interfaceNamePrefix")?.map(Some) => opts.pod_interface_name_prefix);
    set!("logging_format", file.log_format()? => opts.logging_format);
    set!("oom_score_adj", file.oom_score_adj()? => opts.oom_score_adj);

    let log_level = file.count("logging.verbosity")?.map(crate::cli::log_level);

    let supported: BTreeSet<&str> = SUPPORTED.iter().copied().collect();
    let mut warnings = Vec::new();
    unsupported(doc, &mut String::new(), &supported, &mut warnings);
    Ok(Applied {
        warnings,
        log_level,
    })
}

/// Collects one warning per leaf of `value` (under `prefix`) that is set
/// but not among `supported`.
fn unsupported(
    value: &Value,
    prefix: &mut String,
    supported: &BTreeSet<&str>,
    out: &mut Vec<String>,
) {
    if supported.contains(prefix.as_str()) {
        return;
    }
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let len = prefix.len();
                if !prefix.is_empty() {
                    prefix.push('.');
                }
                prefix.push_str(key);
                unsupported(child, prefix, supported, out);
                prefix.truncate(len);
            }
        }
        _ if is_zero(value) => {}
        Value::String(s) if DEFAULT_VALUES.contains(&(prefix.as_str(), s.as_str())) => {}
        _ => out.push(format!(
            "--config: {prefix} is set ({}) but kube-ipvs-proxy does not support it; ignored",
            spell(value)
        )),
    }
}

/// Whether upstream reads `value` as "not set": null, false, 0, "", a zero
/// duration, or an empty or all-zero list or mapping.
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s == "0" || go_duration(s) == Ok(Duration::ZERO),
        Value::Array(items) => items.iter().all(is_zero),
        Value::Object(map) => map.values().all(is_zero),
    }
}

/// `value` as the file spells it, for messages.
fn spell(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// The options as kube-proxy's `/configz` shows its configuration: the
/// fields of a `KubeProxyConfiguration` that this proxy reads, with the
/// values in force (the defaults, the file and the flags together), under
/// the key `kubeproxy.config.k8s.io`. The document inside is itself a
/// configuration file that `--config` reads back to the same options, but
/// for an endpoint turned off with an empty address, which the file spells
/// as the default.
pub fn configz(opts: &Options) -> Value {
    use serde_json::json;
    let durations = |d: Duration| Value::String(go_duration_string(d));
    let cidrs = |list: &[IpNet]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
    let address = |a: &BindAddress| a.0.map(|a| a.to_string()).unwrap_or_default();
    let node_port_addresses: Vec<String> = opts
        .nodeport_addresses
        .iter()
        .map(|a| match a {
            NodePortAddress::Cidr(cidr) => cidr.to_string(),
            NodePortAddress::Primary => "primary".to_owned(),
        })
        .collect();
    // The flags' spellings of the two enums, which are the file's too.
    let name = |value: Option<clap::builder::PossibleValue>| {
        value.map(|v| v.get_name().to_owned()).unwrap_or_default()
    };
    let detect_local_mode = name(opts.detect_local_mode.and_then(|m| m.to_possible_value()));
    let config = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "mode": "ipvs",
        "clientConnection": {
            "kubeconfig": opts.kubeconfig.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        },
        "hostnameOverride": opts.hostname_override.clone().unwrap_or_default(),
        "clusterCIDR": cidrs(&opts.cluster_cidr).join(","),
        "healthzBindAddress": address(&opts.healthz_bind_address),
        "metricsBindAddress": address(&opts.metrics_bind_address),
        "nodePortAddresses": node_port_addresses,
        "oomScoreAdj": opts.oom_score_adj,
        "detectLocalMode": detect_local_mode,
        "detectLocal": {
            "bridgeInterface": opts.pod_bridge_interface.clone().unwrap_or_default(),
            "interfaceNamePrefix": opts.pod_interface_name_prefix.clone().unwrap_or_default(),
        },
        "iptables": { "masqueradeAll": opts.masquerade_all },
        "ipvs": {
            "scheduler": opts.ipvs_scheduler,
            "syncPeriod": durations(opts.ipvs_sync_period),
            "minSyncPeriod": durations(opts.ipvs_min_sync_period),
            "excludeCIDRs": cidrs(&opts.ipvs_exclude_cidrs),
            "strictARP": opts.ipvs_strict_arp,
            "tcpTimeout": durations(opts.ipvs_tcp_timeout),
            "tcpFinTimeout": durations(opts.ipvs_tcpfin_timeout),
            "udpTimeout": durations(opts.ipvs_udp_timeout),
        },
        "conntrack": {
            "maxPerCore": opts.conntrack_max_per_core,
            "min": opts.conntrack_min,
            "tcpEstablishedTimeout": durations(opts.conntrack_tcp_timeout_established),
            "tcpCloseWaitTimeout": durations(opts.conntrack_tcp_timeout_close_wait),
            "tcpBeLiberal": opts.conntrack_tcp_be_liberal,
            "udpTimeout": durations(opts.conntrack_udp_timeout),
            "udpStreamTimeout": durations(opts.conntrack_udp_timeout_stream),
        },
        "logging": { "format": name(opts.logging_format.to_possible_value()) },
    });
    json!({ "kubeproxy.config.k8s.io": config })
}

/// `d` as Go's `time.Duration.String` writes it, which is how
/// `metav1.Duration` appears in a configuration: `"0s"`, `"250ms"`,
/// `"1.5s"`, `"1m0s"`, `"24h0m0s"`.
fn go_duration_string(d: Duration) -> String {
    /// `whole` and `nanos` (below `unit`, in nanoseconds) as a decimal
    /// without trailing zeros.
    fn decimal(whole: u128, nanos: u128, unit: u128) -> String {
        if nanos == 0 {
            return whole.to_string();
        }
        let digits = unit.ilog10() as usize;
        let fraction = format!("{nanos:0digits$}");
        format!("{whole}.{}", fraction.trim_end_matches('0'))
    }
    let ns = d.as_nanos();
    match ns {
        0 => "0s".to_owned(),
        1..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{}µs", decimal(ns / 1_000, ns % 1_000, 1_000)),
        1_000_000..=999_999_999 => {
            format!("{}ms", decimal(ns / 1_000_000, ns % 1_000_000, 1_000_000))
        }
        _ => {
            let secs = ns / 1_000_000_000;
            let seconds = decimal(secs % 60, ns % 1_000_000_000, 1_000_000_000);
            let (hours, minutes) = (secs / 3600, secs % 3600 / 60);
            if hours > 0 {
                format!("{hours}h{minutes}m{seconds}s")
            } else if minutes > 0 {
                format!("{minutes}m{seconds}s")
            } else {
                format!("{seconds}s")
            }
        }
    }
}

/// A Go `time.Duration` string, as `metav1.Duration` writes it: `"30s"`,
/// `"1m0s"`, `"24h0m0s"`, `"1.5h"`, `"250ms"`, or `"0"`.
fn go_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err("empty".into());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or("a number without a unit")?;
        if number_len == 0 {
            return Err("expected a number, as in 30s or 1m0s".into());
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("{:?} is not a number", &rest[..number_len]))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "unknown unit {other:?} (use h, m, s, ms, us or ns)"
                ))
            }
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|e| e.to_string())
}

/// The document, and the path named in errors.
struct File<'a> {
    path: &'a Path,
    doc: &'a Value,
}

impl File<'_> {
    fn get(&self, field: &str) -> Option<&Value> {
        field
            .split('.')
            .try_fold(self.doc, |value, key| value.as_object()?.get(key))
    }

    fn invalid(&self, field: &str, value: &Value, problem: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field: field.to_owned(),
            value: spell(value),
            problem,
        }
    }

    /// The field's value, `None` when it is absent or zero.
    fn set(&self, field: &str) -> Option<&Value> {
        self.get(field).filter(|v| !is_zero(v))
    }

    fn string(&self, field: &str) -> Result<Option<String>, ConfigError> {
        match self.set(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.invalid(field, other, "expected a string".into())),
        }
    }

    fn flag(&self, field: &str) -> Result<Option<bool>, ConfigError> {
        match self.set(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.invalid(field, other, "expected true or false".into())),
        }
    }

    fn count(&self, field: &str) -> Result<Option<u32>, ConfigError> {
        match self.set(field) {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.invalid(
                        field,
                        value,
                        "expected a whole number from 0 to 4294967295".into(),
                    )
                }),
        }
    }

    /// `oomScoreAdj`, from -1000 to 1000. Upstream's field is a pointer:
    /// only `null` (or no field) means its default, and 0 is 0.
    fn oom_score_adj(&self) -> Result<Option<i32>, ConfigError> {
        let field = "oomScoreAdj";
        match self.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_i64()
                .filter(|n| (-1000..=1000).contains(n))
                .and_then(|n| i32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.invalid(
                        field,
                        value,
                        "expected a whole number from -1000 to 1000".into(),
                    )
                }),
        }
    }

    fn duration(&self, field: &str) -> Result<Option<Duration>, ConfigError> {
        match self.set(field) {
            None => Ok(None),
            Some(Value::String(s)) => go_duration(s)
                .map(Some)
                .map_err(|problem| self.invalid(field, &Value::String(s.clone()), problem)),
            Some(other) => Err(self.invalid(
                field,
                other,
                "expected a duration string such as \"30s\" or \"1m0s\"".into(),
            )),
        }
    }

    fn cidr(&self, field: &str, value: &Value, s: &str) -> Result<IpNet, ConfigError> {
        s.trim()
            .parse()
            .map_err(|_| self.invalid(field, value, "expected a CIDR such as 10.0.0.0/8".into()))
    }

    fn cidrs(&self, field: &str) -> Result<Option<Vec<IpNet>>, ConfigError> {
        match self.set(field) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let name = format!("{field}[{i}]");
                    match item.as_str() {
                        Some(s) => self.cidr(&name, item, s),
                        None => Err(self.invalid(&name, item, "expected a CIDR string".into())),
                    }
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(other) => Err(self.invalid(field, other, "expected a list of CIDRs".into())),
        }
    }

    /// `clusterCIDR`: one CIDR, or one per family separated by a comma.
    fn comma_cidrs(&self, field: &str) -> Result<Option<Vec<IpNet>>, ConfigError> {
        let Some(s) = self.string(field)? else {
            return Ok(None);
        };
        let value = Value::String(s.clone());
        s.split(',')
            .map(|part| self.cidr(field, &value, part))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// `nodePortAddresses`: CIDRs, or the keyword `primary` (the node's
    /// primary addresses), as upstream's flag takes them.
    fn node_port_addresses(&self) -> Result<Option<Vec<NodePortAddress>>, ConfigError> {
        let field = "nodePortAddresses";
        let Some(value) = self.set(field) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(self.invalid(field, value, "expected a list".into()));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let name = format!("{field}[{i}]");
            match item.as_str() {
                Some("primary") => out.push(NodePortAddress::Primary),
                Some(s) => out.push(NodePortAddress::Cidr(self.cidr(&name, item, s)?)),
                None => {
                    return Err(self.invalid(&name, item, "expected a CIDR or \"primary\"".into()))
                }
            }
        }
        if out.contains(&NodePortAddress::Primary) && out.len() > 1 {
            return Err(self.invalid(
                field,
                value,
                "\"primary\" cannot be combined with CIDRs".into(),
            ));
        }
        Ok(Some(out))
    }

    /// An `IP:PORT`, or an IP alone for the default port, as upstream
    /// accepts both.
    fn bind_address(
        &self,
        field: &str,
        default_port: u16,
    ) -> Result<Option<BindAddress>, ConfigError> {
        let Some(s) = self.string(field)? else {
            return Ok(None);
        };
        if let Ok(addr) = s.parse() {
            return Ok(Some(BindAddress(Some(addr))));
        }
        match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(Some(BindAddress(Some((ip, default_port).into())))),
            Err(_) => Err(self.invalid(
                field,
                &Value::String(s),
                "expected IP:PORT, such as 0.0.0.0:10256, or an IP".into(),
            )),
        }
    }

    fn detect_local_mode(&self) -> Result<Option<DetectLocalMode>, ConfigError> {
        let field = "detectLocalMode";
        let Some(s) = self.string(field)? else {
            return Ok(None);
        };
        let mode = match s.as_str() {
            "ClusterCIDR" => DetectLocalMode::ClusterCidr,
            "NodeCIDR" => DetectLocalMode::NodeCidr,
            "BridgeInterface" => DetectLocalMode::BridgeInterface,
            "InterfaceNamePrefix" => DetectLocalMode::InterfaceNamePrefix,
            _ => {
                return Err(self.invalid(
                    field,
                    &Value::String(s),
                    "expected ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix".into(),
                ))
            }
        };
        Ok(Some(mode))
    }

    fn log_format(&self) -> Result<Option<LogFormat>, ConfigError> {
        let field = "logging.format";
        match self.string(field)?.as_deref() {
            None => Ok(None),
            Some("text") => Ok(Some(LogFormat::Text)),
            Some("json") => Ok(Some(LogFormat::Json)),
            Some(other) => Err(self.invalid(
                field,
                &Value::String(other.to_owned()),
                "expected text or json".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
