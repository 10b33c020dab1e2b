//! The nftables half of reconciliation: the elements every service wants in
//! the proxy's sets, counted across services, against a mirror of what the
//! kernel's sets hold. A sync sends the difference as one transaction,
//! or, when it is large, as a few that the IPVS writes follow in key order
//! (see [`split`]).

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::desired::{NftChange, NftElement, NftKey, NftRuleset, NftSet, VirtualServerKey};

/// Above this many element additions, a sync's changes go in more than one
/// transaction (see `split`); at or below it, in one.
pub const SPLIT_ABOVE: usize = 1024;
/// The IPVS operations the services of the first of several transactions
/// are worth; each next transaction covers twice as many, up to
/// [`MAX_BATCH_OPS`]. The size of the first chunk of IPVS writes, which
/// waits for this transaction alone.
const FIRST_BATCH_OPS: usize = super::FIRST_CHUNK;
const MAX_BATCH_OPS: usize = 32768;

/// One nftables transaction of a sync, and which IPVS writes wait for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftBatch {
    /// The smallest virtual server key whose writes wait for this
    /// transaction; the writes of every key after it wait too. `None`: every
    /// write waits for it.
    pub from: Option<VirtualServerKey>,
    pub changes: Vec<NftChange>,
}

/// How many of `batches`, in order, must be answered before IPVS writes to
/// the virtual servers up to `last` (in key order) may go.
pub fn batches_before(batches: &[Option<VirtualServerKey>], last: VirtualServerKey) -> usize {
    batches
        .iter()
        .take_while(|from| from.is_none_or(|from| from <= last))
        .count()
}

/// Splits one sync's `changes` into transactions that the sync's IPVS
/// writes can follow one by one, so that the kernel takes the next
/// transaction while it takes the writes of the services in the last: a
/// cold sync at 10,000 services no longer waits for 20,000 elements before
/// its first IPVS write.
///
/// `owners` are the services whose elements the additions may be, in the
/// order of their smallest virtual server key, each with that key, the IPVS
/// operations it is worth and its elements. An added element goes in the
/// transaction of the first owner that wants it; the IPVS writes to a key
/// wait for every transaction that begins at or before it (see
/// [`batches_before`]). Every owner's keys are at or after its smallest
/// key, so each write waits for its own service's elements, whichever
/// service wants them first. Deletions, and additions no owner claims (the
/// node's own elements, a service without virtual servers), go in the first
/// transaction, which every write waits for. Transactions grow from
/// [`FIRST_BATCH_OPS`] worth of operations by doubling, so that the first
/// IPVS write comes early and a large sync sends a few transactions, not
/// hundreds.
pub(super) fn split<'a>(
    changes: Vec<NftChange>,
    owners: impl IntoIterator<Item = (VirtualServerKey, usize, &'a [NftElement])>,
) -> Vec<NftBatch> {
    let mut first = Vec::new();
    let mut adds = HashSet::with_capacity(changes.len());
    for change in changes {
        match change {
            NftChange::Add(element) => {
                adds.insert(element);
            }
            NftChange::Delete(_) => first.push(change),
        }
    }
    let mut batches = vec![NftBatch {
        from: None,
        changes: Vec::new(),
    }];
    let mut budget = FIRST_BATCH_OPS;
    let mut worth = 0;
    for (key, ops, elements) in owners {
        if adds.is_empty() {
            break;
        }
        if worth >= budget {
            batches.push(NftBatch {
                from: Some(key),
                changes: Vec::new(),
            });
            worth = 0;
            budget = (budget * 2).min(MAX_BATCH_OPS);
        }
        worth += ops.max(1);
        let batch = batches.last_mut().expect("one batch at least");
        for element in elements {
            if adds.remove(element) {
                batch.changes.push(NftChange::Add(*element));
            }
        }
    }
    // The kernel layer groups a transaction's changes by set itself, so
    // they are left in an order that costs no sort of the whole sync's
    // elements: deletions (as given), then the owners' additions in the
    // owners' order, then the additions no owner claimed, sorted.
    let mut unclaimed: Vec<NftElement> = adds.into_iter().collect();
    unclaimed.sort_unstable();
    first.append(&mut batches[0].changes);
    first.extend(unclaimed.into_iter().map(NftChange::Add));
    batches[0].changes = first;
    batches.retain(|batch| !batch.changes.is_empty());
    batches
}

