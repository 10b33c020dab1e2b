//! The fixed part of the proxy's table: its chains, rules and set
//! declarations, built once per [`NftRuleset`] as netlink messages and as
//! `nft` text from the same description, so the two cannot drift apart.
//!
//! Every message is what `nft` 1.0.6 sends for the same declaration (see
//! the captures in `tests.rs`), attribute for attribute.

use netlink_packet_core::{DefaultNla, Emitable, NLA_F_NESTED, NLM_F_APPEND, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, Expressions, Hook, Immediate,
    InetHookNumber, ListAttribute, Lookup, Meta, MetaKey, NfTablesMessage, Operator, Payload,
    Register, RuleAttribute, RuleMessage, SetAttribute, SetDescription, SetFlags, SetMessage,
    TableAttribute, TableFlags, TableMessage, Verdict, VerdictAttribute,
};

use super::element::Shape;
use super::expr::{self, Byteorder, Ct, Fib, Reject};
use crate::desired::{LocalDetect, NftFamily, NftRuleset, NftSet, MASQUERADE_MARK, NFT_TABLE};

// Defined in Linux kernel: include/uapi/linux/netfilter/nf_tables.h
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFTA_SET_DESC_CONCAT: u16 = 2;

/// nft's key types (src/datatype.h): TYPE_IPADDR, TYPE_IP6ADDR,
/// TYPE_INET_PROTOCOL, TYPE_INET_SERVICE.
pub(super) const TYPE_IPADDR: u32 = 7;
pub(super) const TYPE_IP6ADDR: u32 = 8;
pub(super) const TYPE_INET_PROTOCOL: u32 = 12;
pub(super) const TYPE_INET_SERVICE: u32 = 13;
/// nft's TYPE_BITS: a concatenation's type is its fields' types, 6 bits each.
const TYPE_BITS: u32 = 6;

/// The set's NFTA_SET_USERDATA as nft 1.0.6 writes it (libnftnl TLVs, host
/// byte order), so that `nft list` prints the sets as declared:
/// NFTNL_UDATA_SET_KEYBYTEORDER = BYTEORDER_BIG_ENDIAN (2).
const UDATA_SINGLE: [u8; 6] = [0x00, 0x04, 0x02, 0x00, 0x00, 0x00];
/// For a concatenation: KEYBYTEORDER = BYTEORDER_INVALID (0), then
/// NFTNL_UDATA_SET_KEY_TYPEOF { TYPEOF_EXPR = EXPR_CONCAT (13), TYPEOF_DATA = empty }.
const UDATA_CONCAT: [u8; 16] = [
    0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x08, 0x00, 0x04, 0x0d, 0x00, 0x00, 0x00, 0x01, 0x00,
];

/// What one message of the skeleton creates, to name it when it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Subject {
    Table,
    Chain {
        name: &'static str,
        /// The base chain's type (`nat`, `filter`), which may need a module.
        kind: Option<&'static str>,
    },
    Set(NftSet),
    Rule {
        chain: &'static str,
        text: String,
        /// The expression the rule needs beyond nf_tables' core, and its module.
        needs: Option<(&'static str, &'static str)>,
    },
}

/// One message of a transaction, the family of the table it is for (its
/// nfgenmsg), and the NLM_F_* flags it needs besides REQUEST (and the ACK
/// the socket adds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    pub family: NftFamily,
    pub message: NfTablesMessage,
    pub flags: u16,
}

/// A base chain's hook.
#[derive(Debug, Clone, Copy)]
struct BaseChain {
    kind: &'static str,
    hook: InetHookNumber,
    hook_name: &'static str,
    priority: i32,
}

#[derive(Debug, Clone)]
pub(super) struct Chain {
    pub name: &'static str,
    base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub text: String,
    expressions: Vec<Expressions>,
    needs: Option<(&'static str, &'static str)>,
}

/// The proxy's chains and rules for one ruleset in the table of one
/// family, in declaration order. Both tables have the same chains and
/// rules; only the address fields differ (`ip daddr`, `ip6 daddr`).
#[derive(Debug, Clone)]
pub(super) struct Skeleton {
    pub family: NftFamily,
    pub chains: Vec<Chain>,
}

