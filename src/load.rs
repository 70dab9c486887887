//! A load test of a running server: `clients` concurrent agents, each creating the same
//! base and running `steps` infer steps with its own observations, over real HTTP. Every
//! figure comes from the clients' clocks and the server's answers.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::demo::{self, OBSERVATIONS};
use crate::template::{ChatTemplate, TemplateError};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The server, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// A bearer token, if the server wants one.
    pub token: Option<String>,
    /// Concurrent clients.
    pub clients: usize,
    /// Infer steps per client.
    pub steps: usize,
    /// Tokens generated per step (greedy).
    pub max_tokens: usize,
    /// The served model's chat template (the server's `GET /health` names it), in which the
    /// clients write their turns.
    pub template: ChatTemplate,
}

/// Why a load test could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// The template cannot write the demo's turns.
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// The measured result.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Clients.
    pub clients: usize,
    /// Steps per client.
    pub steps: usize,
    /// Wall time from the first request to the last answer.
    pub wall_s: f64,
    /// Infer steps answered per second.
    pub steps_per_s: f64,
    /// Requests answered (creates and infers).
    pub requests: usize,
    /// Requests that failed (transport errors or non-2xx answers).
    pub errors: usize,
    /// The first few failures.
    pub error_samples: Vec<String>,
    /// 503 answers (queue full) among the errors.
    pub overloaded: usize,
    /// Median infer latency, client-side, ms.
    pub infer_p50_ms: f64,
    /// 99th percentile infer latency, client-side, ms.
    pub infer_p99_ms: f64,
    /// Median time infers waited in the server's queue, ms.
    pub queued_p50_ms: f64,
    /// Median engine time of an infer (total, queueing excluded), ms.
    pub engine_p50_ms: f64,
    /// Creates of the shared base that prefilled anything (1 means the base was prefilled
    /// once for all clients).
    pub base_prefills: usize,
    /// Tokens the server's engine prefilled for the base, over all creates.
    pub base_prefilled_tokens: usize,
    /// Tokens prefilled over all infers.
    pub prefilled: usize,
    /// Tokens reused over all infers.
    pub reused: usize,
    /// Infers the server answered from the store (should be 0: every delta is distinct).
    pub replays: usize,
}

/// Nearest-rank percentile of `v` (sorted in place); 0 for none.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

#[derive(Default)]
struct ClientLog {
    requests: usize,
    errors: Vec<String>,
    overloaded: usize,
    infer_ms: Vec<f64>,
    queued_ms: Vec<f64>,
    engine_ms: Vec<f64>,
    base: Option<CreatedLite>,
    prefilled: usize,
    reused: usize,
    replays: usize,
}

fn delta(
    t: &ChatTemplate,
    client: usize,
    step: usize,
    closed: bool,
) -> Result<String, TemplateError> {
    let (tool, text) = OBSERVATIONS[(client + step) % OBSERVATIONS.len()];
    let said = ChatTemplate::observation(tool, text);
    demo::after_reply(t, closed, &format!("[agent {client}, step {step}] {said}"))
}

async fn post<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    cfg: &LoadConfig,
    path: &str,
    body: serde_json::Value,
) -> Result<T, (bool, String)> {
    let mut req = http.post(format!("{}{path}", cfg.url)).json(&body);
    if let Some(t) = &cfg.token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| (false, format!("{path}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err((status.as_u16() == 503, format!("{path}: {status}: {text}")));
    }
    resp.json::<T>()
        .await
        .map_err(|e| (false, format!("{path}: bad answer: {e}")))
}

async fn client(
    http: reqwest::Client,
    cfg: LoadConfig,
    base_text: String,
    id: usize,
    on_step: impl Fn() + Send + Sync,
) -> ClientLog {
    let mut log = ClientLog::default();
    let fail = |log: &mut ClientLog, (overloaded, e): (bool, String)| {
        log.errors.push(e);
        if overloaded {
            log.overloaded += 1;
        }
    };
    log.requests += 1;
    let base: CreatedLite = match post(
        &http,
        &cfg,
        "/states",
        serde_json::json!({ "base_text": base_text }),
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            fail(&mut log, e);
            return log;
        }
    };
    let mut state = base.state_hash.clone();
    log.base = Some(base);
    let mut closed = false;
    for step in 0..cfg.steps {
        let delta = match delta(&cfg.template, id, step, closed) {
            Ok(d) => d,
            Err(e) => {
                fail(&mut log, (false, e.to_string()));
                break;
            }
        };
        log.requests += 1;
        let started = Instant::now();
        let answer: Result<InferResponseLite, _> = post(
            &http,
            &cfg,
            "/infer",
            serde_json::json!({
                "state_hash": state,
                "delta_text": delta,
                "sampling": {"max_tokens": cfg.max_tokens},
            }),
        )
        .await;
        match answer {
            Ok(a) => {
                log.infer_ms.push(started.elapsed().as_secs_f64() * 1e3);
                log.queued_ms.push(a.timings.queued_ms);
                log.engine_ms.push(a.timings.total_ms);
                log.prefilled += a.tokens.prefilled;
                log.reused += a.tokens.reused;
                log.replays += usize::from(a.replay_of.is_some());
                closed = a.finish == "stop";
                state = a.new_state_hash;
            }
            Err(e) => {
                fail(&mut log, e);
                return log;
            }
        }
        on_step();
    }
    log
}