/// What the proxy knows of one element: who wants it, and whether the
/// kernel holds it. One map for both halves keeps a cold sync's 20,000
/// elements in memory once.
#[derive(Clone, Copy, Debug, Default)]
struct Element {
    /// How many services (or the node's own settings) want it.
    wanted: u32,
    /// Whether the kernel's set holds it, as far as the proxy has confirmed.
    held: bool,
}

/// Wanted and held elements, and what changed since the last sync.
#[derive(Debug)]
pub(super) struct NftState {
    /// Every element wanted or held; neither is dropped.
    elements: HashMap<NftElement, Element>,
    /// Elements whose wanted count changed since the last sync.
    dirty: HashSet<NftElement>,
    /// Whether `held` mirrors the kernel. Until a full sync has read the
    /// sets, and after a failed transaction, it does not.
    pub(super) adopted: bool,
    /// The elements that belong to no service (the local pod CIDRs).
    node_elements: Vec<NftElement>,
    /// When `held` was read from the kernel, and what has happened since
    /// (see [`NftState::unchanged_since_read`]); `None` until a read, and
    /// after a failed transaction.
    read: Option<SetsRead>,
}

/// The last read of the sets.
#[derive(Debug)]
struct SetsRead {
    /// The ruleset the table was made or adopted for.
    ruleset: NftRuleset,
    /// The kernel's generation the proxy's own transactions have brought
    /// it to since the read: the generation read just before it, moved on
    /// by one for each transaction the proxy committed.
    generation: u32,
    /// Full syncs that took the mirror as it was since the read.
    full_syncs_since: u64,
}

impl Default for NftState {
    fn default() -> Self {
        NftState {
            elements: HashMap::new(),
            dirty: HashSet::default(),
            adopted: false,
            node_elements: Vec::new(),
            read: None,
        }
    }
}

/// The generation after one more commit: the kernel skips zero.
fn after_commit(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 1,
        next => next,
    }
}

impl NftState {
    /// Moves one owner's wants from `old` to `new`, both sorted (as
    /// translate leaves them). O(size of both).
    pub(super) fn replace(&mut self, old: &[NftElement], new: &[NftElement]) {
        debug_assert!(
            old.is_sorted() && new.is_sorted(),
            "elements must be sorted"
        );
        let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
        loop {
            match (old.peek(), new.peek()) {
                (Some(o), Some(n)) if o == n => {
                    old.next();
                    new.next();
                }
                (Some(o), Some(n)) if o < n => {
                    self.unwant(**o);
                    old.next();
                }
                (Some(o), None) => {
                    self.unwant(**o);
                    old.next();
                }
                (_, Some(n)) => {
                    self.want(**n);
                    new.next();
                }
                (None, None) => break,
            }
        }
    }

    fn want(&mut self, element: NftElement) {
        self.elements.entry(element).or_default().wanted += 1;
        self.dirty.insert(element);
    }

    fn unwant(&mut self, element: NftElement) {
        if let Some(entry) = self.elements.get_mut(&element) {
            entry.wanted = entry.wanted.saturating_sub(1);
            if entry.wanted == 0 && !entry.held {
                self.elements.remove(&element);
            }
        }
        self.dirty.insert(element);
    }

    /// Sets the elements that belong to the node rather than a service.
    pub(super) fn set_node_elements(&mut self, elements: Vec<NftElement>) {
        let old = std::mem::take(&mut self.node_elements);
        self.replace(&old, &elements);
        self.node_elements = elements;
    }

