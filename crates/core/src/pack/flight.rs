//! Single flight: identical operations that arrive together run one after the other, so
//! that the later ones find what the first one made (a hot state, a stored answer) instead
//! of computing it again. Concurrent creates of one base prefill it once; concurrent
//! deterministic infers of one request generate once and the others are replays.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The operations in flight, by key.
#[derive(Default)]
pub(crate) struct Flights {
    keys: Mutex<HashMap<[u8; 32], Arc<AsyncMutex<()>>>>,
}

/// Held while an operation runs; others with its key wait.
pub(crate) struct Flight<'a> {
    flights: &'a Flights,
    key: [u8; 32],
    guard: Option<OwnedMutexGuard<()>>,
}

/// A key from the parts that make two operations the same.
pub(crate) fn key(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

impl Flights {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<AsyncMutex<()>>>> {
        // Plain data; a panic elsewhere cannot leave it half-updated.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until no other operation with `key` runs, then holds the key.
    pub(crate) async fn join(&self, key: [u8; 32]) -> Flight<'_> {
        let lock = Arc::clone(self.map().entry(key).or_default());
        let guard = lock.lock_owned().await;
        Flight {
            flights: self,
            key,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.map();
        drop(self.guard.take());
        // Forget the key once nobody waits on it (the map holds the only reference).
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn one_key_runs_one_at_a_time_and_is_forgotten_after() {
        let flights = Arc::new(Flights::default());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (f, r, m) = (flights.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    let _flight = f.join(key(&[b"same"])).await;
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    r.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0, "no key left behind");
        // Different keys do not wait for each other.
        let a = flights.join(key(&[b"a"])).await;
        let b = flights.join(key(&[b"b"])).await;
        assert_eq!(flights.len(), 2);
        drop((a, b));
        assert_eq!(flights.len(), 0);
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
    }
}
