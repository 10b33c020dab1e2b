//! What kube-proxy's IPVS mode leaves in netfilter when this proxy takes a
//! node over from it: its iptables chains (in iptables-nft's `ip`/`ip6`
//! tables `nat` and `filter`), the rules of the built-in chains that jump to
//! them, and its ipsets. IPVS and kube-ipvs0 are adopted as they are; these
//! are not, and they keep acting on traffic: KUBE-IPVS-FILTER rejects new
//! connections to a VIP's address whose port is missing from upstream's
//! now-stale ipsets, and KUBE-POSTROUTING masquerades whatever carries mark
//! 0x4000.
//!
//! [`detect`] only reads; [`remove`] deletes exactly upstream's names, taken
//! from its code (kubernetes/kubernetes pkg/proxy/ipvs/proxier.go:
//! `iptablesChains`, `iptablesJumpChain`, `cleanupIptablesLeftovers`;
//! pkg/proxy/ipvs/ipset.go: the set names and their `KUBE-6-` IPv6 form),
//! never a `KUBE-*` pattern: kubelet's KUBE-KUBELET-CANARY and other tools'
//! chains stay.

use std::fmt::Write as _;

use self::nfnl::{be32, be64, errno_text, find, text, NfnlSocket, Request};

mod nfnl;

#[cfg(test)]
mod fuzz;

/// The chains upstream's IPVS proxier creates, by table (proxier.go
/// `iptablesChains`, the same list as `iptablesCleanupChains`).
pub const UPSTREAM_CHAINS: [(&str, &str); 11] = [
    ("nat", "KUBE-SERVICES"),
    ("nat", "KUBE-POSTROUTING"),
    ("nat", "KUBE-NODE-PORT"),
    ("nat", "KUBE-LOAD-BALANCER"),
    ("nat", "KUBE-MARK-MASQ"),
    ("filter", "KUBE-FORWARD"),
    ("filter", "KUBE-NODE-PORT"),
    ("filter", "KUBE-PROXY-FIREWALL"),
    ("filter", "KUBE-SOURCE-RANGES-FIREWALL"),
    ("filter", "KUBE-IPVS-FILTER"),
    ("filter", "KUBE-IPVS-OUT-FILTER"),
];

/// The IPv4 ipsets of upstream's IPVS proxier (ipset.go, `ipsetInfo`).
/// IPv6 sets are named "KUBE-6-" and the rest of the name.
pub const UPSTREAM_IPSETS: [&str; 17] = [
    "KUBE-LOOP-BACK",
    "KUBE-CLUSTER-IP",
    "KUBE-EXTERNAL-IP",
    "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-FW",
    "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-NODE-PORT-TCP",
    "KUBE-NODE-PORT-LOCAL-TCP",
    "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP",
    "KUBE-NODE-PORT-SCTP-HASH",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT",
    "KUBE-IPVS-IPS",
];

/// The command that removes what [`detect`] finds.
pub const REMOVAL_COMMAND: &str = "kube-ipvs-proxy cleanup-upstream";

/// ipset's longest name (IPSET_MAXNAMELEN, with its NUL).
const IPSET_MAXNAMELEN: usize = 32;

/// Whether `name` is one of upstream's ipsets, in either family.
pub fn is_upstream_ipset(name: &str) -> bool {
    UPSTREAM_IPSETS.iter().any(|v4| {
        *v4 == name
            || (name.len() < IPSET_MAXNAMELEN
                && v4
                    .strip_prefix("KUBE-")
                    .is_some_and(|rest| name.strip_prefix("KUBE-6-") == Some(rest)))
    })
}

/// Whether `chain` of `table` is one of upstream's chains.
pub fn is_upstream_chain(table: &str, chain: &str) -> bool {
    UPSTREAM_CHAINS.contains(&(table, chain))
}

/// The iptables-nft families: their nfgenmsg family and nft's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ip, Family::Ip6];

    fn nfproto(self) -> u8 {
        match self {
            Family::Ip => 2,   // NFPROTO_IPV4
            Family::Ip6 => 10, // NFPROTO_IPV6
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
}

/// One of upstream's chains, found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FoundChain {
    pub family: Family,
    pub table: String,
    pub chain: String,
}

