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
    parse_args(argv).map(|(cli, applied)| (cli, applied.expect("a file was given")))
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
            "iptables.syncPeriod",
            "oomScoreAdj"
        ],
        "{:?}",
        applied.warnings
    );
    assert!(
        applied.warnings[4].contains("(-999)") && applied.warnings[4].contains("ignored"),
        "{}",
        applied.warnings[4]
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
