//! Which service owns each virtual server key, and which keys services have
//! let go of but may still be in the kernel.

use foldhash::{HashMap, HashSet};

use crate::desired::{ServiceName, VirtualServerKey};

/// Services claiming each key, in claim order. The first claimant owns the
/// key; later ones wait, and the next in line takes over when it lets go, so
/// a conflict never flaps between two services.
#[derive(Clone, Debug, Default)]
pub(crate) struct Claims {
    by_key: HashMap<VirtualServerKey, Vec<ServiceName>>,
}

/// The outcome of a claim.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claimed<'a> {
    Owner,
    /// Already owned by this other service.
    Conflict(&'a ServiceName),
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
        self.by_key.get(key).and_then(|claimants| claimants.first())
    }

    pub fn keys(&self) -> impl Iterator<Item = &VirtualServerKey> {
        self.by_key.keys()
    }

    pub fn claim(&mut self, key: VirtualServerKey, service: &ServiceName) -> Claimed<'_> {
        let claimants = self.by_key.entry(key).or_default();
        claimants.push(service.clone());
        if claimants.len() == 1 {
            Claimed::Owner
        } else {
            Claimed::Conflict(&claimants[0])
        }
    }

    pub fn release(&mut self, key: &VirtualServerKey, service: &ServiceName) -> Released<'_> {
        let Some(claimants) = self.by_key.get_mut(key) else {
            return Released::NotOwner;
        };
        let Some(position) = claimants.iter().position(|s| s == service) else {
            return Released::NotOwner;
        };
        claimants.remove(position);
        if claimants.is_empty() {
            self.by_key.remove(key);
            return Released::Unclaimed;
        }
        if position == 0 {
            // Borrowck: look the vector up again for the shared borrow.
            return Released::HandedOver(&self.by_key[key][0]);
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

    fn key() -> VirtualServerKey {
        VirtualServerKey {
            addr: "203.0.113.7".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        }
    }

    #[test]
    fn first_claimant_owns_and_hands_over_in_order() {
        let (a, b, c) = (
            ServiceName::new("ns", "a"),
            ServiceName::new("ns", "b"),
            ServiceName::new("ns", "c"),
        );
        let mut claims = Claims::default();
        assert_eq!(claims.claim(key(), &b), Claimed::Owner);
        assert_eq!(claims.claim(key(), &a), Claimed::Conflict(&b));
        assert_eq!(claims.claim(key(), &c), Claimed::Conflict(&b));
        assert_eq!(
            claims.release(&key(), &c),
            Released::NotOwner,
            "a waiting claimant leaves"
        );
        assert_eq!(claims.owner(&key()), Some(&b));
        assert_eq!(claims.release(&key(), &b), Released::HandedOver(&a));
        assert_eq!(claims.owner(&key()), Some(&a));
        assert_eq!(
            claims.release(&key(), &b),
            Released::NotOwner,
            "released twice"
        );
        assert_eq!(claims.release(&key(), &a), Released::Unclaimed);
        assert_eq!(claims.owner(&key()), None);
        assert_eq!(claims.keys().count(), 0);
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