impl Skeleton {
    pub fn new(ruleset: &NftRuleset, family: NftFamily) -> Self {
        let rule = || RuleBuilder::new(family);
        let nat = |hook, hook_name, priority| BaseChain {
            kind: "nat",
            hook,
            hook_name,
            priority,
        };
        let filter = |hook, hook_name, priority| BaseChain {
            kind: "filter",
            hook,
            hook_name,
            priority,
        };
        let chains = vec![
            chain(
                "nat-prerouting",
                Some(nat(InetHookNumber::PreRouting, "prerouting", -100)),
                vec![rule().jump("services")],
            ),
            chain(
                "nat-output",
                Some(nat(InetHookNumber::LocalOut, "output", -100)),
                vec![rule().jump("services")],
            ),
            chain(
                "nat-postrouting",
                Some(nat(InetHookNumber::PostRouting, "postrouting", 100)),
                vec![
                    rule().mark_is_set().mark_clear().masquerade(),
                    rule()
                        .lookup(&[Field::Saddr], NftSet::ServiceIps, false)
                        .masquerade(),
                    rule()
                        .lookup(&Field::ADDR_PROTO_PORT_SADDR, NftSet::Hairpin, false)
                        .masquerade(),
                ],
            ),
            chain(
                "services",
                None,
                vec![
                    rule()
                        .lookup(&Field::ADDR_PROTO_PORT, NftSet::ClusterIps, false)
                        .jump("cluster-ip"),
                    rule()
                        .lookup(&Field::ADDR_PROTO_PORT, NftSet::ExternalIps, false)
                        .jump("mark-for-masquerade"),
                    rule()
                        .fib_daddr_local()
                        .lookup(&Field::PROTO_PORT, NftSet::NodePorts, false)
                        .jump("mark-for-masquerade"),
                ],
            ),
            chain("cluster-ip", None, cluster_ip_rules(ruleset, family)),
            chain("mark-for-masquerade", None, vec![rule().mark_set().done()]),
            chain(
                "filter-input",
                Some(filter(InetHookNumber::LocalIn, "input", 0)),
                vec![rule().ct_state_new().jump("service-checks")],
            ),
            // -110: before IPVS's LOCAL_OUT hook (-99), which rewrites the destination.
            chain(
                "filter-output",
                Some(filter(InetHookNumber::LocalOut, "output", -110)),
                vec![rule().ct_state_new().jump("service-checks")],
            ),
            chain(
                "service-checks",
                None,
                vec![
                    rule()
                        .lookup(&Field::ADDR_PROTO_PORT, NftSet::FirewallIps, false)
                        .jump("firewall"),
                    rule()
                        .lookup(&Field::ADDR_PROTO_PORT, NftSet::NoLocalEndpoints, false)
                        .drop(),
                    rule()
                        .fib_daddr_local()
                        .lookup(&Field::PROTO_PORT, NftSet::NodePortsNoLocalEndpoints, false)
                        .drop(),
                    rule()
                        .lookup(&[Field::Daddr], NftSet::ServiceIps, false)
                        .jump("service-ip-ports"),
                ],
            ),
            chain(
                "firewall",
                None,
                vec![
                    rule()
                        .lookup(&Field::ADDR_PROTO_PORT_SADDR, NftSet::FirewallAllow, false)
                        .ret(),
                    rule().drop(),
                ],
            ),
            // Ping and other protocols to a service address are left alone.
            chain(
                "service-ip-ports",
                None,
                vec![
                    rule()
                        .l4proto_is_not("tcp", libc::IPPROTO_TCP)
                        .l4proto_is_not("udp", libc::IPPROTO_UDP)
                        .l4proto_is_not("sctp", libc::IPPROTO_SCTP)
                        .ret(),
                    rule()
                        .lookup(&Field::ADDR_PROTO_PORT, NftSet::ClusterIps, false)
                        .ret(),
                    rule()
                        .lookup(&Field::ADDR_PROTO_PORT, NftSet::ExternalIps, false)
                        .ret(),
                    rule()
                        .lookup(&Field::ADDR_PROTO_PORT, NftSet::ExternalIpsLocal, false)
                        .ret(),
                    rule().reject(),
                ],
            ),
        ];
        Skeleton { family, chains }
    }

