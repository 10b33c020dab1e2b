//! The proxy's nftables tables (`table ip kube-ipvs-proxy`, and `table ip6
//! kube-ipvs-proxy` on a node with IPv6) over netlink, with no `nft` binary
//! at run time.
//!
//! The tables' chains and rules are fixed per [`NftRuleset`]; everything per
//! service lives in their sets. [`render_ruleset`] prints the tables as
//! `nft` would list them:
//!
//! ```text
//! ensure_ruleset  ~ nft -f <(render_ruleset)   (each table adopted as is when it matches)
//! apply           ~ nft -f <(render_element for each change)   (one transaction, both tables)
//! dump_elements   ~ nft list set FAMILY kube-ipvs-proxy SET   (for every set of every table)
//! delete_table    ~ nft delete table ip kube-ipvs-proxy; nft delete table ip6 kube-ipvs-proxy
//! ```
//!
//! Every message is what `nft` 1.0.6 sends for the same command, pinned
//! byte for byte in `tests.rs`. No other table is ever touched.

mod element;
mod expr;
mod render;
mod ruleset;
mod socket;
#[cfg(test)]
mod tests;

pub use self::render::{render_element, render_ruleset};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, GenAttribute, GenMessage, NfTablesMessage, RuleAttribute,
    RuleMessage, SetAttribute, SetElementList, SetElementMessage, SetMessage, TableAttribute,
    TableMessage,
};
use netlink_packet_netfilter::NetfilterProtoFamily;

use self::element::Op;
use self::ruleset::{Request, Skeleton, Subject};
use self::socket::{proto_family, BatchError, NftSocket, Refusal};
use super::{KernelError, NftKernel};
use crate::desired::{NftChange, NftElement, NftFamily, NftRuleset, NftSet, NFT_TABLE};

/// The byte budget of one NEWSETELEM/DELSETELEM's element list: its
/// NFTA_SET_ELEM_LIST_ELEMENTS must stay under the 64 KiB an attribute's
/// 16-bit length allows.
const ELEMENTS_PER_MESSAGE_BYTES: usize = 32 * 1024;

/// The proxy's nftables tables over a NETLINK_NETFILTER socket. Blocking
/// I/O runs on tokio's blocking pool; it is called once per sync.
#[derive(Debug)]
pub struct NetlinkNft {
    socket: Option<NftSocket>,
    /// The tables the last [`NftKernel::ensure_ruleset`] made or adopted,
    /// which [`NftKernel::dump_elements`] reads: `ip` until then.
    families: Vec<NftFamily>,
}

impl NetlinkNft {
    /// Opens the socket. Fails when the kernel has no nfnetlink.
    pub fn new() -> Result<Self, KernelError> {
        let socket = NftSocket::open().map_err(|r| match r.errno {
            libc::EPROTONOSUPPORT => KernelError::Other(
                "the kernel has no nfnetlink (module nfnetlink), so no nf_tables".to_owned(),
            ),
            _ => KernelError::Other(format!("opening a NETLINK_NETFILTER socket: {}", r.text())),
        })?;
        Ok(NetlinkNft {
            socket: Some(socket),
            families: vec![NftFamily::Ip],
        })
    }

    /// Runs `work` on the socket on the blocking pool.
    async fn with_socket<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut NftSocket) -> Result<T, KernelError> + Send + 'static,
    ) -> Result<T, KernelError> {
        let mut socket = self.socket.take().ok_or_else(|| {
            KernelError::Other("the nf_tables socket was lost by an earlier panic".to_owned())
        })?;
        let (socket, result) = tokio::task::spawn_blocking(move || {
            let result = work(&mut socket);
            (socket, result)
        })
        .await
        .map_err(|e| KernelError::Other(format!("nf_tables I/O task: {e}")))?;
        self.socket = Some(socket);
        result
    }
}

