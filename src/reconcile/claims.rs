//! Which service owns each virtual server key, and which keys services have
//! let go of but may still be in the kernel.

use foldhash::{HashMap, HashSet};

use crate::desired::{ClaimRank, ServiceName, VirtualServerKey};

/// Services claiming each key, best [`ClaimRank`] first. The first owns the
/// key; the others wait, and the next in rank takes over when it lets go.
/// Who owns a key depends only on who claims it, never on the order of the
/// claims, so a restart keeps the owner the running proxy had.
#[derive(Clone, Debug, Default)]
pub(crate) struct Claims {
    by_key: HashMap<VirtualServerKey, Vec<ClaimRank>>,
}

/// The outcome of a claim.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claimed<'a> {
    Owner,
    /// Outranks this service, which owned the key until now and waits.
    TookOver(&'a ServiceName),
    /// Owned by this other service, which outranks the claimant.
    Conflict(&'a ServiceName),
    /// The claimant owned the key, but its new rank puts this other
    /// service first, which takes over.
    Yielded(&'a ServiceName),
}

/// The outcome of letting a key go.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Released<'a> {
    /// The service was not the owner: nothing changes in the kernel.
    NotOwner,
    /// Ownership passed to the next claimant.
    HandedOver(&'a ServiceName),
    /// Nobody wants the key any more.
    Unclaimed,
}

impl Claims {
    pub fn owner(&self, key: &VirtualServerKey) -> Option<&ServiceName> {
        self.by_key
            .get(key)
            .and_then(|claimants| claimants.first())
            .map(|rank| &rank.name)
    }

    pub fn keys(&self) -> impl Iterator<Item = &VirtualServerKey> {
        self.by_key.keys()
    }

    /// `rank` claims `key`; a second claim by the same service replaces
    /// its first.
    pub fn claim(&mut self, key: VirtualServerKey, rank: ClaimRank) -> Claimed<'_> {
        let claimants = self.by_key.entry(key).or_default();
        let previous_owner = claimants.first().map(|r| r.name.clone());
        claimants.retain(|r| r.name != rank.name);
        let position = claimants.partition_point(|r| *r < rank);
        // Nearly every key has one claimant: no room for four.
        claimants.reserve_exact(1);
        claimants.insert(position, rank);
        let was_owner = previous_owner.as_ref() == Some(&claimants[0].name);
        match previous_owner {
            _ if position == 0 && was_owner => Claimed::Owner,
            None => Claimed::Owner,
            Some(previous) if position == 0 => {
                // The old owner is among the claimants still, behind the new one.
                let i = claimants.iter().position(|r| r.name == previous);
                Claimed::TookOver(&claimants[i.unwrap_or(0)].name)
            }
            Some(previous) if previous == claimants[position].name => {
                Claimed::Yielded(&claimants[0].name)
            }
            Some(_) => Claimed::Conflict(&claimants[0].name),
        }
    }

    pub fn release(&mut self, key: &VirtualServerKey, service: &ServiceName) -> Released<'_> {
        let Some(claimants) = self.by_key.get_mut(key) else {
            return Released::NotOwner;
        };
        let Some(position) = claimants.iter().position(|r| r.name == *service) else {
            return Released::NotOwner;
        };
        claimants.remove(position);
        if claimants.is_empty() {
            self.by_key.remove(key);
            return Released::Unclaimed;
        }
        if position == 0 {
            // Borrowck: look the vector up again for the shared borrow.
            return Released::HandedOver(&self.by_key[key][0].name);
        }
        Released::NotOwner
    }
}

/// Keys a service released with nobody claiming them, until the kernel
/// confirms they are gone; a failed delete is retried with that service.
#[derive(Clone, Debug, Default)]
pub(crate) struct Orphans {
    by_key: HashMap<VirtualServerKey, ServiceName>,
    by_service: HashMap<ServiceName, HashSet<VirtualServerKey>>,
}

impl Orphans {
    pub fn insert(&mut self, key: VirtualServerKey, service: &ServiceName) {
        if let Some(previous) = self.by_key.insert(key, service.clone()) {
            self.forget_for(&previous, &key);
        }
        self.by_service
            .entry(service.clone())
            .or_default()
            .insert(key);
    }

    pub fn remove(&mut self, key: &VirtualServerKey) {
        if let Some(service) = self.by_key.remove(key) {
            self.forget_for(&service, key);
        }
    }

    /// Who released `key`.
    pub fn released_by(&self, key: &VirtualServerKey) -> Option<&ServiceName> {
        self.by_key.get(key)
    }