    /// Every message that creates the table, in the order `nft -f` sends
    /// them: the table, its chains, its sets, then the rules.
    pub fn requests(&self) -> Vec<(Request, Subject)> {
        let body = self.body();
        let table = (
            Request {
                family: self.family,
                message: new_table(fingerprint(&body)),
                flags: 0,
            },
            Subject::Table,
        );
        std::iter::once(table).chain(body).collect()
    }

    /// The fingerprint stored in the table's comment.
    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.body())
    }

    /// How many rules each chain holds, by name.
    pub fn rule_counts(&self) -> Vec<(&'static str, usize)> {
        self.chains
            .iter()
            .map(|c| (c.name, c.rules.len()))
            .collect()
    }

    /// The chain, set and rule messages: everything but the table.
    fn body(&self) -> Vec<(Request, Subject)> {
        let chains = self.chains.iter().map(|c| {
            let subject = Subject::Chain {
                name: c.name,
                kind: c.base.map(|b| b.kind),
            };
            (new_chain(self.family, c), subject)
        });
        let sets = NftSet::ALL
            .into_iter()
            .map(|set| (new_set(self.family, set), Subject::Set(set)));
        let rules = self.chains.iter().flat_map(|c| {
            c.rules.iter().map(|r| {
                let subject = Subject::Rule {
                    chain: c.name,
                    text: r.text.clone(),
                    needs: r.needs,
                };
                (new_rule(self.family, c.name, r), subject)
            })
        });
        chains.chain(sets).chain(rules).collect()
    }

    /// The chains in `nft` syntax, one block per chain.
    pub fn render_chains(&self) -> String {
        let mut out = String::new();
        for c in &self.chains {
            out.push_str(&format!("\tchain {} {{\n", c.name));
            if let Some(base) = c.base {
                out.push_str(&format!(
                    "\t\ttype {} hook {} priority {}; policy accept;\n",
                    base.kind, base.hook_name, base.priority
                ));
            }
            for r in &c.rules {
                out.push_str(&format!("\t\t{}\n", r.text));
            }
            out.push_str("\t}\n");
        }
        out
    }
}

/// The comment that carries the fingerprint in NFTA_TABLE_USERDATA.
pub(super) fn table_comment(fingerprint: u64) -> String {
    format!("{NFT_TABLE} {fingerprint:016x}")
}

/// The fingerprint in a table's NFTA_TABLE_USERDATA, if it carries one of ours.
pub(super) fn fingerprint_of(userdata: &[u8]) -> Option<u64> {
    // libnftnl TLVs: NFTNL_UDATA_TABLE_COMMENT (0), length, NUL-terminated text.
    let mut rest = userdata;
    while let [kind, len, tail @ ..] = rest {
        let value = tail.get(..usize::from(*len))?;
        if *kind == NFTNL_UDATA_TABLE_COMMENT {
            let text = std::str::from_utf8(value.strip_suffix(&[0])?).ok()?;
            let hex = text.strip_prefix(NFT_TABLE)?.strip_prefix(' ')?;
            return u64::from_str_radix(hex, 16).ok();
        }
        rest = &tail[usize::from(*len)..];
    }
    None
}

const NFTNL_UDATA_TABLE_COMMENT: u8 = 0;

fn new_table(fingerprint: u64) -> NfTablesMessage {
    let comment = table_comment(fingerprint);
    let mut userdata = vec![NFTNL_UDATA_TABLE_COMMENT, (comment.len() + 1) as u8];
    userdata.extend_from_slice(comment.as_bytes());
    userdata.push(0);
    NfTablesMessage::NewTable(TableMessage {
        attributes: vec![
            TableAttribute::Name(NFT_TABLE.to_owned()),
            TableAttribute::Flags(TableFlags::empty()),
            TableAttribute::UserData(userdata),
        ],
    })
}

