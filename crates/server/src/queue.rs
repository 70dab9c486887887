//! The engine queue: at most `capacity` requests use the engine at once; the rest wait,
//! served round-robin across clients (one client's burst does not starve the others), and
//! once `depth` requests wait a new one is refused at once (the server answers 503 with
//! `Retry-After`) instead of queueing without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine queue is full ({waiting} requests waiting)")]
pub struct QueueFull {
    /// Requests waiting when this one arrived.
    pub waiting: usize,
}

#[derive(Default)]
struct Inner {
    running: usize,
    waiting: usize,
    /// Waiters per client, oldest first.
    waiters: HashMap<Arc<str>, VecDeque<oneshot::Sender<()>>>,
    /// Clients with waiters, in the order they are served next.
    turn: VecDeque<Arc<str>>,
}

/// A bounded, per-client round-robin queue in front of the engine.
pub struct FairQueue {
    capacity: usize,
    depth: usize,
    inner: Mutex<Inner>,
}

/// Use of the engine; the next waiter goes when it is dropped.
pub struct Permit<'q> {
    queue: &'q FairQueue,
}

/// A snapshot of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct QueueStats {
    /// Requests using the engine.
    pub running: usize,
    /// Requests waiting for it.
    pub waiting: usize,
    /// Requests allowed to use it at once.
    pub capacity: usize,
    /// Requests allowed to wait.
    pub depth: usize,
}

impl FairQueue {
    /// `capacity` requests at once (at least 1), at most `depth` waiting.
    pub fn new(capacity: usize, depth: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            depth,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections do not panic; a poisoned lock still holds consistent counts.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the engine on behalf of `client`.
    pub async fn acquire(&self, client: &Arc<str>) -> Result<Permit<'_>, QueueFull> {
        let rx = {
            let mut q = self.lock();
            if q.running < self.capacity && q.waiting == 0 {
                q.running += 1;
                return Ok(Permit { queue: self });
            }
            if q.waiting >= self.depth {
                return Err(QueueFull { waiting: q.waiting });
            }
            let (tx, rx) = oneshot::channel();
            let waiters = q.waiters.entry(client.clone()).or_default();
            waiters.push_back(tx);
            if waiters.len() == 1 {
                q.turn.push_back(client.clone());
            }
            q.waiting += 1;
            rx
        };
        // `release` hands the engine over by sending on the channel (running stays counted).
        let mut waiting = Waiting {
            queue: self,
            rx: Some(rx),
        };
        let rx = waiting.rx.as_mut().ok_or(QueueFull { waiting: 0 })?;
        let handed = rx.await.is_ok();
        waiting.rx = None;
        if handed {
            Ok(Permit { queue: self })
        } else {
            // Unreachable while `self` is borrowed: only `release` drops a sender unsent.
            Err(QueueFull { waiting: 0 })
        }
    }

    /// Hands the engine to the next waiter, round-robin over clients.
    fn release(&self) {
        let mut q = self.lock();
        while let Some(client) = q.turn.pop_front() {
            let Some(waiters) = q.waiters.get_mut(&client) else {
                continue;
            };
            let next = waiters.pop_front();
            let more = !waiters.is_empty();
            if more {
                q.turn.push_back(client);
            } else {
                q.waiters.remove(&client);
            }
            if let Some(tx) = next {
                q.waiting -= 1;
                if tx.send(()).is_ok() {
                    return;
                }
                // That waiter gave up (its request was cancelled): try the next one.
            }
        }
        q.running -= 1;
    }

    /// Counts now.
    pub fn stats(&self) -> QueueStats {
        let q = self.lock();
        QueueStats {
            running: q.running,
            waiting: q.waiting,
            capacity: self.capacity,
            depth: self.depth,
        }
    }
}

/// A request waiting in the queue. Dropped before it was handed the engine (its request was
/// cancelled), it leaves nothing behind: a hand-over that raced with the cancellation is
/// passed on to the next waiter.
struct Waiting<'q> {
    queue: &'q FairQueue,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.queue.release();
            }
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.queue.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn client(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[tokio::test]
    async fn clients_take_turns_and_a_full_queue_refuses() {
        let q = Arc::new(FairQueue::new(1, 4));
        let first = q.acquire(&client("a")).await.expect("free");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // a queues three requests before b and c queue one each.
        for name in ["a1", "a2", "a3", "b1", "c1"] {
            let (q, order) = (q.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let c = client(&name[..1]);
                match q.acquire(&c).await {
                    Ok(_p) => {
                        order.lock().unwrap().push(name);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(_) => order.lock().unwrap().push("full"),
                }
            }));
            // Queue in a known order.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(q.stats().waiting, 4, "a1 a2 a3 b1 wait; c1 was refused");
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order, vec!["full", "a1", "b1", "a2", "a3"]);
        assert_eq!(q.stats().running, 0);
        assert_eq!(q.stats().waiting, 0);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_is_skipped() {
        let q = Arc::new(FairQueue::new(1, 8));
        let held = q.acquire(&client("a")).await.unwrap();
        let q2 = q.clone();
        let gone = tokio::spawn(async move {
            let _p = q2.acquire(&client("b")).await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        gone.abort();
        let _ = gone.await;
        let q3 = q.clone();
        let next = tokio::spawn(async move { q3.acquire(&client("c")).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        assert!(next.await.unwrap());
        assert_eq!(q.stats().running, 0);
    }
}