/// A rule outside upstream's chains that jumps to one of them (upstream
/// puts these in PREROUTING, OUTPUT, POSTROUTING, INPUT and FORWARD).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct JumpRule {
    pub family: Family,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub target: String,
}

/// What upstream's IPVS mode left on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub jumps: Vec<JumpRule>,
    pub chains: Vec<FoundChain>,
    pub ipsets: Vec<String>,
    /// Legacy (x_tables) iptables tables that exist, e.g. "ip_tables: nat
    /// filter": not read here, only pointed at.
    pub legacy_tables: Vec<String>,
}

impl Leftovers {
    /// Nothing of upstream's in nf_tables or ipset (legacy tables aside,
    /// which are only a hint).
    pub fn is_empty(&self) -> bool {
        self.jumps.is_empty() && self.chains.is_empty() && self.ipsets.is_empty()
    }

    /// "ip nat KUBE-SERVICES, ip filter KUBE-FORWARD".
    pub fn chain_list(&self) -> String {
        let names: Vec<String> = self
            .chains
            .iter()
            .map(|c| format!("{} {} {}", c.family.name(), c.table, c.chain))
            .collect();
        names.join(", ")
    }

    /// The one warning `run` logs when it finds leftovers: what, why it
    /// matters, and the command that removes them.
    pub fn warning(&self) -> String {
        let mut text = String::from("kube-proxy's IPVS mode left netfilter state on this node: ");
        if !self.chains.is_empty() {
            let _ = write!(
                text,
                "iptables chains [{}] with {} jump rule(s) from the built-in chains; ",
                self.chain_list(),
                self.jumps.len()
            );
        }
        if !self.ipsets.is_empty() {
            let _ = write!(text, "ipsets [{}]; ", self.ipsets.join(", "));
        }
        text.push_str(
            "they still act on traffic: KUBE-IPVS-FILTER rejects new connections to a \
             service address whose port is not in its stale ipsets, and KUBE-POSTROUTING \
             masquerades every packet marked 0x4000. With kube-proxy stopped, remove them \
             with `",
        );
        text.push_str(REMOVAL_COMMAND);
        text.push_str(
            "` (--dry-run lists them); it touches neither IPVS, kube-ipvs0 nor this proxy's table",
        );
        if !self.legacy_tables.is_empty() {
            let _ = write!(
                text,
                "; legacy (x_tables) iptables tables also exist ({}), which this check does \
                 not read: inspect them with `iptables-legacy-save` and `ip6tables-legacy-save`",
                self.legacy_tables.join("; ")
            );
        }
        text
    }
}

/// Why detection or removal failed, naming the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("opening a NETLINK_NETFILTER socket: {0}")]
    Socket(String),
    #[error("listing the {family} {what}: {text}")]
    List {
        family: &'static str,
        what: &'static str,
        text: String,
    },
    #[error("removing {what}: {text}")]
    Remove { what: String, text: String },
    #[error("destroying ipset {set}: {text}")]
    Ipset { set: String, text: String },
}

// include/uapi/linux/netfilter/nf_tables.h
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// NFT_JUMP and NFT_GOTO, as the u32 the kernel sends.
const NFT_JUMP: u32 = -3i32 as u32;
const NFT_GOTO: u32 = -4i32 as u32;

// include/uapi/linux/netfilter/ipset/ip_set.h
const IPSET_CMD_DESTROY: u16 = 3;
const IPSET_CMD_LIST: u16 = 7;
const IPSET_ATTR_PROTOCOL: u16 = 1;
const IPSET_ATTR_SETNAME: u16 = 2;
const IPSET_ATTR_FLAGS: u16 = 6;
/// IPSET_PROTOCOL_MIN: every kernel since 3.x accepts it.
const IPSET_PROTOCOL: u8 = 6;
/// IPSET_FLAG_LIST_SETNAME: names only, as `ipset list -n`.
const IPSET_FLAG_LIST_SETNAME: u32 = 1 << 1;
const IPSET_ERR_BUSY: i32 = 4100;
const NLA_F_NET_BYTEORDER: u16 = 0x4000;

/// A chain dump's answer: (table, chain).
pub(crate) fn parse_chain(attributes: &[u8]) -> Option<(&str, &str)> {
    let table = text(find(attributes, NFTA_CHAIN_TABLE)?)?;
    let chain = text(find(attributes, NFTA_CHAIN_NAME)?)?;
    Some((table, chain))
}