    /// The keys `service` released.
    pub fn of(&self, service: &ServiceName) -> impl Iterator<Item = &VirtualServerKey> {
        self.by_service.get(service).into_iter().flatten()
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceName> {
        self.by_service.keys()
    }

    fn forget_for(&mut self, service: &ServiceName, key: &VirtualServerKey) {
        if let Some(keys) = self.by_service.get_mut(service) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_service.remove(service);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Protocol;
    use proptest::prelude::*;

    fn key() -> VirtualServerKey {
        VirtualServerKey {
            addr: "203.0.113.7".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        }
    }

    fn rank(name: &str, created: Option<i64>) -> ClaimRank {
        ClaimRank::new(&ServiceName::new("ns", name), created)
    }

    #[test]
    fn the_older_service_ranks_first_then_namespace_and_name_and_undated_last() {
        let cases = [
            ("older first", rank("b", Some(100)), rank("a", Some(200))),
            (
                "same second: by name",
                rank("a", Some(100)),
                rank("b", Some(100)),
            ),
            (
                "same second: by namespace first",
                ClaimRank::new(&ServiceName::new("a", "z"), Some(100)),
                ClaimRank::new(&ServiceName::new("b", "a"), Some(100)),
            ),
            (
                "dated before undated",
                rank("z", Some(i64::MAX)),
                rank("a", None),
            ),
            ("undated: by name", rank("a", None), rank("b", None)),
            ("before the epoch", rank("z", Some(-5)), rank("a", Some(0))),
        ];
        for (name, first, second) in cases {
            assert!(first < second, "{name}: {first:?} < {second:?}");
        }
    }

    #[test]
    fn the_best_ranked_claimant_owns_and_hands_over_in_rank_order() {
        let (a, b, c) = (rank("a", Some(1)), rank("b", None), rank("c", Some(3)));
        let mut claims = Claims::default();
        assert_eq!(claims.claim(key(), b.clone()), Claimed::Owner);
        assert_eq!(
            claims.claim(key(), c.clone()),
            Claimed::TookOver(&b.name),
            "a dated service outranks an undated one"
        );
        assert_eq!(claims.claim(key(), a.clone()), Claimed::TookOver(&c.name));
        assert_eq!(
            claims.claim(key(), b.clone()),
            Claimed::Conflict(&a.name),
            "a repeated claim replaces the first"
        );
        assert_eq!(
            claims.release(&key(), &b.name),
            Released::NotOwner,
            "a waiting claimant leaves"
        );
        assert_eq!(claims.owner(&key()), Some(&a.name));
        assert_eq!(
            claims.release(&key(), &a.name),
            Released::HandedOver(&c.name)
        );
        assert_eq!(claims.owner(&key()), Some(&c.name));
        assert_eq!(
            claims.release(&key(), &a.name),
            Released::NotOwner,
            "released twice"
        );
        assert_eq!(claims.release(&key(), &c.name), Released::Unclaimed);
        assert_eq!(claims.owner(&key()), None);
        assert_eq!(claims.keys().count(), 0);
    }

    #[test]
    fn a_recreated_owner_yields_to_an_older_claimant() {
        let (a, c) = (rank("a", Some(1)), rank("c", Some(3)));
        let mut claims = Claims::default();
        assert_eq!(claims.claim(key(), a.clone()), Claimed::Owner);
        assert_eq!(claims.claim(key(), c.clone()), Claimed::Conflict(&a.name));
        assert_eq!(
            claims.claim(key(), rank("a", Some(9))),
            Claimed::Yielded(&c.name)
        );
        assert_eq!(claims.owner(&key()), Some(&c.name));
        assert_eq!(
            claims.claim(key(), rank("c", Some(4))),
            Claimed::Owner,
            "still first after its own re-claim"
        );
    }

    #[test]
    fn a_younger_claimant_waits_behind_the_owner() {
        let (old, young) = (rank("young-name-first", Some(1)), rank("a", Some(2)));
        let mut claims = Claims::default();
        assert_eq!(claims.claim(key(), old.clone()), Claimed::Owner);
        assert_eq!(claims.claim(key(), young), Claimed::Conflict(&old.name));
        assert_eq!(claims.owner(&key()), Some(&old.name));
    }

    /// Claims by up to six services, each with its creation time (some
    /// equal, some absent), in arrival order and in a shuffled order.
    fn arrivals_and_a_restart() -> impl Strategy<Value = (Vec<ClaimRank>, Vec<ClaimRank>)> {
        proptest::collection::vec(proptest::option::of(0i64..3), 1..7).prop_flat_map(|created| {
            let ranks: Vec<ClaimRank> = created
                .iter()
                .enumerate()
                // Names unique, and not in arrival order.
                .map(|(i, c)| rank(&format!("s{}", (i * 7) % 11), *c))
                .collect();
            (Just(ranks.clone()), Just(ranks).prop_shuffle())
        })
    }

    proptest! {
        /// A restart claims in whatever order translation yields: the owner
        /// it ends with is the one the running proxy had, which claimed in
        /// the order the services arrived, and it is the best ranked.
        #[test]
        fn the_owner_does_not_depend_on_the_claim_order(
            (arrivals, restart) in arrivals_and_a_restart(),
        ) {
            let mut running = Claims::default();
            for r in &arrivals {
                let _ = running.claim(key(), r.clone());
            }
            let mut restarted = Claims::default();
            for r in restart {
                let _ = restarted.claim(key(), r);
            }
            let best = arrivals.iter().min().map(|r| &r.name);
            prop_assert_eq!(running.owner(&key()), restarted.owner(&key()));
            prop_assert_eq!(running.owner(&key()), best);
        }
    }

    #[test]
    fn orphans_follow_their_last_releaser() {
        let (a, b) = (ServiceName::new("ns", "a"), ServiceName::new("ns", "b"));
        let mut orphans = Orphans::default();
        orphans.insert(key(), &a);
        orphans.insert(key(), &b);
        assert_eq!(orphans.released_by(&key()), Some(&b));
        assert_eq!(orphans.of(&a).count(), 0);
        assert_eq!(orphans.of(&b).collect::<Vec<_>>(), vec![&key()]);
        orphans.remove(&key());
        assert_eq!(orphans.services().count(), 0);
        assert_eq!(orphans.released_by(&key()), None);
    }
}