    pub(super) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Takes in a dump of the kernel's sets as what it holds, for the table
    /// of `ruleset`; `generation` is the kernel's, read just before the dump
    /// (`None`: unknown).
    pub(super) fn adopt(
        &mut self,
        held: Vec<NftElement>,
        ruleset: &NftRuleset,
        generation: Option<u32>,
    ) {
        self.elements.retain(|_, entry| {
            entry.held = false;
            entry.wanted > 0
        });
        for element in held {
            self.elements.entry(element).or_default().held = true;
        }
        self.adopted = true;
        self.read = generation.map(|generation| SetsRead {
            ruleset: ruleset.clone(),
            generation,
            full_syncs_since: 0,
        });
    }

    /// Whether a full sync may take the mirror as it is, without reading
    /// the sets: the kernel's `generation` is where the proxy's own
    /// transactions left it since the last read (nobody else committed
    /// anything, so no table of this namespace changed), the table is for
    /// `ruleset`, and fewer than `rounds` - 1 full syncs took the mirror so
    /// since that read. So the sets are read at least every `rounds` full
    /// syncs whatever the generation says, as the real servers are (see
    /// `Reconciler::set_verify_rounds`). Counts the full sync when it
    /// answers `true`.
    pub(super) fn unchanged_since_read(
        &mut self,
        generation: Option<u32>,
        ruleset: &NftRuleset,
        rounds: u64,
    ) -> bool {
        let Some(read) = self.read.as_mut().filter(|_| self.adopted) else {
            return false;
        };
        let unchanged = generation == Some(read.generation)
            && read.ruleset == *ruleset
            && read.full_syncs_since + 1 < rounds;
        if unchanged {
            read.full_syncs_since += 1;
        }
        unchanged
    }

    /// What to send: every difference after a dump (`all`), else the dirty
    /// elements only. Deletions go first, sorted, then additions, sorted
    /// too unless there are more than [`SPLIT_ABOVE`]: those go to
    /// [`split`], which puts them in the order of their services and sorts
    /// only the ones no service claims. This runs between two syncs of a
    /// streamed cold sync, while the kernel waits; on the host, 100,000
    /// additions took about 15 ms unsorted and 23 ms sorted.
    pub(super) fn changes(&mut self, all: bool) -> Vec<NftChange> {
        let mut deletes = Vec::new();
        let mut adds = Vec::new();
        let mut consider = |element: &NftElement, entry: &Element| match entry {
            Element {
                wanted: 1..,
                held: false,
            } => adds.push(*element),
            Element {
                wanted: 0,
                held: true,
            } => deletes.push(*element),
            _ => {}
        };
        // Taken, not drained: a cold sync's set would keep its capacity.
        let dirty = std::mem::take(&mut self.dirty);
        if all {
            for (element, entry) in &self.elements {
                consider(element, entry);
            }
        } else {
            for element in &dirty {
                if let Some(entry) = self.elements.get(element) {
                    consider(element, entry);
                }
            }
        }
        if adds.len() <= SPLIT_ABOVE {
            adds.sort_unstable();
        }
        deletes.sort_unstable();
        deletes
            .into_iter()
            .map(NftChange::Delete)
            .chain(adds.into_iter().map(NftChange::Add))
            .collect()
    }

    /// Records a transaction the kernel accepted. It counts as one commit;
    /// if it changed nothing (every add already held), the kernel committed
    /// nothing, the generation falls short of the count, and the next full
    /// sync reads the sets.
    pub(super) fn applied(&mut self, changes: &[NftChange]) {
        if let Some(read) = &mut self.read {
            if !changes.is_empty() {
                read.generation = after_commit(read.generation);
            }
        }
        for change in changes {
            match change {
                NftChange::Add(e) => self.elements.entry(*e).or_default().held = true,
                NftChange::Delete(e) => {
                    if let Some(entry) = self.elements.get_mut(e) {
                        entry.held = false;
                        if entry.wanted == 0 {
                            self.elements.remove(e);
                        }
                    }
                }
            }
        }
    }

