//! A small pool for per-layer work (unpacking on pull, writing and uploading on push).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `f` on every item with up to `parallel` threads and returns the results in item
/// order. After the first error no new item is started (the others finish the one they
/// have); items never started are left out, so a result list shorter than `items` means
/// an error is in it.
pub(crate) fn each<T: Sync, R: Send, E: Send>(items: &[T], parallel: usize, f: impl Fn(&T) -> Result<R, E> + Sync) -> Vec<Result<R, E>> {
    let next = AtomicUsize::new(0);
    let mut results: Vec<(usize, Result<R, E>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel.max(1).min(items.len()))
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        let r = f(item);
                        let failed = r.is_err();
                        out.push((i, r));
                        if failed {
                            // stop handing out work; the others finish their current item
                            next.store(usize::MAX / 2, Ordering::Relaxed);
                            break;
                        }
                    }
                    out
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a layer worker panicked")).collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_in_order_and_stop_after_an_error() {
        let items: Vec<u32> = (0..50).collect();
        let ok: Vec<Result<u32, ()>> = super::each(&items, 4, |&x| Ok(x * 2));
        assert_eq!(ok.into_iter().map(Result::unwrap).collect::<Vec<_>>(), items.iter().map(|x| x * 2).collect::<Vec<_>>());
        let r = super::each(&items, 1, |&x| if x == 3 { Err(x) } else { Ok(x) });
        assert_eq!(r.len(), 4, "nothing after the failing item starts");
        assert_eq!(r[3], Err(3));
    }
}