impl NftKernel for NetlinkNft {
    /// One table per family of the ruleset, each adopted or (re)created
    /// on its own: the `ip` table is never rewritten for the `ip6` one's
    /// sake. The `ip6` table is not touched when the ruleset has none.
    #[tracing::instrument(skip_all)]
    async fn ensure_ruleset(
        &mut self,
        ruleset: &NftRuleset,
    ) -> Result<Vec<NftElement>, KernelError> {
        let families: Vec<NftFamily> = ruleset.families().collect();
        let skeletons: Vec<Skeleton> = families
            .iter()
            .map(|family| Skeleton::new(ruleset, *family))
            .collect();
        let held = self
            .with_socket(move |socket| {
                let mut held = Vec::new();
                for skeleton in &skeletons {
                    held.extend(ensure(socket, skeleton)?);
                }
                Ok(held)
            })
            .await?;
        self.families = families;
        Ok(held)
    }

    #[tracing::instrument(skip_all)]
    async fn dump_elements(&mut self) -> Result<Vec<NftElement>, KernelError> {
        let families = self.families.clone();
        self.with_socket(move |socket| {
            let mut held = Vec::new();
            for family in families {
                held.extend(dump_all(socket, family)?);
            }
            Ok(held)
        })
        .await
    }

    /// One GETGEN; a failure is logged at debug level and read as unknown.
    async fn generation(&mut self) -> Option<u32> {
        let answer = self
            .with_socket(|socket| {
                let request = NfTablesMessage::GetGen(GenMessage { attributes: vec![] });
                socket
                    .get(request, NetfilterProtoFamily::Unspec)
                    .map_err(|r| KernelError::Other(format!("GETGEN: {}", r.text())))
            })
            .await;
        match answer {
            Ok(NfTablesMessage::NewGen(message)) => {
                message.attributes.iter().find_map(|a| match a {
                    GenAttribute::Id(id) => Some(*id),
                    _ => None,
                })
            }
            Ok(other) => {
                tracing::debug!(?other, "GETGEN answered with another message");
                None
            }
            Err(error) => {
                tracing::debug!(%error, "cannot read the nf_tables generation");
                None
            }
        }
    }

    /// All or nothing. An add of an element that exists succeeds; a delete
    /// of one that is gone fails the whole transaction (ENOENT: there is no
    /// DESTROYSETELEM before kernel 6.3), so callers delete only elements
    /// that [`NftKernel::dump_elements`] or their own adds put there.
    #[tracing::instrument(skip_all, fields(changes = changes.len()))]
    async fn apply(&mut self, changes: &[NftChange]) -> Result<(), KernelError> {
        if changes.is_empty() {
            return Ok(());
        }
        let batch = ElementBatch::new(changes)?;
        self.with_socket(move |socket| match socket.transact(&batch.requests) {
            Ok(()) => Ok(()),
            Err(e) => Err(batch.error(e)),
        })
        .await
    }

    /// Both tables, each in a transaction of its own (a missing one must
    /// not stop the other's deletion); `true` when either was there.
    #[tracing::instrument(skip_all)]
    async fn delete_table(&mut self) -> Result<bool, KernelError> {
        self.with_socket(|socket| {
            let mut deleted = false;
            for family in NftFamily::ALL {
                deleted |= delete(socket, family)?;
            }
            Ok(deleted)
        })
        .await
    }
}

/// Deletes the table of `family`; `false` when there was none (or, for
/// `ip6`, when the kernel has no IPv6 nf_tables, so none can exist).
fn delete(socket: &mut NftSocket, family: NftFamily) -> Result<bool, KernelError> {
    let request = Request {
        family,
        message: NfTablesMessage::DeleteTable(table_by_name()),
        flags: 0,
    };
    match socket.transact(&[request]) {
        Ok(()) => Ok(true),
        Err(BatchError::Message(_, r)) if r.errno == libc::ENOENT => Ok(false),
        Err(BatchError::Message(_, r)) | Err(BatchError::Whole(r))
            if family == NftFamily::Ip6 && r.errno == libc::EAFNOSUPPORT =>
        {
            Ok(false)
        }
        Err(BatchError::Message(_, r)) | Err(BatchError::Whole(r)) => {
            Err(missing_nf_tables(family, &r).unwrap_or_else(|| {
                KernelError::Other(format!("deleting table {family} {NFT_TABLE}: {}", r.text()))
            }))
        }
    }
}