/// A rule dump's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DumpedRule<'a> {
    pub table: &'a str,
    pub chain: &'a str,
    pub handle: u64,
    /// The chains its `immediate` verdicts jump or go to.
    pub targets: Vec<&'a str>,
}

pub(crate) fn parse_rule(attributes: &[u8]) -> Option<DumpedRule<'_>> {
    let table = text(find(attributes, NFTA_RULE_TABLE)?)?;
    let chain = text(find(attributes, NFTA_RULE_CHAIN)?)?;
    let handle = be64(find(attributes, NFTA_RULE_HANDLE)?)?;
    let mut targets = Vec::new();
    let expressions = find(attributes, NFTA_RULE_EXPRESSIONS).unwrap_or_default();
    for (kind, expression) in nfnl::attributes(expressions) {
        if kind != NFTA_LIST_ELEM
            || find(expression, NFTA_EXPR_NAME).and_then(text) != Some("immediate")
        {
            continue;
        }
        let verdict = find(expression, NFTA_EXPR_DATA)
            .and_then(|data| find(data, NFTA_IMMEDIATE_DATA))
            .and_then(|data| find(data, NFTA_DATA_VERDICT));
        let Some(verdict) = verdict else { continue };
        let code = find(verdict, NFTA_VERDICT_CODE).and_then(be32);
        if matches!(code, Some(NFT_JUMP | NFT_GOTO)) {
            if let Some(target) = find(verdict, NFTA_VERDICT_CHAIN).and_then(text) {
                targets.push(target);
            }
        }
    }
    Some(DumpedRule {
        table,
        chain,
        handle,
        targets,
    })
}

/// An ipset list answer's set name.
pub(crate) fn parse_ipset_name(attributes: &[u8]) -> Option<&str> {
    text(find(attributes, IPSET_ATTR_SETNAME)?)
}

/// The nlmsg_type of an nf_tables answer.
fn nft_answer(command: u16) -> u16 {
    (nfnl::NFNL_SUBSYS_NFTABLES << 8) | command
}

/// errnos that mean "this subsystem is not there": nothing to find.
fn absent(errno: i32) -> bool {
    matches!(
        errno,
        libc::EINVAL | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT | libc::ENOENT
    )
}

/// Reads, and only reads, what upstream's IPVS mode left behind.
pub fn detect() -> Result<Leftovers, UpstreamError> {
    let mut socket = NfnlSocket::open().map_err(|e| UpstreamError::Socket(e.to_string()))?;
    let mut leftovers = Leftovers::default();
    for family in Family::ALL {
        detect_family(&mut socket, family, &mut leftovers)?;
    }
    leftovers.ipsets = detect_ipsets(&mut socket)?;
    leftovers.legacy_tables = legacy_tables();
    leftovers.chains.sort();
    leftovers.jumps.sort();
    Ok(leftovers)
}

fn detect_family(
    socket: &mut NfnlSocket,
    family: Family,
    leftovers: &mut Leftovers,
) -> Result<(), UpstreamError> {
    let list_error = |what, errno| UpstreamError::List {
        family: family.name(),
        what,
        text: errno_text(errno),
    };
    let request = Request::new(
        nfnl::NFNL_SUBSYS_NFTABLES,
        NFT_MSG_GETCHAIN,
        family.nfproto(),
    );
    let chains = match socket.dump(&request, nft_answer(NFT_MSG_NEWCHAIN)) {
        Ok(chains) => chains,
        Err(errno) if absent(errno) => return Ok(()),
        Err(errno) => return Err(list_error("nf_tables chains", errno)),
    };
    let before = leftovers.chains.len();
    for answer in &chains {
        if let Some((table, chain)) = parse_chain(answer) {
            if is_upstream_chain(table, chain) {
                leftovers.chains.push(FoundChain {
                    family,
                    table: table.to_owned(),
                    chain: chain.to_owned(),
                });
            }
        }
    }
    if leftovers.chains.len() == before {
        // A rule can only jump to a chain that exists.
        return Ok(());
    }
    let request = Request::new(
        nfnl::NFNL_SUBSYS_NFTABLES,
        NFT_MSG_GETRULE,
        family.nfproto(),
    );
    let rules = match socket.dump(&request, nft_answer(NFT_MSG_NEWRULE)) {
        Ok(rules) => rules,
        Err(errno) if absent(errno) => return Ok(()),
        Err(errno) => return Err(list_error("nf_tables rules", errno)),
    };
    for answer in &rules {
        let Some(rule) = parse_rule(answer) else {
            continue;
        };
        if is_upstream_chain(rule.table, rule.chain) {
            continue; // flushed with its chain
        }
        if let Some(target) = rule
            .targets
            .iter()
            .find(|t| is_upstream_chain(rule.table, t))
        {
            leftovers.jumps.push(JumpRule {
                family,
                table: rule.table.to_owned(),
                chain: rule.chain.to_owned(),
                handle: rule.handle,
                target: (*target).to_owned(),
            });
        }
    }
    Ok(())
}