/// The part of a create's answer ([`super::api::StateResponse`]) the load test reads.
#[derive(serde::Deserialize)]
struct CreatedLite {
    state_hash: String,
    tokens: TokensLite,
}

/// The part of an infer's answer ([`super::api::InferResponse`]) the load test reads.
#[derive(serde::Deserialize)]
struct InferResponseLite {
    new_state_hash: String,
    finish: String,
    tokens: TokensLite,
    timings: TimingsLite,
    replay_of: Option<u64>,
}

#[derive(serde::Deserialize)]
struct TokensLite {
    prefilled: usize,
    reused: usize,
}

#[derive(serde::Deserialize)]
struct TimingsLite {
    queued_ms: f64,
    total_ms: f64,
}

/// Runs the load test; `on_step` is called after every answered infer.
pub async fn run(
    cfg: &LoadConfig,
    on_step: impl Fn() + Send + Sync + Clone + 'static,
) -> Result<LoadReport, LoadError> {
    let base_text = demo::base_text(&cfg.template, "serve")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .pool_max_idle_per_host(cfg.clients)
        .build()?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..cfg.clients)
        .map(|id| {
            let client = client(
                http.clone(),
                cfg.clone(),
                base_text.clone(),
                id,
                on_step.clone(),
            );
            tokio::spawn(client)
        })
        .collect();
    let mut logs = Vec::new();
    for t in tasks {
        match t.await {
            Ok(l) => logs.push(l),
            Err(e) => logs.push(ClientLog {
                errors: vec![format!("client task failed: {e}")],
                ..ClientLog::default()
            }),
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let mut infer_ms: Vec<f64> = logs.iter().flat_map(|l| l.infer_ms.clone()).collect();
    let mut queued_ms: Vec<f64> = logs.iter().flat_map(|l| l.queued_ms.clone()).collect();
    let mut engine_ms: Vec<f64> = logs.iter().flat_map(|l| l.engine_ms.clone()).collect();
    let errors: Vec<String> = logs.iter().flat_map(|l| l.errors.clone()).collect();
    let bases = logs.iter().filter_map(|l| l.base.as_ref());
    Ok(LoadReport {
        clients: cfg.clients,
        steps: cfg.steps,
        wall_s: wall,
        steps_per_s: infer_ms.len() as f64 / wall.max(1e-9),
        requests: logs.iter().map(|l| l.requests).sum(),
        errors: errors.len(),
        error_samples: errors.iter().take(5).cloned().collect(),
        overloaded: logs.iter().map(|l| l.overloaded).sum(),
        infer_p50_ms: percentile(&mut infer_ms, 50.0),
        infer_p99_ms: percentile(&mut infer_ms, 99.0),
        queued_p50_ms: percentile(&mut queued_ms, 50.0),
        engine_p50_ms: percentile(&mut engine_ms, 50.0),
        base_prefills: bases.clone().filter(|b| b.tokens.prefilled > 0).count(),
        base_prefilled_tokens: bases.map(|b| b.tokens.prefilled).sum(),
        prefilled: logs.iter().map(|l| l.prefilled).sum(),
        reused: logs.iter().map(|l| l.reused).sum(),
        replays: logs.iter().map(|l| l.replays).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut [3.0], 99.0), 3.0);
        assert_eq!(percentile(&mut [], 50.0), 0.0);
    }
}
