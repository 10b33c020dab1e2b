//! The nftables half of reconciliation: the elements every service wants in
//! the proxy's sets, counted across services, against a mirror of what the
//! kernel's sets hold. A sync sends the difference as one transaction.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::desired::{NftChange, NftElement, NftKey, NftSet};

/// Wanted elements, the mirror, and what changed since the last sync.
#[derive(Debug)]
pub(super) struct NftState {
    /// Element → how many services (or the node's own settings) want it.
    wanted: HashMap<NftElement, u32>,
    /// What the kernel's sets hold, as far as the proxy has confirmed.
    held: HashSet<NftElement>,
    /// Elements whose wanted count changed since the last sync.
    dirty: HashSet<NftElement>,
    /// Whether `held` mirrors the kernel. Until a full sync has read the
    /// sets, and after a failed transaction, it does not.
    pub(super) adopted: bool,
    /// The elements that belong to no service (the local pod CIDRs).
    node_elements: Vec<NftElement>,
}

impl Default for NftState {
    fn default() -> Self {
        NftState {
            wanted: HashMap::new(),
            held: HashSet::new(),
            dirty: HashSet::new(),
            adopted: false,
            node_elements: Vec::new(),
        }
    }
}

impl NftState {
    /// Moves one owner's wants from `old` to `new`. O(size of both).
    pub(super) fn replace(&mut self, old: &[NftElement], new: &[NftElement]) {
        let old_set: HashSet<&NftElement> = old.iter().collect();
        let new_set: HashSet<&NftElement> = new.iter().collect();
        for element in old_set.difference(&new_set) {
            if let Some(count) = self.wanted.get_mut(*element) {
                *count -= 1;
                if *count == 0 {
                    self.wanted.remove(*element);
                }
            }
            self.dirty.insert(**element);
        }
        for element in new_set.difference(&old_set) {
            *self.wanted.entry(**element).or_default() += 1;
            self.dirty.insert(**element);
        }
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

    /// Takes in a dump of the kernel's sets as the new mirror.
    pub(super) fn adopt(&mut self, held: Vec<NftElement>) {
        self.held = held.into_iter().collect();
        self.adopted = true;
    }

    /// What to send: every difference after a dump (`all`), else the dirty
    /// elements only. Deletions go first, sorted, then additions.
    pub(super) fn changes(&mut self, all: bool) -> Vec<NftChange> {
        let mut deletes = Vec::new();
        let mut adds = Vec::new();
        let mut consider = |element: &NftElement, held: &HashSet<NftElement>| match (
            self.wanted.contains_key(element),
            held.contains(element),
        ) {
            (true, false) => adds.push(*element),
            (false, true) => deletes.push(*element),
            _ => {}
        };
        if all {
            for element in self.wanted.keys().chain(self.held.iter()) {
                consider(element, &self.held);
            }
            adds.sort_unstable();
            adds.dedup();
            deletes.sort_unstable();
            deletes.dedup();
            self.dirty.clear();
        } else {
            for element in self.dirty.drain() {
                consider(&element, &self.held);
            }
            adds.sort_unstable();
            deletes.sort_unstable();
        }
        deletes
            .into_iter()
            .map(NftChange::Delete)
            .chain(adds.into_iter().map(NftChange::Add))
            .collect()
    }

    /// Records a transaction the kernel accepted.
    pub(super) fn applied(&mut self, changes: &[NftChange]) {
        for change in changes {
            match change {
                NftChange::Add(e) => {
                    self.held.insert(*e);
                }
                NftChange::Delete(e) => {
                    self.held.remove(e);
                }
            }
        }
    }

    /// A transaction failed as a whole: nothing changed in the kernel, but
    /// the mirror can no longer be trusted to say why; the next sync reads
    /// the sets again and sends every difference.
    pub(super) fn failed(&mut self, changes: &[NftChange]) {
        self.adopted = false;
        for change in changes {
            let (NftChange::Add(e) | NftChange::Delete(e)) = change;
            self.dirty.insert(*e);
        }
    }
}

/// The local pod CIDRs as elements of [`NftSet::LocalPodCidrs`] (IPv4 only:
/// the table is of family `ip`).
pub fn pod_cidr_elements(cidrs: &[ipnet::IpNet]) -> Vec<NftElement> {
    // An interval set refuses overlapping elements: merge them first.
    let v4: Vec<ipnet::Ipv4Net> = cidrs
        .iter()
        .filter_map(|net| match net {
            ipnet::IpNet::V4(v4) => Some(*v4),
            ipnet::IpNet::V6(_) => None,
        })
        .collect();
    ipnet::Ipv4Net::aggregate(&v4)
        .into_iter()
        .map(|net| NftElement {
            set: NftSet::LocalPodCidrs,
            key: NftKey::Cidr(net.into()),
        })
        .collect()
}