fn detect_ipsets(socket: &mut NfnlSocket) -> Result<Vec<String>, UpstreamError> {
    // Asking would load ip_set on a node that never had it; its module
    // directory exists whenever it is loaded or built in (it has parameters).
    if !std::path::Path::new("/sys/module/ip_set").exists() {
        return Ok(Vec::new());
    }
    let request = Request::new(nfnl::NFNL_SUBSYS_IPSET, IPSET_CMD_LIST, 2)
        .attr(IPSET_ATTR_PROTOCOL, &[IPSET_PROTOCOL])
        .attr(
            IPSET_ATTR_FLAGS | NLA_F_NET_BYTEORDER,
            &IPSET_FLAG_LIST_SETNAME.to_be_bytes(),
        );
    let answers = match socket.dump(&request, request.kind) {
        Ok(answers) => answers,
        Err(errno) if absent(errno) => return Ok(Vec::new()),
        Err(errno) => {
            return Err(UpstreamError::List {
                family: "ipset",
                what: "sets",
                text: errno_text(errno),
            })
        }
    };
    let mut names: Vec<String> = answers
        .iter()
        .filter_map(|a| parse_ipset_name(a))
        .filter(|name| is_upstream_ipset(name))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The legacy x_tables tables that exist, per family.
fn legacy_tables() -> Vec<String> {
    let mut found = Vec::new();
    for (file, label) in [
        ("/proc/net/ip_tables_names", "ip_tables"),
        ("/proc/net/ip6_tables_names", "ip6_tables"),
    ] {
        if let Ok(names) = std::fs::read_to_string(file) {
            let names: Vec<&str> = names.split_whitespace().collect();
            if !names.is_empty() {
                found.push(format!("{label}: {}", names.join(" ")));
            }
        }
    }
    found
}

/// The nf_tables transaction that removes a family's leftovers: the jump
/// rules of the built-in chains, then every upstream chain flushed, then
/// deleted (flushing first drops the jumps between upstream's own chains).
fn removal_batch(leftovers: &Leftovers, family: Family) -> (Vec<Request>, Vec<String>) {
    let nft = |command| Request::new(nfnl::NFNL_SUBSYS_NFTABLES, command, family.nfproto());
    let mut requests = Vec::new();
    let mut what = Vec::new();
    for jump in leftovers.jumps.iter().filter(|j| j.family == family) {
        requests.push(
            nft(NFT_MSG_DELRULE)
                .string(NFTA_RULE_TABLE, &jump.table)
                .string(NFTA_RULE_CHAIN, &jump.chain)
                .attr(NFTA_RULE_HANDLE, &jump.handle.to_be_bytes()),
        );
        what.push(format!(
            "rule {} {} {} handle {} (jump {})",
            family.name(),
            jump.table,
            jump.chain,
            jump.handle,
            jump.target
        ));
    }
    let chains: Vec<&FoundChain> = leftovers
        .chains
        .iter()
        .filter(|c| c.family == family)
        .collect();
    for chain in &chains {
        requests.push(
            nft(NFT_MSG_DELRULE)
                .string(NFTA_RULE_TABLE, &chain.table)
                .string(NFTA_RULE_CHAIN, &chain.chain),
        );
        what.push(format!(
            "the rules of chain {} {} {}",
            family.name(),
            chain.table,
            chain.chain
        ));
    }
    for chain in &chains {
        requests.push(
            nft(NFT_MSG_DELCHAIN)
                .string(NFTA_CHAIN_TABLE, &chain.table)
                .string(NFTA_CHAIN_NAME, &chain.chain),
        );
        what.push(format!(
            "chain {} {} {}",
            family.name(),
            chain.table,
            chain.chain
        ));
    }
    (requests, what)
}

/// How often a set still referenced by rules deleted a moment ago is asked
/// for again: the kernel drops a deleted rule's references to its sets
/// after the commit, in a deferred work item.
const IPSET_BUSY_RETRIES: u32 = 50;

/// Removes `leftovers`: one nf_tables transaction per family, then each
/// ipset. Returns what was removed, one line each. A set or chain already
/// gone counts as removed by someone else and is skipped.
pub fn remove(leftovers: &Leftovers) -> Result<Vec<String>, UpstreamError> {
    let mut socket = NfnlSocket::open().map_err(|e| UpstreamError::Socket(e.to_string()))?;
    let mut removed = Vec::new();
    for family in Family::ALL {
        let (requests, what) = removal_batch(leftovers, family);
        if requests.is_empty() {
            continue;
        }
        socket.transact(&requests).map_err(|(at, errno)| {
            let what = match at.and_then(|i| what.get(i)) {
                Some(item) => format!(
                    "{item} (nothing of the {} family was removed)",
                    family.name()
                ),
                None => format!("the {} family's leftovers", family.name()),
            };
            UpstreamError::Remove {
                what,
                text: errno_text(errno),
            }
        })?;
        removed.extend(what);
    }
    for set in &leftovers.ipsets {
        let request = Request::new(nfnl::NFNL_SUBSYS_IPSET, IPSET_CMD_DESTROY, 2)
            .attr(IPSET_ATTR_PROTOCOL, &[IPSET_PROTOCOL])
            .string(IPSET_ATTR_SETNAME, set);
        let mut attempts = 0;
        loop {
            match socket.request(&request) {
                Ok(()) => {
                    removed.push(format!("ipset {set}"));
                    break;
                }
                Err(libc::ENOENT) => break,
                Err(IPSET_ERR_BUSY) if attempts < IPSET_BUSY_RETRIES => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(errno) => {
                    return Err(UpstreamError::Ipset {
                        set: set.clone(),
                        text: errno_text(errno),
                    })
                }
            }
        }
    }
    Ok(removed)
}

/// `kube-ipvs-proxy cleanup-upstream [--dry-run]`: the report it prints.
pub fn cleanup_command(dry_run: bool) -> Result<String, UpstreamError> {
    let leftovers = detect()?;
    let mut out = String::new();
    if leftovers.is_empty() {
        out.push_str("no leftovers of kube-proxy's IPVS mode found\n");
    } else if dry_run {
        out.push_str("would remove (dry run, nothing changed):\n");
        for family in Family::ALL {
            for line in removal_batch(&leftovers, family).1 {
                let _ = writeln!(out, "  {line}");
            }
        }
        for set in &leftovers.ipsets {
            let _ = writeln!(out, "  ipset {set}");
        }
    } else {
        out.push_str("removed:\n");
        for line in remove(&leftovers)? {
            let _ = writeln!(out, "  {line}");
        }
    }
    if !leftovers.legacy_tables.is_empty() {
        let _ = writeln!(
            out,
            "note: legacy (x_tables) iptables tables exist ({}) and were not read; inspect them \
             with `iptables-legacy-save` and `ip6tables-legacy-save`",
            leftovers.legacy_tables.join("; ")
        );
    }
    Ok(out)
}

/// At `run` start: one warning if upstream's leftovers are there. A failed
/// check is itself only a warning: it must not keep the proxy from running.
pub fn warn_if_present() {
    match detect() {
        Ok(leftovers) if !leftovers.is_empty() => {
            tracing::warn!(
                chains = %leftovers.chain_list(),
                ipsets = %leftovers.ipsets.join(", "),
                "{}",
                leftovers.warning()
            );
        }
        Ok(leftovers) => {
            if !leftovers.legacy_tables.is_empty() {
                tracing::info!(
                    legacy = %leftovers.legacy_tables.join("; "),
                    "legacy (x_tables) iptables tables exist and are not checked for kube-proxy's \
                     leftovers; inspect them with `iptables-legacy-save`"
                );
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not check for kube-proxy's IPVS-mode leftovers")
        }
    }
}

#[cfg(test)]
mod tests;