/// FNV-1a over the emitted chain, set and rule messages.
fn fingerprint(body: &[(Request, Subject)]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (request, _) in body {
        let mut bytes = vec![0; request.message.buffer_len()];
        request.message.emit(&mut bytes);
        for byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

fn new_chain(family: NftFamily, c: &Chain) -> Request {
    let mut attributes = vec![
        ChainAttribute::Table(NFT_TABLE.to_owned()),
        ChainAttribute::Name(c.name.to_owned()),
    ];
    if let Some(base) = c.base {
        attributes.extend([
            ChainAttribute::Type(base.kind.to_owned()),
            ChainAttribute::Policy(expr::NF_ACCEPT),
            ChainAttribute::Hook(vec![
                Hook::Number(base.hook.into()),
                // NFTA_HOOK_PRIORITY is a signed 32-bit value.
                Hook::Priority(base.priority as u32),
            ]),
        ]);
    }
    Request {
        family,
        message: NfTablesMessage::NewChain(ChainMessage { attributes }),
        flags: NLM_F_CREATE,
    }
}

/// The transaction id nft gives a set: its place in [`NftSet::ALL`], from 1.
/// Lookups name the set and carry the id, as nft's do.
pub(super) fn set_id(set: NftSet) -> u32 {
    NftSet::ALL
        .iter()
        .position(|s| *s == set)
        .map_or(0, |i| i as u32 + 1)
}

fn new_set(family: NftFamily, set: NftSet) -> Request {
    let shape = Shape::of(set);
    let fields = shape.fields(family);
    let key_type = fields
        .iter()
        .fold(0, |acc, f| (acc << TYPE_BITS) | f.nft_type());
    let key_len: u32 = fields.iter().map(|f| f.padded_len()).sum();
    let mut flags = SetFlags::empty();
    if shape.is_interval() {
        flags |= SetFlags::Interval;
        if fields.len() > 1 {
            flags |= SetFlags::Concat;
        }
    }
    let mut attributes = vec![
        SetAttribute::Table(NFT_TABLE.to_owned()),
        SetAttribute::Name(set.name().to_owned()),
        SetAttribute::Flags(flags),
        SetAttribute::KeyType(key_type),
        SetAttribute::KeyLen(key_len),
        SetAttribute::Id(set_id(set)),
    ];
    // nft describes the fields of a concatenation only where the kernel
    // needs them: for intervals (the pipapo backend).
    if shape.is_interval() && fields.len() > 1 {
        let mut concat = Vec::new();
        for field in fields {
            // NFTA_LIST_ELEM { NFTA_SET_FIELD_LEN: u32 }
            let mut elem = Vec::with_capacity(8);
            elem.extend_from_slice(&8u16.to_ne_bytes());
            elem.extend_from_slice(&NFTA_SET_FIELD_LEN.to_ne_bytes());
            elem.extend_from_slice(&field.len().to_be_bytes());
            let nla = DefaultNla::new(NFTA_LIST_ELEM | NLA_F_NESTED, elem);
            let at = concat.len();
            concat.resize(at + nla.buffer_len(), 0);
            nla.emit(&mut concat[at..]);
        }
        // The crate's SetDescription::Concat leaves out NLA_F_NESTED, which
        // nft sets.
        attributes.push(SetAttribute::Description(vec![SetDescription::Other(
            DefaultNla::new(NFTA_SET_DESC_CONCAT | NLA_F_NESTED, concat),
        )]));
    }
    let userdata = if fields.len() > 1 {
        UDATA_CONCAT.to_vec()
    } else {
        UDATA_SINGLE.to_vec()
    };
    attributes.push(SetAttribute::UserData(userdata));
    Request {
        family,
        message: NfTablesMessage::NewSet(SetMessage { attributes }),
        flags: NLM_F_CREATE,
    }
}

fn new_rule(family: NftFamily, chain: &str, rule: &Rule) -> Request {
    let expressions = rule
        .expressions
        .iter()
        .cloned()
        .map(ListAttribute::from)
        .collect();
    Request {
        family,
        message: NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(NFT_TABLE.to_owned()),
                RuleAttribute::Chain(chain.to_owned()),
                RuleAttribute::Expressions(expressions),
            ],
        }),
        flags: NLM_F_CREATE | NLM_F_APPEND,
    }
}

fn chain(name: &'static str, base: Option<BaseChain>, rules: Vec<Rule>) -> Chain {
    Chain { name, base, rules }
}