    /// A transaction failed as a whole: nothing changed in the kernel, but
    /// the mirror can no longer be trusted to say why; the next sync reads
    /// the sets again and sends every difference.
    pub(super) fn failed(&mut self, changes: &[NftChange]) {
        self.adopted = false;
        self.read = None;
        for change in changes {
            let (NftChange::Add(e) | NftChange::Delete(e)) = change;
            self.dirty.insert(*e);
        }
    }
}

/// The local pod CIDRs as elements of [`NftSet::LocalPodCidrs`], each in
/// the table of its family (IPv4 in `ip`, IPv6 in `ip6`).
pub fn pod_cidr_elements(cidrs: &[ipnet::IpNet]) -> Vec<NftElement> {
    // An interval set refuses overlapping elements: merge them first.
    let v4: Vec<ipnet::Ipv4Net> = cidrs
        .iter()
        .filter_map(|net| match net {
            ipnet::IpNet::V4(v4) => Some(*v4),
            ipnet::IpNet::V6(_) => None,
        })
        .collect();
    let v6: Vec<ipnet::Ipv6Net> = cidrs
        .iter()
        .filter_map(|net| match net {
            ipnet::IpNet::V6(v6) => Some(*v6),
            ipnet::IpNet::V4(_) => None,
        })
        .collect();
    let merged = ipnet::Ipv4Net::aggregate(&v4)
        .into_iter()
        .map(ipnet::IpNet::from)
        .chain(
            ipnet::Ipv6Net::aggregate(&v6)
                .into_iter()
                .map(ipnet::IpNet::from),
        );
    merged
        .map(|net| NftElement {
            set: NftSet::LocalPodCidrs,
            key: NftKey::Cidr(net),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{NftFamily, Protocol};

    fn key(i: u32) -> VirtualServerKey {
        VirtualServerKey {
            addr: std::net::Ipv4Addr::from(0x0a60_0000 + i).into(),
            protocol: Protocol::Tcp,
            port: 80,
        }
    }

    fn element(i: u32) -> NftElement {
        let key = key(i);
        NftElement {
            set: NftSet::ClusterIps,
            key: NftKey::AddrProtoPort(key.addr, key.protocol, key.port),
        }
    }

    #[test]
    fn a_split_sends_each_element_before_the_first_write_that_needs_it() {
        // 1,000 services worth 125 operations each, in key order; each
        // wants its own element, and service 600 wants service 900's too.
        let mut wants: Vec<Vec<NftElement>> = (0..1000).map(|i| vec![element(i)]).collect();
        wants[600].push(element(900));
        wants[600].sort_unstable();
        let owners = (0..1000).map(|i| (key(i), 125, &wants[i as usize][..]));
        let node = NftElement {
            set: NftSet::LocalPodCidrs,
            key: NftKey::Cidr("10.244.0.0/16".parse().unwrap()),
        };
        let stale = element(5000);
        let mut changes: Vec<NftChange> = (0..1000).map(|i| NftChange::Add(element(i))).collect();
        changes.push(NftChange::Add(node));
        changes.push(NftChange::Delete(stale));

        let batches = split(changes, owners);
        let starts: Vec<Option<VirtualServerKey>> = batches.iter().map(|b| b.from).collect();
        // Worth 256, 512, ... operations up to 32,768: 3 services, then 5,
        // 9, 17, 33, 66, 132, then 263 at most, up to the 1,000th.
        assert_eq!(FIRST_BATCH_OPS, 256);
        assert_eq!(MAX_BATCH_OPS, 32_768);
        let expected = [0, 3, 8, 17, 34, 67, 133, 265, 528, 791];
        let expected: Vec<_> = expected.iter().map(|&i| (i > 0).then(|| key(i))).collect();
        assert_eq!(starts, expected);
        assert_eq!(
            batches[0].changes,
            [
                NftChange::Delete(stale),
                NftChange::Add(element(0)),
                NftChange::Add(element(1)),
                NftChange::Add(element(2)),
                NftChange::Add(node),
            ],
            "deletions first, then additions, the unclaimed in the first"
        );
        let sent: usize = batches.iter().map(|b| b.changes.len()).sum();
        assert_eq!(sent, 1002, "each change once");
        for (i, wanted) in wants.iter().enumerate() {
            let before = batches_before(&starts, key(i as u32));
            for element in wanted {
                let change = NftChange::Add(*element);
                assert!(
                    batches[..before]
                        .iter()
                        .any(|b| b.changes.contains(&change)),
                    "service {i}'s {element:?} is sent before its writes"
                );
            }
        }
        // Service 900's element went with service 600, the first to want it.
        let with_600 = batches_before(&starts, key(600)) - 1;
        assert!(batches[with_600]
            .changes
            .contains(&NftChange::Add(element(900))));
    }

    #[test]
    fn a_split_is_the_same_whatever_the_order_of_the_additions() {
        // `NftState::changes` leaves a large sync's additions unsorted.
        let wants: Vec<Vec<NftElement>> = (0..2000).map(|i| vec![element(i)]).collect();
        let owners = || (0..2000).map(|i| (key(i), 3, &wants[i as usize][..]));
        let unclaimed = |i: u32| NftElement {
            set: NftSet::ServiceIps,
            key: NftKey::Addr(std::net::Ipv4Addr::from(0x0a61_0000 + i).into()),
        };
        let mut sorted: Vec<NftChange> = (0..2000).map(|i| NftChange::Add(element(i))).collect();
        sorted.extend((0..3).map(|i| NftChange::Add(unclaimed(i))));
        let mut reversed = sorted.clone();
        reversed.reverse();

        let batches = split(sorted, owners());
        assert!(batches.len() > 2, "split: {} transactions", batches.len());
        assert_eq!(split(reversed, owners()), batches);
        let first = &batches[0].changes;
        let tail: Vec<NftChange> = (0..3).map(|i| NftChange::Add(unclaimed(i))).collect();
        assert_eq!(first[first.len() - 3..], tail, "the unclaimed, sorted");
    }

    #[test]
    fn a_split_drops_empty_transactions() {
        // Worth 256 then 512 then 1,024 operations: services 0 and 1, then
        // 2 to 5, then 6 to 9. Nothing is added for the first two, so their
        // writes wait for nothing.
        let wants: Vec<Vec<NftElement>> = (0..10).map(|i| vec![element(i)]).collect();
        let owners = (0..10).map(|i| (key(i), 128, &wants[i as usize][..]));
        let changes = (5..10).map(|i| NftChange::Add(element(i))).collect();
        let batches = split(changes, owners);
        let starts: Vec<Option<VirtualServerKey>> = batches.iter().map(|b| b.from).collect();
        assert_eq!(starts, [Some(key(2)), Some(key(6))]);
        assert_eq!(batches_before(&starts, key(1)), 0);
        assert_eq!(batches_before(&starts, key(5)), 1);
        assert_eq!(batches_before(&starts, key(9)), 2);
        assert_eq!(batches[0].changes, [NftChange::Add(element(5))]);
        let rest: Vec<NftChange> = (6..10).map(|i| NftChange::Add(element(i))).collect();
        assert_eq!(batches[1].changes, rest);
    }

    #[test]
    fn pod_cidrs_of_each_family_go_to_its_table_merged() {
        let cidrs: Vec<ipnet::IpNet> = [
            "10.244.0.0/17",
            "fd00:10:244::/57",
            "10.244.128.0/17",
            "fd00:10:244:80::/57",
            "fd00:99::/64",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let got: Vec<(NftFamily, String)> = pod_cidr_elements(&cidrs)
            .iter()
            .map(|e| (e.family(), e.key.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                (NftFamily::Ip, "10.244.0.0/16".to_owned()),
                (NftFamily::Ip6, "fd00:10:244::/56".to_owned()),
                (NftFamily::Ip6, "fd00:99::/64".to_owned()),
            ]
        );
    }
}
