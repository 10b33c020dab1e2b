//! Pure work over a large batch, split over the machine's cores: a cold
//! sync converts and translates every object before any kernel work can
//! start, and would otherwise do it on one core while the others wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};

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

/// Items a thread maps at a time in [`map_consume_in_order`].
const CHUNK: usize = 256;

/// `for item in items { consume(f(item)) }`: `f` on up to one thread per
/// core, `consume` on the calling thread, in order. The caller consumes
/// each chunk of results as soon as it is mapped, and maps chunks itself
/// while the next one it needs is not ready, so that the consuming runs
/// beside the mapping rather than after all of it.
pub fn map_consume_in_order<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> R + Sync,
    mut consume: impl FnMut(R),
) {
    let workers = cores().min(items.len() / MIN_PER_WORKER).max(1);
    if workers == 1 {
        items.iter().map(&f).for_each(consume);
        return;
    }
    let chunks: Vec<&[T]> = items.chunks(CHUNK).collect();
    let claimed = AtomicUsize::new(0);
    let map_chunk = |k: usize| chunks[k].iter().map(&f).collect::<Vec<R>>();
    // The next chunk nobody has claimed, mapped; `None` once all are.
    let map_next = || {
        let k = claimed.fetch_add(1, Ordering::Relaxed);
        (k < chunks.len()).then(|| (k, map_chunk(k)))
    };
    std::thread::scope(|scope| {
        let (mapped, arrived) = mpsc::channel();
        for _ in 1..workers {
            let mapped = mapped.clone();
            let map_next = &map_next;
            scope.spawn(move || {
                while let Some(chunk) = map_next() {
                    if mapped.send(chunk).is_err() {
                        break;
                    }
                }
            });
        }
        drop(mapped);
        let mut ready: Vec<Option<Vec<R>>> =
            std::iter::repeat_with(|| None).take(chunks.len()).collect();
        let mut next = 0;
        while next < chunks.len() {
            while let Ok((k, results)) = arrived.try_recv() {
                ready[k] = Some(results);
            }
            if let Some(results) = ready[next].take() {
                results.into_iter().for_each(&mut consume);
                next += 1;
            } else if let Some((k, results)) = map_next() {
                ready[k] = Some(results);
            } else {
                // Every chunk is claimed and the next is on a worker. If
                // the workers are gone, one panicked: the scope's end
                // passes its panic on.
                match arrived.recv() {
                    Ok((k, results)) => ready[k] = Some(results),
                    Err(_) => break,
                }
            }
        }
    });
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
    fn consumes_in_order_on_the_calling_thread_whatever_the_split() {
        let caller = std::thread::current().id();
        for len in [
            0,
            1,
            2 * MIN_PER_WORKER - 1,
            2 * MIN_PER_WORKER,
            5 * MIN_PER_WORKER + 3,
            40 * CHUNK + 1,
        ] {
            let items: Vec<usize> = (0..len).collect();
            let mut consumed = Vec::new();
            map_consume_in_order(
                &items,
                |&i| i * 2,
                |doubled| {
                    assert_eq!(
                        std::thread::current().id(),
                        caller,
                        "consumed on the caller"
                    );
                    consumed.push(doubled);
                },
            );
            assert_eq!(
                consumed,
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