/// The local-traffic rule and the mark, by `--detect-local-mode`.
fn cluster_ip_rules(ruleset: &NftRuleset, family: NftFamily) -> Vec<Rule> {
    let mark = || RuleBuilder::new(family).jump("mark-for-masquerade");
    if ruleset.masquerade_all {
        return vec![mark()];
    }
    let local = match &ruleset.local_detect {
        // Nothing tells pods apart: nothing is marked.
        LocalDetect::None => return Vec::new(),
        LocalDetect::Cidrs => {
            RuleBuilder::new(family).lookup(&[Field::Saddr], NftSet::LocalPodCidrs, false)
        }
        LocalDetect::BridgeInterface(name) => RuleBuilder::new(family).iifname(name),
        LocalDetect::InterfaceNamePrefix(prefix) => RuleBuilder::new(family).iifname_prefix(prefix),
    };
    vec![local.ret(), mark()]
}

/// One field of a lookup key, loaded into a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Daddr,
    Saddr,
    L4proto,
    Dport,
}

impl Field {
    const ADDR_PROTO_PORT: [Field; 3] = [Field::Daddr, Field::L4proto, Field::Dport];
    const ADDR_PROTO_PORT_SADDR: [Field; 4] =
        [Field::Daddr, Field::L4proto, Field::Dport, Field::Saddr];
    const PROTO_PORT: [Field; 2] = [Field::L4proto, Field::Dport];

    fn text(self, family: NftFamily) -> &'static str {
        match (self, family) {
            (Field::Daddr, NftFamily::Ip) => "ip daddr",
            (Field::Saddr, NftFamily::Ip) => "ip saddr",
            (Field::Daddr, NftFamily::Ip6) => "ip6 daddr",
            (Field::Saddr, NftFamily::Ip6) => "ip6 saddr",
            (Field::L4proto, _) => "meta l4proto",
            (Field::Dport, _) => "th dport",
        }
    }

    /// Loads the field: the addresses at their offsets in the IPv4 header
    /// (12, 16) or the IPv6 header (8, 24).
    fn load(self, register: Register, family: NftFamily) -> Expressions {
        let payload = |base, offset, len| {
            Expressions::Payload(vec![
                Payload::DestinationRegister(register),
                Payload::Base(base),
                Payload::Offset(offset),
                Payload::Len(len),
            ])
        };
        match (self, family) {
            (Field::Daddr, NftFamily::Ip) => payload(expr::NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
            (Field::Saddr, NftFamily::Ip) => payload(expr::NFT_PAYLOAD_NETWORK_HEADER, 12, 4),
            (Field::Daddr, NftFamily::Ip6) => payload(expr::NFT_PAYLOAD_NETWORK_HEADER, 24, 16),
            (Field::Saddr, NftFamily::Ip6) => payload(expr::NFT_PAYLOAD_NETWORK_HEADER, 8, 16),
            (Field::L4proto, _) => meta_load(MetaKey::L4Proto, register),
            (Field::Dport, _) => payload(expr::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
        }
    }
}

fn meta_load(key: MetaKey, register: Register) -> Expressions {
    Expressions::Meta(vec![Meta::Key(key), Meta::DestinationRegister(register)])
}

fn cmp(op: Operator, data: Vec<u8>) -> Expressions {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(data)),
    ])
}

/// The register of a concatenation's field at 32-bit word `word`, numbered
/// as nft numbers it (netlink_put_register): a word on a 16-byte boundary
/// by its 128-bit register (NFT_REG_1, NFT_REG_2...), any other by its
/// NFT_REG32_* (NFT_REG32_00 is 8).
fn register_at(word: u32) -> Register {
    if word.is_multiple_of(4) {
        Register::from(1 + word / 4)
    } else {
        Register::from(8 + word)
    }
}

/// Builds a rule's expressions and its `nft` text side by side, for the
/// table of one family.
#[derive(Debug)]
struct RuleBuilder {
    family: NftFamily,
    text: Vec<String>,
    expressions: Vec<Expressions>,
    needs: Option<(&'static str, &'static str)>,
}

impl RuleBuilder {
    fn new(family: NftFamily) -> Self {
        RuleBuilder {
            family,
            text: Vec::new(),
            expressions: Vec::new(),
            needs: None,
        }
    }

    fn push(
        mut self,
        text: impl Into<String>,
        expressions: impl IntoIterator<Item = Expressions>,
    ) -> Self {
        self.text.push(text.into());
        self.expressions.extend(expressions);
        self
    }

