//! The nftables half of reconciliation: the elements every service wants in
//! the proxy's sets, counted across services, against a mirror of what the
//! kernel's sets hold. A sync sends the difference as one transaction.

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::desired::{NftChange, NftElement, NftKey, NftSet};

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
}

impl Default for NftState {
    fn default() -> Self {
        NftState {
            elements: HashMap::new(),
            dirty: HashSet::default(),
            adopted: false,
            node_elements: Vec::new(),
        }
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

    /// Takes in a dump of the kernel's sets as what it holds.
    pub(super) fn adopt(&mut self, held: Vec<NftElement>) {
        self.elements.retain(|_, entry| {
            entry.held = false;
            entry.wanted > 0
        });
        for element in held {
            self.elements.entry(element).or_default().held = true;
        }
        self.adopted = true;
    }

    /// What to send: every difference after a dump (`all`), else the dirty
    /// elements only. Deletions go first, sorted, then additions.
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
        adds.sort_unstable();
        deletes.sort_unstable();
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
    use crate::desired::NftFamily;

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
