//! Prometheus metrics (text exposition format 0.0.4), kept with atomics and one small lock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use state_pack_core::pack::OpReport;

/// Upper bounds of the latency histogram, seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    prefilled: AtomicU64,
    reused: AtomicU64,
    generated: AtomicU64,
    replays: AtomicU64,
    rejected: AtomicU64,
    /// (route, status) -> requests, and route -> latency.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route, status))
            .or_insert(0) += 1;
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let h = latency.entry(route).or_default();
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Counts the engine work of one operation.
    pub fn operation(&self, r: &OpReport) {
        self.prefilled
            .fetch_add(r.tokens.prefilled, Ordering::Relaxed);
        self.reused.fetch_add(r.tokens.reused, Ordering::Relaxed);
        self.generated
            .fetch_add(r.tokens.generated, Ordering::Relaxed);
        if r.replay_of.is_some() {
            self.replays.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request refused because the queue was full.
    pub fn queue_full(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text, with the gauges given.
    pub fn render(&self, hot: usize, running: usize, waiting: usize) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "state_pack_tokens_prefilled_total",
            "Tokens the engine ran through the model.",
            self.prefilled.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "state_pack_tokens_reused_total",
            "Tokens whose KV the engine already held.",
            self.reused.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "state_pack_tokens_generated_total",
            "Tokens the engine generated.",
            self.generated.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "state_pack_replays_total",
            "Infers answered from the store without the engine.",
            self.replays.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "state_pack_queue_rejections_total",
            "Requests refused with 503 because the engine queue was full.",
            self.rejected.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "state_pack_states_hot",
            "Token sequences whose KV the engine holds.",
            hot,
        );
        gauge(
            &mut out,
            "state_pack_queue_running",
            "Requests using the engine.",
            running,
        );
        gauge(
            &mut out,
            "state_pack_queue_waiting",
            "Requests waiting for the engine.",
            waiting,
        );
        let _ = writeln!(
            out,
            "# HELP state_pack_http_requests_total HTTP requests answered.\n# TYPE state_pack_http_requests_total counter"
        );
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "state_pack_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP state_pack_http_request_duration_seconds Time to answer, queueing included.\n# TYPE state_pack_http_request_duration_seconds histogram"
        );
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let name = "state_pack_http_request_duration_seconds";
            for (b, c) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "{name}_bucket{{route=\"{route}\",le=\"{b}\"}} {c}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {}", h.count);
        }
        out
    }
}