    /// `FIELD . FIELD ... [!=] @SET`: fields in consecutive 4-byte registers.
    fn lookup(self, fields: &[Field], set: NftSet, invert: bool) -> Self {
        let mut loads = Vec::new();
        let mut word = 0;
        for field in fields {
            let register = register_at(word);
            loads.push(field.load(register, self.family));
            // nft converts host-order fields to network order for interval
            // lookups. On the one-byte protocol with 2-byte units it swaps
            // nothing (len / size = 0 units); it is kept to send what nft does.
            if *field == Field::L4proto && Shape::of(set).is_interval() {
                loads.push(expr::byteorder(&[
                    Byteorder::SourceRegister(register),
                    Byteorder::DestinationRegister(register),
                    Byteorder::Op(expr::NFT_BYTEORDER_HTON),
                    Byteorder::Len(1),
                    Byteorder::Size(2),
                ]));
            }
            word += Shape::field_of(*field, self.family).padded_len() / 4;
        }
        let mut attributes = vec![
            Lookup::SourceRegister(Register::Reg1),
            Lookup::Set(set.name().to_owned()),
            Lookup::SetId(set_id(set)),
        ];
        if invert {
            attributes.push(Lookup::Flags(expr::NFT_LOOKUP_F_INV));
        }
        loads.push(Expressions::Lookup(attributes));
        let key: Vec<&str> = fields.iter().map(|f| f.text(self.family)).collect();
        let op = if invert { "!= " } else { "" };
        self.push(format!("{} {op}@{}", key.join(" . "), set.name()), loads)
    }

    /// `fib daddr type local`
    fn fib_daddr_local(mut self) -> Self {
        self.needs = Some(("fib", fib_module(self.family)));
        self.push(
            "fib daddr type local",
            [
                expr::fib(&[
                    Fib::Flags(expr::NFTA_FIB_F_DADDR),
                    Fib::Result(expr::NFT_FIB_RESULT_ADDRTYPE),
                    Fib::DestinationRegister(Register::Reg1),
                ]),
                cmp(Operator::Equal, expr::RTN_LOCAL.to_ne_bytes().to_vec()),
            ],
        )
    }

    /// `ct state new`
    fn ct_state_new(mut self) -> Self {
        self.needs = Some(("ct", "nft_ct"));
        self.push(
            "ct state new",
            [
                expr::ct(&[
                    Ct::Key(expr::NFT_CT_STATE),
                    Ct::DestinationRegister(Register::Reg1),
                ]),
                Expressions::Bitwise(vec![
                    Bitwise::SourceRegister(Register::Reg1),
                    Bitwise::DestinationRegister(Register::Reg1),
                    Bitwise::Length(4),
                    Bitwise::Mask(DataAttribute::Value(
                        expr::NF_CT_STATE_NEW_BIT.to_ne_bytes().to_vec(),
                    )),
                    Bitwise::Xor(DataAttribute::Value(vec![0; 4])),
                ]),
                cmp(Operator::NotEqual, vec![0; 4]),
            ],
        )
    }

    /// `meta l4proto != NAME`
    fn l4proto_is_not(self, name: &str, number: i32) -> Self {
        self.push(
            format!("meta l4proto != {name}"),
            [
                meta_load(MetaKey::L4Proto, Register::Reg1),
                cmp(Operator::NotEqual, vec![number as u8]),
            ],
        )
    }

    /// `iifname "NAME"`: the name NUL-padded to IFNAMSIZ, as nft compares it.
    fn iifname(self, name: &str) -> Self {
        let mut data = name.as_bytes().to_vec();
        data.resize(libc::IFNAMSIZ.max(data.len() + 1), 0);
        self.push(
            format!("iifname \"{name}\""),
            [
                meta_load(MetaKey::Iifname, Register::Reg1),
                cmp(Operator::Equal, data),
            ],
        )
    }

    /// `iifname "PREFIX*"`: only the prefix's bytes are compared.
    fn iifname_prefix(self, prefix: &str) -> Self {
        self.push(
            format!("iifname \"{prefix}*\""),
            [
                meta_load(MetaKey::Iifname, Register::Reg1),
                cmp(Operator::Equal, prefix.as_bytes().to_vec()),
            ],
        )
    }

    /// `meta mark & MARK == MARK`
    fn mark_is_set(self) -> Self {
        let mark = MASQUERADE_MARK.to_ne_bytes().to_vec();
        self.push(
            format!("meta mark & {MASQUERADE_MARK:#x} == {MASQUERADE_MARK:#x}"),
            [
                meta_load(MetaKey::Mark, Register::Reg1),
                mark_bitwise(mark.clone(), vec![0; 4]),
                cmp(Operator::Equal, mark),
            ],
        )
    }