fn table_by_name() -> TableMessage {
    TableMessage {
        attributes: vec![TableAttribute::Name(NFT_TABLE.to_owned())],
    }
}

/// The errors that mean the kernel has no nf_tables for `family` at all.
fn missing_nf_tables(family: NftFamily, r: &Refusal) -> Option<KernelError> {
    match r.errno {
        libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT | libc::EINVAL => {
            Some(KernelError::Other(format!(
                "the kernel has no nf_tables for family {family} (modules nf_tables, nfnetlink): {}",
                r.text()
            )))
        }
        _ => None,
    }
}

/// Adopts the table of the skeleton's family when it matches `skeleton`,
/// else (re)creates it empty.
fn ensure(socket: &mut NftSocket, skeleton: &Skeleton) -> Result<Vec<NftElement>, KernelError> {
    let family = skeleton.family;
    let existing = match socket.get(
        NfTablesMessage::GetTable(table_by_name()),
        proto_family(family),
    ) {
        Ok(NfTablesMessage::NewTable(table)) => Some(table),
        Ok(_) => None,
        Err(r) if r.errno == libc::ENOENT => None,
        Err(r) => {
            return Err(missing_nf_tables(family, &r).unwrap_or_else(|| {
                KernelError::Other(format!(
                    "looking up table {family} {NFT_TABLE}: {}",
                    r.text()
                ))
            }))
        }
    };
    if let Some(table) = &existing {
        if matches(socket, table, skeleton)? {
            tracing::debug!(%family, "adopting the existing nftables table");
            return dump_all(socket, family);
        }
        tracing::info!(%family, "the nftables table was made for another ruleset: recreating it");
    }
    let mut requests: Vec<(Request, Subject)> = Vec::new();
    if existing.is_some() {
        requests.push((
            Request {
                family,
                message: NfTablesMessage::DeleteTable(table_by_name()),
                flags: 0,
            },
            Subject::Table,
        ));
    }
    requests.extend(skeleton.requests());
    let (batch, subjects): (Vec<Request>, Vec<Subject>) = requests.into_iter().unzip();
    match socket.transact(&batch) {
        Ok(()) => Ok(Vec::new()),
        Err(BatchError::Whole(r)) => Err(missing_nf_tables(family, &r).unwrap_or_else(|| {
            KernelError::Other(format!("creating table {family} {NFT_TABLE}: {}", r.text()))
        })),
        Err(BatchError::Message(index, r)) => Err(skeleton_error(family, subjects.get(index), &r)),
    }
}

