//! `--config`: kubeadm's file, each supported field, flags over the file,
//! warnings for unsupported fields and errors naming field and value.

use std::io::Write;

use super::*;
use crate::cli::{Cli, Command};

/// The KubeProxyConfiguration kubeadm writes into the kube-proxy ConfigMap
/// (`config.conf`) for `kubeadm init --pod-network-cidr 10.244.0.0/16` with
/// `mode: ipvs`: every field spelled out, most with their zero value.
const KUBEADM: &str = r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ipvs
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

/// A file in a fresh temporary directory (kept alive by the returned guard).
fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.conf");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    (dir, path)
}

/// `kube-ipvs-proxy ARGS --config FILE(text)`.
fn run(text: &str, args: &[&str]) -> Result<(Cli, Applied), ArgsError> {
    let (_dir, path) = file(text);
    let path = path.to_str().unwrap().to_owned();
    let argv = ["kube-ipvs-proxy"]
        .into_iter()
        .chain(args.iter().copied())
        .chain(["--config", &path]);
    parse_args(argv)
}

/// The defaults: what `kube-ipvs-proxy` alone parses to.
fn defaults() -> Options {
    parse_args(["kube-ipvs-proxy"]).unwrap().0.options
}

/// `KUBEADM` with `line` (an `old => new` pair) replaced.
fn kubeadm_with(replacements: &[(&str, &str)]) -> String {
    let mut text = KUBEADM.to_owned();
    for (old, new) in replacements {
        assert!(text.contains(old), "{old:?} is not in the kubeadm file");
        text = text.replacen(old, new, 1);
    }
    text
}

