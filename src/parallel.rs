//! Pure work over a large batch, split over the machine's cores: a cold
//! sync converts and translates every object before any kernel work can
//! start, and would otherwise do it on one core while the others wait.

use std::sync::OnceLock;

/// Below this many items per worker a thread costs more than it saves.
const MIN_PER_WORKER: usize = 1024;

/// `items.into_iter().map(f).collect()`, in order, on up to one thread per
/// core; on the calling thread alone for a small batch.
pub fn map_in_order<T: Send, R: Send>(mut items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let workers = cores().min(items.len() / MIN_PER_WORKER).max(1);
    if workers == 1 {
        return items.into_iter().map(f).collect();
    }
    let per_worker = items.len().div_ceil(workers);
    let mut tails = Vec::with_capacity(workers - 1);
    while items.len() > per_worker {
        let at = items.len() - per_worker;
        tails.push(items.split_off(at));
    }
    tails.reverse();
    let f = &f;
    std::thread::scope(|scope| {
        let others: Vec<_> = tails
            .into_iter()
            .map(|tail| scope.spawn(move || tail.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut mapped: Vec<R> = items.into_iter().map(f).collect();
        for other in others {
            // The work is pure and does not panic; if it ever did, the panic
            // is the caller's, as it would be on one thread.
            mapped.extend(
                other
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            );
        }
        mapped
    })
}

/// The cores this process may use, read once: std reads the cgroup's
/// quota from /proc and /sys on every call.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_order_whatever_the_split() {
        for len in [
            0,
            1,
            MIN_PER_WORKER - 1,
            2 * MIN_PER_WORKER,
            5 * MIN_PER_WORKER + 3,
        ] {
            let items: Vec<usize> = (0..len).collect();
            let mapped = map_in_order(items, |i| i * 2);
            assert_eq!(
                mapped,
                (0..len).map(|i| i * 2).collect::<Vec<_>>(),
                "{len} items"
            );
        }
    }

    #[test]
    fn owned_items_are_consumed_once() {
        let items: Vec<String> = (0..3 * MIN_PER_WORKER).map(|i| i.to_string()).collect();
        let lengths = map_in_order(items, |s| s.len());
        assert_eq!(lengths.len(), 3 * MIN_PER_WORKER);
        assert_eq!(lengths[3 * MIN_PER_WORKER - 1], 4);
    }
}