/// One clear error for a refused skeleton message: what is missing when the
/// kernel lacks a module, else what was being created.
fn skeleton_error(family: NftFamily, subject: Option<&Subject>, r: &Refusal) -> KernelError {
    let missing = matches!(r.errno, libc::ENOENT | libc::EOPNOTSUPP);
    let text = match subject {
        Some(Subject::Rule {
            chain,
            text,
            needs: Some((name, module)),
        }) if missing => format!(
            "the kernel's nf_tables has no `{name}` expression (module {module}): \
             adding `{text}` to chain {chain}: {}",
            r.text()
        ),
        Some(Subject::Chain {
            name,
            kind: Some(kind),
        }) if missing => format!(
            "the kernel's nf_tables has no `{kind}` chain type (module nft_chain_{kind}): \
             creating chain {name}: {}",
            r.text()
        ),
        Some(Subject::Set(set)) if missing => format!(
            "the kernel's nf_tables has no set backend for set {} (type {}{}): {}",
            set.name(),
            element::Shape::of(*set).nft_type(family),
            if element::Shape::of(*set).is_interval() {
                ", flags interval; pipapo needs kernel 5.6"
            } else {
                ""
            },
            r.text()
        ),
        Some(Subject::Table) => {
            return missing_nf_tables(family, r).unwrap_or_else(|| {
                KernelError::Other(format!("creating table {family} {NFT_TABLE}: {}", r.text()))
            })
        }
        Some(Subject::Rule { chain, text, .. }) => {
            format!(
                "creating table {family} {NFT_TABLE}: adding `{text}` to chain {chain}: {}",
                r.text()
            )
        }
        Some(Subject::Chain { name, .. }) => {
            format!(
                "creating table {family} {NFT_TABLE}: chain {name}: {}",
                r.text()
            )
        }
        Some(Subject::Set(set)) => {
            format!(
                "creating table {family} {NFT_TABLE}: set {}: {}",
                set.name(),
                r.text()
            )
        }
        None => format!("creating table {family} {NFT_TABLE}: {}", r.text()),
    };
    KernelError::Other(text)
}

/// Whether `table` is ours for this skeleton: same fingerprint, every chain
/// with its rule count, every set present.
fn matches(
    socket: &mut NftSocket,
    table: &TableMessage,
    skeleton: &Skeleton,
) -> Result<bool, KernelError> {
    let fingerprint = table.attributes.iter().find_map(|a| match a {
        TableAttribute::UserData(data) => ruleset::fingerprint_of(data),
        _ => None,
    });
    if fingerprint != Some(skeleton.fingerprint()) {
        return Ok(false);
    }
    let dump_error = |what: &str, r: Refusal| {
        KernelError::Other(format!(
            "listing {what} of table {} {NFT_TABLE}: {}",
            skeleton.family,
            r.text()
        ))
    };
    // Each answer is checked for our table's name: the kernel (6.1 at least)
    // ignores the table in a chain dump request and answers with every chain
    // of the family, such as iptables-nft's `nat` and `filter` chains, which
    // most nodes have (kubelet's canaries alone). Rules and sets are checked
    // the same way rather than trusting the kernel's filter.
    let chains: Vec<String> = socket
        .dump(
            NfTablesMessage::GetChain(ChainMessage {
                attributes: vec![ChainAttribute::Table(NFT_TABLE.to_owned())],
            }),
            proto_family(skeleton.family),
        )
        .map_err(|r| dump_error("chains", r))?
        .into_iter()
        .filter_map(|m| match m {
            NfTablesMessage::NewChain(c) => {
                let ours = c
                    .attributes
                    .iter()
                    .any(|a| matches!(a, ChainAttribute::Table(t) if t == NFT_TABLE));
                ours.then_some(())?;
                attribute(&c.attributes, |a| match a {
                    ChainAttribute::Name(n) => Some(n.clone()),
                    _ => None,
                })
            }
            _ => None,
        })
        .collect();
    let rules: Vec<String> = socket
        .dump(
            NfTablesMessage::GetRule(RuleMessage {
                attributes: vec![RuleAttribute::Table(NFT_TABLE.to_owned())],
            }),
            proto_family(skeleton.family),
        )
        .map_err(|r| dump_error("rules", r))?
        .into_iter()
        .filter_map(|m| match m {
            NfTablesMessage::NewRule(r) => {
                let ours = r
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RuleAttribute::Table(t) if t == NFT_TABLE));
                ours.then_some(())?;
                attribute(&r.attributes, |a| match a {
                    RuleAttribute::Chain(n) => Some(n.clone()),
                    _ => None,
                })
            }
            _ => None,
        })
        .collect();
    let sets: Vec<String> = socket
        .dump(
            NfTablesMessage::GetSet(SetMessage {
                attributes: vec![SetAttribute::Table(NFT_TABLE.to_owned())],
            }),
            proto_family(skeleton.family),
        )
        .map_err(|r| dump_error("sets", r))?
        .into_iter()
        .filter_map(|m| match m {
            NfTablesMessage::NewSet(s) => {
                let ours = s
                    .attributes
                    .iter()
                    .any(|a| matches!(a, SetAttribute::Table(t) if t == NFT_TABLE));
                ours.then_some(())?;
                attribute(&s.attributes, |a| match a {
                    SetAttribute::Name(n) => Some(n.clone()),
                    _ => None,
                })
            }
            _ => None,
        })
        .collect();
    let counts = skeleton.rule_counts();
    let chains_match = chains.len() == counts.len()
        && counts.iter().all(|(name, count)| {
            chains.iter().any(|c| c == name) && rules.iter().filter(|r| r == name).count() == *count
        });
    let sets_match = NftSet::ALL
        .iter()
        .all(|set| sets.iter().any(|s| s == set.name()));
    Ok(chains_match && sets_match)
}