fn cidr(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn kubeadms_file_sets_what_it_sets_and_warns_about_nothing() {
    let (cli, applied) = run(KUBEADM, &[]).unwrap();
    assert_eq!(applied.warnings, Vec::<String>::new());
    assert_eq!(applied.log_level, None);
    let opts = cli.options;
    let want = defaults();
    assert_eq!(opts.cluster_cidr, vec![cidr("10.244.0.0/16")]);
    assert_eq!(
        opts.kubeconfig.as_deref(),
        Some(Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    // Every zero value left its flag's default.
    assert_eq!(opts.ipvs_scheduler, want.ipvs_scheduler);
    assert_eq!(opts.ipvs_sync_period, want.ipvs_sync_period);
    assert_eq!(opts.ipvs_min_sync_period, want.ipvs_min_sync_period);
    assert_eq!(opts.healthz_bind_address, want.healthz_bind_address);
    assert_eq!(opts.metrics_bind_address, want.metrics_bind_address);
    assert_eq!(opts.conntrack_max_per_core, want.conntrack_max_per_core);
    assert_eq!(opts.conntrack_min, want.conntrack_min);
    assert_eq!(
        opts.conntrack_tcp_timeout_established,
        want.conntrack_tcp_timeout_established
    );
    assert_eq!(opts.nodeport_addresses, want.nodeport_addresses);
    assert_eq!(opts.hostname_override, None);
    assert_eq!(opts.detect_local_mode, None);
    assert!(!opts.masquerade_all && !opts.ipvs_strict_arp);
}

#[test]
fn every_supported_field_sets_its_flag() {
    let text = kubeadm_with(&[
        ("  scheduler: \"\"", "  scheduler: lc"),
        ("  syncPeriod: 0s\n  tcpFinTimeout", "  syncPeriod: 1m0s\n  tcpFinTimeout"),
        ("ipvs:\n  excludeCIDRs: null\n  minSyncPeriod: 0s", "ipvs:\n  excludeCIDRs: [10.100.0.0/16, \"fd00:100::/64\"]\n  minSyncPeriod: 250ms"),
        ("  strictARP: false", "  strictARP: true"),
        ("  tcpFinTimeout: 0s\n  tcpTimeout: 0s\n  udpTimeout: 0s", "  tcpFinTimeout: 2m\n  tcpTimeout: 15m0s\n  udpTimeout: 45s"),
        ("clusterCIDR: 10.244.0.0/16", "clusterCIDR: 10.244.0.0/16,fd00:10:244::/56"),
        ("  masqueradeAll: false\n  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs", "  masqueradeAll: true\n  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs"),
        ("nodePortAddresses: null", "nodePortAddresses: [192.0.2.0/24]"),
        ("healthzBindAddress: \"\"", "healthzBindAddress: 0.0.0.0:10266"),
        ("metricsBindAddress: \"\"", "metricsBindAddress: 0.0.0.0"),
        ("hostnameOverride: \"\"", "hostnameOverride: node-7"),
        ("  maxPerCore: null\n  min: null", "  maxPerCore: 0\n  min: 262144"),
        ("  tcpBeLiberal: false\n  tcpCloseWaitTimeout: null\n  tcpEstablishedTimeout: null\n  udpStreamTimeout: 0s\n  udpTimeout: 0s", "  tcpBeLiberal: true\n  tcpCloseWaitTimeout: 30m0s\n  tcpEstablishedTimeout: 12h0m0s\n  udpStreamTimeout: 2m0s\n  udpTimeout: 30s"),
        ("detectLocalMode: \"\"", "detectLocalMode: BridgeInterface"),
        ("  bridgeInterface: \"\"", "  bridgeInterface: cni0"),
        ("  verbosity: 0", "  verbosity: 4"),
    ]);
    let (cli, applied) = run(&text, &[]).unwrap();
    assert_eq!(applied.warnings, Vec::<String>::new());
    assert_eq!(applied.log_level, Some("debug"));
    let o = cli.options;
    assert_eq!(o.ipvs_scheduler, "lc");
    assert_eq!(o.ipvs_sync_period, Duration::from_secs(60));
    assert_eq!(o.ipvs_min_sync_period, Duration::from_millis(250));
    assert_eq!(
        o.ipvs_exclude_cidrs,
        vec![cidr("10.100.0.0/16"), cidr("fd00:100::/64")]
    );
    assert!(o.ipvs_strict_arp);
    assert_eq!(o.ipvs_tcp_timeout, Duration::from_secs(900));
    assert_eq!(o.ipvs_tcpfin_timeout, Duration::from_secs(120));
    assert_eq!(o.ipvs_udp_timeout, Duration::from_secs(45));
    assert_eq!(
        o.cluster_cidr,
        vec![cidr("10.244.0.0/16"), cidr("fd00:10:244::/56")]
    );
    assert!(o.masquerade_all);
    assert_eq!(
        o.nodeport_addresses,
        vec![NodePortAddress::Cidr(cidr("192.0.2.0/24"))]
    );
    assert_eq!(
        o.healthz_bind_address,
        BindAddress(Some("0.0.0.0:10266".parse().unwrap()))
    );
    assert_eq!(
        o.metrics_bind_address,
        BindAddress(Some("0.0.0.0:10249".parse().unwrap())),
        "an IP alone takes the default port"
    );
    assert_eq!(o.hostname_override.as_deref(), Some("node-7"));
    // maxPerCore 0 is a zero value: the default stays, as upstream reads it.
    assert_eq!(o.conntrack_max_per_core, 32768);
    assert_eq!(o.conntrack_min, 262144);
    assert!(o.conntrack_tcp_be_liberal);
    assert_eq!(
        o.conntrack_tcp_timeout_close_wait,
        Duration::from_secs(1800)
    );
    assert_eq!(
        o.conntrack_tcp_timeout_established,
        Duration::from_secs(12 * 3600)
    );
    assert_eq!(o.conntrack_udp_timeout, Duration::from_secs(30));
    assert_eq!(o.conntrack_udp_timeout_stream, Duration::from_secs(120));
    assert_eq!(o.detect_local_mode, Some(DetectLocalMode::BridgeInterface));
    assert_eq!(o.pod_bridge_interface.as_deref(), Some("cni0"));
}

#[test]
fn flags_override_the_file_before_or_after_the_subcommand() {
    let text = kubeadm_with(&[
        ("  scheduler: \"\"", "  scheduler: lc"),
        ("clusterCIDR: 10.244.0.0/16", "clusterCIDR: 10.244.0.0/16"),
        ("hostnameOverride: \"\"", "hostnameOverride: from-file"),
        ("  strictARP: false", "  strictARP: true"),
    ]);
    let (cli, _) = run(
        &text,
        &[
            "--ipvs-scheduler",
            "sh",
            "plan",
            "--cluster-cidr",
            "10.0.0.0/8",
        ],
    )
    .unwrap();
    assert_eq!(cli.command, Some(Command::Plan));
    assert_eq!(
        cli.options.ipvs_scheduler, "sh",
        "flag before the subcommand"
    );
    assert_eq!(
        cli.options.cluster_cidr,
        vec![cidr("10.0.0.0/8")],
        "flag after it"
    );
    assert_eq!(cli.options.hostname_override.as_deref(), Some("from-file"));
    assert!(cli.options.ipvs_strict_arp, "a file value no flag overrode");
}

#[test]
fn nodeport_addresses_takes_the_primary_keyword() {
    let text = kubeadm_with(&[("nodePortAddresses: null", "nodePortAddresses: [primary]")]);
    let (cli, _) = run(&text, &[]).unwrap();
    assert!(cli.options.node_port_primary());
    let mixed = kubeadm_with(&[(
        "nodePortAddresses: null",
        "nodePortAddresses: [primary, 10.0.0.0/8]",
    )]);
    let err = run(&mixed, &[]).unwrap_err().to_string();
    assert!(
        err.contains("nodePortAddresses") && err.contains("primary"),
        "{err}"
    );
    // The flag takes it too.
    let (cli, _) = parse_args(["kube-ipvs-proxy", "--nodeport-addresses", "primary"]).unwrap();
    assert!(cli.options.node_port_primary());
}

#[test]
fn a_set_field_that_is_not_supported_gets_one_warning_naming_it() {
    let text = kubeadm_with(&[
        ("enableProfiling: false", "enableProfiling: true"),
        (
            "  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs",
            "  masqueradeBit: 14\n  minSyncPeriod: 0s\n  syncPeriod: 30s\nipvs",
        ),
        (
            "oomScoreAdj: null",
            "oomScoreAdj: -999\nfeatureGates:\n  SomeGate: true",
        ),
    ]);
    let (_, applied) = run(&text, &[]).unwrap();
    let named: Vec<&str> = applied
        .warnings
        .iter()
        .map(|w| w.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(
        named,
        [
            "enableProfiling",
            "featureGates.SomeGate",
            "iptables.masqueradeBit",
            "iptables.syncPeriod"
        ],
        "{:?}",
        applied.warnings
    );
    assert!(
        applied.warnings[3].contains("(\"30s\")") && applied.warnings[3].contains("ignored"),
        "{}",
        applied.warnings[3]
    );
}

#[test]
fn invalid_values_are_errors_naming_the_field_and_the_value() {
    let cases: &[(&str, (&str, &str), &[&str])] = &[
        (
            "a mode other than ipvs",
            ("mode: ipvs", "mode: iptables"),
            &["mode", "\"iptables\"", "only mode ipvs"],
        ),
        (
            "a bad duration",
            (
                "  syncPeriod: 0s\n  tcpFinTimeout",
                "  syncPeriod: soon\n  tcpFinTimeout",
            ),
            &["ipvs.syncPeriod", "\"soon\""],
        ),
        (
            "a bad CIDR",
            ("clusterCIDR: 10.244.0.0/16", "clusterCIDR: 10.244.0.0/33"),
            &["clusterCIDR", "10.244.0.0/33"],
        ),
        (
            "a bad list entry",
            (
                "ipvs:\n  excludeCIDRs: null",
                "ipvs:\n  excludeCIDRs: [10.0.0.0/8, nope]",
            ),
            &["ipvs.excludeCIDRs[1]", "\"nope\""],
        ),
        (
            "a string for a bool",
            ("  strictARP: false", "  strictARP: \"yes\""),
            &["ipvs.strictARP", "\"yes\""],
        ),
        (
            "a negative count",
            ("  min: null", "  min: -1"),
            &["conntrack.min", "-1"],
        ),
        (
            "a bad address",
            ("healthzBindAddress: \"\"", "healthzBindAddress: here:10256"),
            &["healthzBindAddress", "\"here:10256\""],
        ),
        (
            "an unknown detect-local mode",
            ("detectLocalMode: \"\"", "detectLocalMode: PodCIDR"),
            &["detectLocalMode", "\"PodCIDR\""],
        ),
        (
            "a wrong apiVersion",
            (
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1",
                "apiVersion: v1",
            ),
            &["apiVersion", "\"v1\""],
        ),
        (
            "a wrong kind",
            ("kind: KubeProxyConfiguration", "kind: ConfigMap"),
            &["kind", "\"ConfigMap\""],
        ),
    ];
    for (name, replacement, wanted) in cases {
        let err = match run(&kubeadm_with(&[*replacement]), &[]) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => e.to_string(),
        };
        for part in *wanted {
            assert!(err.contains(part), "{name}: {err:?} does not name {part}");
        }
    }
    let err = run("{not yaml", &[]).unwrap_err().to_string();
    assert!(err.contains("not a YAML or JSON document"), "{err}");
    let err = parse_args([
        "kube-ipvs-proxy",
        "--config",
        "/nonexistent/kube-proxy.conf",
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/kube-proxy.conf"), "{err}");
}

#[test]
fn go_durations_read_as_metav1_writes_them() {
    let cases = [
        ("30s", 30.0),
        ("1m0s", 60.0),
        ("24h0m0s", 86400.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("1h2m3s", 3723.0),
        ("0", 0.0),
    ];
    for (text, seconds) in cases {
        assert_eq!(
            go_duration(text),
            Ok(Duration::from_secs_f64(seconds)),
            "{text}"
        );
    }
    for bad in ["", "s", "10", "5x", "1..5s"] {
        assert!(go_duration(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn a_file_without_a_cluster_cidr_keeps_the_flags_rules() {
    // The masquerade flags still decide the ruleset through the usual path.
    let text = kubeadm_with(&[("clusterCIDR: 10.244.0.0/16\n", "")]);
    let (cli, _) = run(&text, &["--masquerade-all"]).unwrap();
    let ruleset = cli.options.nft_ruleset().unwrap();
    assert!(ruleset.masquerade_all);
}

#[test]
fn oom_score_adj_is_read_from_the_file_with_zero_as_a_value() {
    assert_eq!(defaults().oom_score_adj, -999, "upstream's default");
    let text = kubeadm_with(&[("oomScoreAdj: null", "oomScoreAdj: -998")]);
    let (cli, applied) = run(&text, &[]).unwrap();
    assert_eq!(applied.warnings, Vec::<String>::new());
    assert_eq!(cli.options.oom_score_adj, -998);
    // The flag wins over the file.
    let (cli, _) = run(&text, &["--oom-score-adj", "-500"]).unwrap();
    assert_eq!(cli.options.oom_score_adj, -500);
    // Upstream's field is a pointer: 0 is a value, not "unset".
    let (cli, _) = run(
        &kubeadm_with(&[("oomScoreAdj: null", "oomScoreAdj: 0")]),
        &[],
    )
    .unwrap();
    assert_eq!(cli.options.oom_score_adj, 0);
    for bad in ["5000", "\"low\"", "-1001"] {
        let text = kubeadm_with(&[("oomScoreAdj: null", &format!("oomScoreAdj: {bad}"))]);
        let err = run(&text, &[]).unwrap_err().to_string();
        assert!(
            err.contains("oomScoreAdj: ")
                && err.contains("expected a whole number from -1000 to 1000"),
            "{bad}: {err}"
        );
    }
}

/// kube-proxy's command line as kOps writes it for IPVS mode (its static
/// pod): flags this proxy reads, flags it accepts and ignores, and -v.
const KOPS_ARGS: &[&str] = &[
    "kube-ipvs-proxy",
    "--cluster-cidr=100.96.0.0/11",
    "--conntrack-max-per-core=131072",
    "--hostname-override=i-0123456789abcdef0",
    "--kubeconfig=/var/lib/kube-proxy/kubeconfig",
    "--master=https://api.internal.example.com",
    "--oom-score-adj=-998",
    "--v=2",
    "--proxy-mode=ipvs",
    "--ipvs-scheduler=lc",
    "--iptables-sync-period=30s",
    "--profiling=false",
    "--feature-gates=SomeGate=true",
];

#[test]
fn kube_proxys_own_command_line_starts_the_proxy() {
    let (cli, applied) = parse_args(KOPS_ARGS).unwrap();
    let o = &cli.options;
    assert_eq!(o.cluster_cidr, vec![cidr("100.96.0.0/11")]);
    assert_eq!(o.conntrack_max_per_core, 131_072);
    assert_eq!(o.hostname_override.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!(
        o.master.as_deref(),
        Some("https://api.internal.example.com")
    );
    assert_eq!(o.oom_score_adj, -998);
    assert_eq!(o.ipvs_scheduler, "lc");
    assert_eq!(o.proxy_mode.as_deref(), Some("ipvs"));
    assert_eq!(cli.to_run(), Ok(Command::Run));
    // -v 2 is the recommended production level: info, not debug.
    assert_eq!(applied.log_level, Some("info"));
    // One warning per ignored flag whose value changes something:
    // --profiling=false changes nothing.
    assert_eq!(
        applied.warnings,
        [
            "--feature-gates=SomeGate=true: a kube-proxy flag that kube-ipvs-proxy does not use; ignored",
            "--iptables-sync-period=30s: a kube-proxy flag that kube-ipvs-proxy does not use; ignored",
        ]
    );
}

#[test]
fn every_ignored_flag_is_accepted_where_kube_proxy_takes_it() {
    for &(flag, takes_value) in IGNORED_FLAGS {
        let forms: Vec<Vec<String>> = if takes_value {
            vec![
                vec![format!("--{flag}=7")],
                vec![format!("--{flag}"), "7".to_owned()],
                vec!["plan".to_owned(), format!("--{flag}=7")],
            ]
        } else {
            vec![
                vec![format!("--{flag}")],
                vec![format!("--{flag}=true")],
                vec!["plan".to_owned(), format!("--{flag}")],
            ]
        };
        for form in forms {
            let argv = std::iter::once("kube-ipvs-proxy".to_owned()).chain(form.iter().cloned());
            let (_, applied) =
                parse_args(argv).unwrap_or_else(|e| panic!("{form:?} is refused: {e}"));
            assert_eq!(
                applied.warnings.len(),
                1,
                "{form:?}: {:?}",
                applied.warnings
            );
            assert!(
                applied.warnings[0].starts_with(&format!("--{flag}=")),
                "{form:?}: {:?}",
                applied.warnings
            );
        }
        // A switch does not take the next argument as its value.
        if !takes_value {
            let switch = format!("--{flag}");
            let (cli, _) = parse_args(["kube-ipvs-proxy", switch.as_str(), "plan"])
                .unwrap_or_else(|e| panic!("{switch} plan: {e}"));
            assert_eq!(cli.to_run(), Ok(Command::Plan), "{switch} plan");
        }
    }
    // Values that change nothing draw no warning.
    for quiet in [
        "--bind-address=0.0.0.0",
        "--bind-address=::",
        "--profiling=false",
        "--iptables-min-sync-period=0s",
        "--kube-api-content-type=application/json",
    ] {
        let (_, applied) = parse_args(["kube-ipvs-proxy", quiet]).unwrap();
        assert_eq!(applied.warnings, Vec::<String>::new(), "{quiet}");
    }
    // A flag kube-proxy does not have is still an error.
    assert!(parse_args(["kube-ipvs-proxy", "--no-such-flag=1"]).is_err());
}

#[test]
fn verbosity_maps_to_a_level_and_the_flag_beats_the_file() {
    for (v, level) in [
        (0, "info"),
        (2, "info"),
        (3, "debug"),
        (4, "debug"),
        (5, "trace"),
        (9, "trace"),
    ] {
        let flag = format!("--v={v}");
        let (_, applied) = parse_args(["kube-ipvs-proxy", flag.as_str()]).unwrap();
        assert_eq!(applied.log_level, Some(level), "{flag}");
    }
    for form in [&["-v", "4"][..], &["-v=4"], &["-v4"], &["--v", "4"]] {
        let argv = std::iter::once("kube-ipvs-proxy").chain(form.iter().copied());
        let (cli, _) = parse_args(argv).unwrap_or_else(|e| panic!("{form:?}: {e}"));
        assert_eq!(cli.options.verbosity, Some(4), "{form:?}");
    }
    let text = kubeadm_with(&[("  verbosity: 0", "  verbosity: 5")]);
    assert_eq!(run(&text, &[]).unwrap().1.log_level, Some("trace"));
    assert_eq!(run(&text, &["--v=1"]).unwrap().1.log_level, Some("info"));
    assert_eq!(parse_args(["kube-ipvs-proxy"]).unwrap().1.log_level, None);
}

#[test]
fn proxy_mode_cleanup_and_init_only_as_kube_proxy_takes_them() {
    let to_run = |args: &[&str]| {
        let argv = std::iter::once("kube-ipvs-proxy").chain(args.iter().copied());
        parse_args(argv)
            .map_err(|e| e.to_string())
            .and_then(|(cli, _)| cli.to_run())
    };
    assert_eq!(to_run(&["--proxy-mode=ipvs"]), Ok(Command::Run));
    assert_eq!(to_run(&["--proxy-mode="]), Ok(Command::Run));
    let err = to_run(&["--proxy-mode=iptables"]).unwrap_err();
    assert!(
        err.contains("--proxy-mode")
            && err.contains("\"iptables\"")
            && err.contains("only mode ipvs"),
        "{err}"
    );
    assert_eq!(to_run(&["--cleanup"]), Ok(Command::Cleanup));
    assert_eq!(to_run(&["cleanup", "--cleanup"]), Ok(Command::Cleanup));
    assert_eq!(to_run(&["--init-only"]), Ok(Command::Prepare));
    assert_eq!(to_run(&["run"]), Ok(Command::Run));
    assert_eq!(
        to_run(&["plan", "--cleanup"]),
        Err("plan and --cleanup cannot be combined".to_owned())
    );
    assert_eq!(
        to_run(&["--cleanup", "--init-only"]),
        Err("--cleanup and --init-only cannot be combined".to_owned())
    );
    assert_eq!(
        to_run(&["run", "--init-only"]),
        Err("run and --init-only cannot be combined".to_owned())
    );
    for bad in [
        "--oom-score-adj=1001",
        "--oom-score-adj=-1001",
        "--oom-score-adj=low",
    ] {
        assert!(to_run(&[bad]).is_err(), "{bad}");
    }
    assert!(to_run(&["--oom-score-adj", "-1000"]).is_ok());
}

#[test]
fn go_duration_strings_are_what_go_writes_and_read_back() {
    let cases = [
        (Duration::ZERO, "0s"),
        (Duration::from_nanos(500), "500ns"),
        (Duration::from_micros(1500), "1.5ms"),
        (Duration::from_millis(250), "250ms"),
        (Duration::from_secs(1), "1s"),
        (Duration::from_millis(1500), "1.5s"),
        (Duration::from_secs(30), "30s"),
        (Duration::from_secs(60), "1m0s"),
        (Duration::from_secs(90), "1m30s"),
        (Duration::from_secs(2 * 3600 + 22 * 60), "2h22m0s"),
        (Duration::from_secs(24 * 3600), "24h0m0s"),
        (Duration::from_nanos(3_600_000_000_001), "1h0m0.000000001s"),
    ];
    for (d, want) in cases {
        assert_eq!(go_duration_string(d), want, "{d:?}");
        assert_eq!(go_duration(want), Ok(d), "{want} reads back");
    }
}

/// `configz(opts)`'s document written as a file and read with `--config`.
fn configz_read_back(opts: &Options) -> Options {
    let doc = configz(opts)["kubeproxy.config.k8s.io"].clone();
    let (cli, applied) = run(&doc.to_string(), &[]).unwrap();
    assert_eq!(
        applied.warnings,
        Vec::<String>::new(),
        "every field is read"
    );
    cli.options
}

#[test]
fn configz_shows_the_options_in_force_and_reads_back_to_them() {
    // Defaults, and a file that sets nearly every field, with a flag over it.
    let text = kubeadm_with(&[
        ("  scheduler: \"\"", "  scheduler: lc"),
        (
            "  syncPeriod: 0s\n  tcpFinTimeout",
            "  syncPeriod: 1m0s\n  tcpFinTimeout",
        ),
        ("  excludeCIDRs: null", "  excludeCIDRs: [10.100.0.0/16]"),
        ("  strictARP: false", "  strictARP: true"),
        ("  udpTimeout: 0s\nkind", "  udpTimeout: 45s\nkind"),
        (
            "clusterCIDR: 10.244.0.0/16",
            "clusterCIDR: 10.244.0.0/16,fd00:10:244::/56",
        ),
        (
            "nodePortAddresses: null",
            "nodePortAddresses: [192.0.2.0/24, 2001:db8::/64]",
        ),
        ("hostnameOverride: \"\"", "hostnameOverride: node-7"),
        ("  tcpBeLiberal: false", "  tcpBeLiberal: true"),
        ("detectLocalMode: \"\"", "detectLocalMode: BridgeInterface"),
        ("  bridgeInterface: \"\"", "  bridgeInterface: cni0"),
        ("oomScoreAdj: null", "oomScoreAdj: -998"),
    ]);
    let (cli, _) = run(&text, &["--ipvs-min-sync-period", "250ms"]).unwrap();
    let (primary, _) = parse_args(["kube-ipvs-proxy", "--nodeport-addresses", "primary"]).unwrap();
    for opts in [defaults(), cli.options, primary.options] {
        let shown = configz(&opts);
        assert_eq!(configz(&configz_read_back(&opts)), shown);
    }
    let shown = configz(&run(&text, &[]).unwrap().0.options);
    let doc = &shown["kubeproxy.config.k8s.io"];
    assert_eq!(doc["mode"], "ipvs");
    assert_eq!(doc["ipvs"]["scheduler"], "lc");
    assert_eq!(doc["ipvs"]["syncPeriod"], "1m0s");
    assert_eq!(doc["ipvs"]["udpTimeout"], "45s");
    assert_eq!(doc["clusterCIDR"], "10.244.0.0/16,fd00:10:244::/56");
    assert_eq!(
        doc["nodePortAddresses"],
        serde_json::json!(["192.0.2.0/24", "2001:db8::/64"])
    );
    assert_eq!(doc["oomScoreAdj"], -998);
    assert_eq!(doc["conntrack"]["tcpEstablishedTimeout"], "24h0m0s");
    assert_eq!(doc["healthzBindAddress"], "0.0.0.0:10256");
    // Every field the file is read for is shown (`-v` is not an option of
    // the file's kind: it is not kept once the log is set up).
    for field in SUPPORTED.iter().filter(|f| **f != "logging.verbosity") {
        let shown = field
            .split('.')
            .try_fold(doc, |value, key| value.as_object()?.get(key));
        assert!(shown.is_some(), "{field} is not in /configz");
    }
}
