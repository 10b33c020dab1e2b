//! Scheduler names (IPVS_SVC_ATTR_SCHED_NAME).

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

/// A scheduling algorithm, named as the kernel module `ip_vs_<name>` is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Scheduler {
    /// "rr": round robin.
    RoundRobin,
    /// "wrr": weighted round robin.
    WeightedRoundRobin,
    /// "lc": least connection.
    LeastConnection,
    /// "wlc": weighted least connection (the kernel's default).
    WeightedLeastConnection,
    /// "lblc": locality-based least connection.
    LocalityBasedLeastConnection,
    /// "lblcr": locality-based least connection with replication.
    LocalityBasedLeastConnectionWithReplication,
    /// "dh": destination hashing.
    DestinationHashing,
    /// "sh": source hashing.
    SourceHashing,
    /// "sed": shortest expected delay.
    ShortestExpectedDelay,
    /// "nq": never queue.
    NeverQueue,
    /// "mh": Maglev hashing.
    Maglev,
    /// "fo": weighted failover.
    WeightedFailover,
    /// "ovf": weighted overflow.
    WeightedOverflow,
    /// "twos": weighted random twos choice.
    TwoRandomChoices,
    /// Any other name, kept verbatim. The kernel reports "none" for a
    /// service whose scheduler module is gone.
    Other(String),
}

impl Scheduler {
    /// The name the kernel and ipvsadm use.
    pub fn as_str(&self) -> &str {
        match self {
            Self::RoundRobin => "rr",
            Self::WeightedRoundRobin => "wrr",
            Self::LeastConnection => "lc",
            Self::WeightedLeastConnection => "wlc",
            Self::LocalityBasedLeastConnection => "lblc",
            Self::LocalityBasedLeastConnectionWithReplication => "lblcr",
            Self::DestinationHashing => "dh",
            Self::SourceHashing => "sh",
            Self::ShortestExpectedDelay => "sed",
            Self::NeverQueue => "nq",
            Self::Maglev => "mh",
            Self::WeightedFailover => "fo",
            Self::WeightedOverflow => "ovf",
            Self::TwoRandomChoices => "twos",
            Self::Other(name) => name,
        }
    }

    /// Every scheduler this crate names.
    pub const KNOWN: [Scheduler; 14] = [
        Self::RoundRobin,
        Self::WeightedRoundRobin,
        Self::LeastConnection,
        Self::WeightedLeastConnection,
        Self::LocalityBasedLeastConnection,
        Self::LocalityBasedLeastConnectionWithReplication,
        Self::DestinationHashing,
        Self::SourceHashing,
        Self::ShortestExpectedDelay,
        Self::NeverQueue,
        Self::Maglev,
        Self::WeightedFailover,
        Self::WeightedOverflow,
        Self::TwoRandomChoices,
    ];
}

impl FromStr for Scheduler {
    type Err = Infallible;

    /// Maps a kernel name to its variant; an unknown name becomes `Other`.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(Self::KNOWN
            .iter()
            .find(|known| known.as_str() == name)
            .cloned()
            .unwrap_or_else(|| Self::Other(name.to_owned())))
    }
}

impl From<&str> for Scheduler {
    fn from(name: &str) -> Self {
        match name.parse() {
            Ok(scheduler) => scheduler,
            Err(never) => match never {},
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for scheduler in Scheduler::KNOWN {
            assert_eq!(Scheduler::from(scheduler.as_str()), scheduler);
            assert_eq!(scheduler.to_string(), scheduler.as_str());
        }
    }

    #[test]
    fn unknown_names_are_kept() {
        assert_eq!(Scheduler::from("none"), Scheduler::Other("none".into()));
        assert_eq!(Scheduler::Other("mine".into()).as_str(), "mine");
    }
}