fn attribute<A, T>(attributes: &[A], pick: impl Fn(&A) -> Option<T>) -> Option<T> {
    attributes.iter().find_map(pick)
}

/// Every element of every set of the table of `family`.
fn dump_all(socket: &mut NftSocket, family: NftFamily) -> Result<Vec<NftElement>, KernelError> {
    let mut out = Vec::new();
    for set in NftSet::ALL {
        let request = NfTablesMessage::GetSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table(NFT_TABLE.to_owned()),
                SetElementList::Set(set.name().to_owned()),
            ],
        });
        let messages = socket
            .dump_raw(request, proto_family(family))
            .map_err(|r| match r.errno {
                libc::ENOENT => KernelError::Other(format!(
                    "set {} of table {family} {NFT_TABLE} does not exist (ensure_ruleset creates it)",
                    set.name()
                )),
                _ => KernelError::Other(format!(
                    "listing set {} of table {family} {NFT_TABLE}: {}",
                    set.name(),
                    r.text()
                )),
            })?;
        out.extend(element::decode(family, set, &messages)?);
    }
    Ok(out)
}

/// An element transaction: its messages, and which element each element
/// attribute of each message stands for, to name the one the kernel refuses.
#[derive(Debug)]
struct ElementBatch {
    requests: Vec<Request>,
    /// Per message: its op, table, set, and the change of each
    /// NFTA_LIST_ELEM in order.
    contents: Vec<(Op, NftFamily, NftSet, Vec<NftElement>)>,
}

impl ElementBatch {
    /// Deletes first (an interval freed may be re-added as a wider one),
    /// then adds, each grouped per table, then per set in [`NftSet::ALL`]
    /// order.
    fn new(changes: &[NftChange]) -> Result<Self, KernelError> {
        let mut batch = ElementBatch {
            requests: Vec::new(),
            contents: Vec::new(),
        };
        for op in [Op::Delete, Op::Add] {
            for family in NftFamily::ALL {
                for set in NftSet::ALL {
                    let elements = changes.iter().filter_map(|c| match (op, c) {
                        (Op::Delete, NftChange::Delete(e)) | (Op::Add, NftChange::Add(e))
                            if e.set == set && e.family() == family =>
                        {
                            Some(e)
                        }
                        _ => None,
                    });
                    batch.push_set(op, family, set, elements)?;
                }
            }
        }
        Ok(batch)
    }