    /// `meta mark set meta mark ^ MARK`: clears the mark once it is seen set.
    fn mark_clear(self) -> Self {
        self.push(
            format!("meta mark set meta mark ^ {MASQUERADE_MARK:#x}"),
            mark_set_expressions(vec![0xff; 4], MASQUERADE_MARK.to_ne_bytes().to_vec()),
        )
    }

    /// `meta mark set meta mark | MARK`
    fn mark_set(self) -> Self {
        self.push(
            format!("meta mark set meta mark | {MASQUERADE_MARK:#x}"),
            mark_set_expressions(
                (!MASQUERADE_MARK).to_ne_bytes().to_vec(),
                MASQUERADE_MARK.to_ne_bytes().to_vec(),
            ),
        )
    }

    fn masquerade(mut self) -> Rule {
        self.needs = Some(("masq", "nft_masq"));
        self.push("masquerade", [expr::masq()]).done()
    }

    /// `reject`: ICMP port unreachable, or ICMPv6 port unreachable in `ip6`.
    fn reject(mut self) -> Rule {
        let (module, code) = match self.family {
            NftFamily::Ip => ("nft_reject_ipv4", expr::ICMP_PORT_UNREACH),
            NftFamily::Ip6 => ("nft_reject_ipv6", expr::ICMPV6_PORT_UNREACH),
        };
        self.needs = Some(("reject", module));
        self.push(
            "reject",
            [expr::reject(&[
                Reject::Type(expr::NFT_REJECT_ICMP_UNREACH),
                Reject::IcmpCode(code),
            ])],
        )
        .done()
    }

    fn jump(self, chain: &str) -> Rule {
        self.verdict(format!("jump {chain}"), Verdict::Jump, Some(chain))
    }

    fn ret(self) -> Rule {
        self.verdict("return".to_owned(), Verdict::Return, None)
    }

    fn drop(self) -> Rule {
        self.verdict("drop".to_owned(), Verdict::Other(expr::NF_DROP), None)
    }

    fn verdict(self, text: String, code: Verdict, chain: Option<&str>) -> Rule {
        let mut verdict = vec![VerdictAttribute::Code(code)];
        verdict.extend(chain.map(|c| VerdictAttribute::Chain(c.to_owned())));
        self.push(
            text,
            [Expressions::Immediate(vec![
                Immediate::DestinationRegister(Register::Verdict),
                Immediate::Data(DataAttribute::Verdict(verdict)),
            ])],
        )
        .done()
    }

    fn done(self) -> Rule {
        Rule {
            text: self.text.join(" "),
            expressions: self.expressions,
            needs: self.needs,
        }
    }
}

/// The module of the `fib` expression in the table of `family`.
fn fib_module(family: NftFamily) -> &'static str {
    match family {
        NftFamily::Ip => "nft_fib_ipv4",
        NftFamily::Ip6 => "nft_fib_ipv6",
    }
}

/// `(reg & mask) ^ xor` on the mark, with NFTA_BITWISE_OP as nft writes
/// it for the mark (its `ct state` bitwise has none).
fn mark_bitwise(mask: Vec<u8>, xor: Vec<u8>) -> Expressions {
    Expressions::Bitwise(vec![
        Bitwise::SourceRegister(Register::Reg1),
        Bitwise::DestinationRegister(Register::Reg1),
        Bitwise::Op(expr::NFT_BITWISE_BOOL),
        Bitwise::Length(4),
        Bitwise::Mask(DataAttribute::Value(mask)),
        Bitwise::Xor(DataAttribute::Value(xor)),
    ])
}

/// `meta mark set meta mark OP VALUE`: load, `(mark & mask) ^ xor`, store.
fn mark_set_expressions(mask: Vec<u8>, xor: Vec<u8>) -> [Expressions; 3] {
    [
        meta_load(MetaKey::Mark, Register::Reg1),
        mark_bitwise(mask, xor),
        Expressions::Meta(vec![
            Meta::Key(MetaKey::Mark),
            Meta::SourceRegister(Register::Reg1),
        ]),
    ]
}
