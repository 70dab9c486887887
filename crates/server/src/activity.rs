//! What the dashboard shows: per-client totals and a per-second series of the engine work
//! this process did, all from the measured figures of each answered request (the same
//! numbers the receipts sign), kept in memory.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use schemars::JsonSchema;
use serde::Serialize;

/// Seconds of history the series keeps.
const SERIES_SECONDS: usize = 600;

/// Token counts of requests, as measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Counts {
    /// Requests that used (or were answered instead of) the engine.
    pub requests: u64,
    /// Prompt tokens those requests sent (whole states, not only deltas).
    pub prompt_tokens: u64,
    /// Of those, tokens the engine ran through the model.
    pub prefilled: u64,
    /// Of those, tokens not computed for the request: the engine held their KV, loaded it
    /// from a KV blob, or the answer was repeated from the store.
    pub cached: u64,
    /// Of `cached`, tokens whose KV was loaded from a KV blob.
    pub restored: u64,
    /// Tokens generated.
    pub generated: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.prompt_tokens += o.prompt_tokens;
        self.prefilled += o.prefilled;
        self.cached += o.cached;
        self.restored += o.restored;
        self.generated += o.generated;
    }
}

/// One client's totals.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ClientCounts {
    /// The client's name (its token's name; `anonymous` without authentication).
    pub client: String,
    /// Its totals.
    #[serde(flatten)]
    pub counts: Counts,
}

/// One second of the series.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
pub struct Second {
    /// Unix seconds.
    pub t: u64,
    /// What was answered in that second.
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Default)]
struct Inner {
    clients: BTreeMap<String, Counts>,
    series: VecDeque<Second>,
}

/// The dashboard's figures.
#[derive(Default)]
pub struct Activity {
    inner: Mutex<Inner>,
}

impl Activity {
    /// Records one answered request of `client` at unix second `now`.
    pub fn request(&self, client: &str, now: u64, c: Counts) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.clients.entry(client.to_string()).or_default().add(&c);
        match inner.series.back_mut() {
            Some(last) if last.t == now => last.counts.add(&c),
            _ => inner.series.push_back(Second { t: now, counts: c }),
        }
        while inner
            .series
            .front()
            .is_some_and(|f| f.t + SERIES_SECONDS as u64 <= now)
        {
            inner.series.pop_front();
        }
    }

    /// Totals over every client, each client's, and the series.
    pub fn snapshot(&self) -> (Counts, Vec<ClientCounts>, Vec<Second>) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = Counts::default();
        let clients = inner
            .clients
            .iter()
            .map(|(name, c)| {
                total.add(c);
                ClientCounts {
                    client: name.clone(),
                    counts: *c,
                }
            })
            .collect();
        (total, clients, inner.series.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(prompt: u64, prefilled: u64) -> Counts {
        Counts {
            requests: 1,
            prompt_tokens: prompt,
            prefilled,
            cached: prompt - prefilled,
            ..Counts::default()
        }
    }

    #[test]
    fn totals_per_client_and_per_second() {
        let a = Activity::default();
        a.request("alice", 100, c(10, 10));
        a.request("bob", 100, c(20, 2));
        a.request("alice", 101, c(30, 3));
        let (total, clients, series) = a.snapshot();
        assert_eq!(
            (total.requests, total.prompt_tokens, total.prefilled),
            (3, 60, 15)
        );
        assert_eq!(clients[0].client, "alice");
        assert_eq!(clients[0].counts.cached, 27);
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].counts.prompt_tokens, 30);
        // Old seconds fall off.
        a.request("bob", 100 + SERIES_SECONDS as u64 + 1, c(1, 1));
        assert_eq!(a.snapshot().2.len(), 1);
    }
}