    fn push_set<'a>(
        &mut self,
        op: Op,
        family: NftFamily,
        set: NftSet,
        elements: impl Iterator<Item = &'a NftElement>,
    ) -> Result<(), KernelError> {
        let mut attrs = Vec::new();
        let mut owners = Vec::new();
        let mut bytes = 0;
        for e in elements {
            let encoded = element::encode(e)?;
            let element_attrs = element::element_attributes(&encoded);
            let size: usize = element_attrs
                .iter()
                .map(netlink_packet_core::Emitable::buffer_len)
                .sum();
            if bytes + size > ELEMENTS_PER_MESSAGE_BYTES && !attrs.is_empty() {
                self.flush(op, family, set, &mut attrs, &mut owners);
                bytes = 0;
            }
            bytes += size;
            owners.extend(std::iter::repeat_n(*e, element_attrs.len()));
            attrs.extend(element_attrs);
        }
        if !attrs.is_empty() {
            self.flush(op, family, set, &mut attrs, &mut owners);
        }
        Ok(())
    }

    fn flush(
        &mut self,
        op: Op,
        family: NftFamily,
        set: NftSet,
        attrs: &mut Vec<
            netlink_packet_netfilter::nftables::ListAttribute<
                netlink_packet_netfilter::nftables::SetElementAttribute,
            >,
        >,
        owners: &mut Vec<NftElement>,
    ) {
        self.requests
            .push(element::message(op, family, set, std::mem::take(attrs)));
        self.contents
            .push((op, family, set, std::mem::take(owners)));
    }

    /// The refusal as `set SET: add KEY: REASON` (`set ip6 SET` in the
    /// `ip6` table), naming the element the kernel pointed at (extended ACK
    /// offset), else the message's first.
    fn error(&self, e: BatchError) -> KernelError {
        let (index, r) = match e {
            BatchError::Whole(r) => {
                return missing_nf_tables(NftFamily::Ip, &r).unwrap_or_else(|| {
                    KernelError::Other(format!("changing set elements: {}", r.text()))
                })
            }
            BatchError::Message(index, r) => (index, r),
        };
        let (Some(request), Some((op, family, set, owners))) =
            (self.requests.get(index), self.contents.get(index))
        else {
            return KernelError::Other(format!("changing set elements: {}", r.text()));
        };
        // The ip table's sets keep their bare names, as before there were two.
        let set = match family {
            NftFamily::Ip => set.name().to_owned(),
            NftFamily::Ip6 => format!("{family} {}", set.name()),
        };
        let verb = match op {
            Op::Add => "add",
            Op::Delete => "delete",
        };
        let pointed = r
            .offset
            .and_then(|offset| element_at(request, offset as usize))
            .and_then(|i| owners.get(i));
        // An interval element takes two list entries (start and end): count
        // elements, not entries.
        let mut elements = owners.clone();
        elements.dedup();
        let text = match (pointed, elements.first()) {
            (Some(e), _) => format!("set {}: {verb} {}: {}", set, element::describe(e), r.text()),
            (None, Some(e)) if elements.len() == 1 => {
                format!("set {}: {verb} {}: {}", set, element::describe(e), r.text())
            }
            (None, Some(e)) => format!(
                "set {}: {verb} {} or one of the {} other elements sent with it: {}",
                set,
                element::describe(e),
                elements.len() - 1,
                r.text()
            ),
            (None, None) => format!("set {}: {verb}: {}", set, r.text()),
        };
        KernelError::Other(text)
    }
}

/// Which NFTA_LIST_ELEM of `request`'s element list holds byte `offset` of
/// the netlink message (header included), as an extended ACK points at it.
fn element_at(request: &Request, offset: usize) -> Option<usize> {
    use netlink_packet_core::Emitable;
    let (NfTablesMessage::NewSetElement(message) | NfTablesMessage::DeleteSetElement(message)) =
        &request.message
    else {
        return None;
    };
    // nlmsghdr (16) + nfgenmsg (4), then the attributes in order.
    let mut at = 20;
    for attr in &message.attributes {
        if let SetElementList::Elements(elements) = attr {
            let mut start = at + 4;
            for (i, element) in elements.iter().enumerate() {
                let end = start + element.buffer_len();
                if (start..end).contains(&offset) {
                    return Some(i);
                }
                start = end;
            }
            return None;
        }
        at += attr.buffer_len();
    }
    None
}
