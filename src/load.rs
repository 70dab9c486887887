//! A load test of a running server: `clients` concurrent agents, each creating the same
//! base and running `steps` infer steps with its own observations, over real HTTP. Every
//! figure comes from the clients' clocks and the server's answers.
//!
//! The same clients drive either state-pack's protocol (`POST /states`, `POST /infer`) or,
//! as the peer, llama.cpp's own `llama-server` (`POST /completion` with `cache_prompt`,
//! run with `-np` at least the number of clients, so that each keeps a slot): a client
//! there sends its whole context every step (the base as the server's `/tokenize` gave it,
//! every delta as a text piece, every reply as the token ids the server sampled), which the server tokenizes piece by piece as
//! the pack does, and whose reuse it reports itself (`timings.cache_n`).

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
    /// Which protocol the server speaks.
    pub api: LoadApi,
}

/// The protocol a load test drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadApi {
    /// state-pack's own (`/states`, `/infer`).
    #[default]
    StatePack,
    /// llama.cpp's `llama-server` (`/completion`, `cache_prompt`).
    LlamaServer,
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

/// The part of llama-server's `/completion` answer the load test reads.
#[derive(serde::Deserialize)]
struct CompletionLite {
    #[serde(default)]
    tokens: Vec<u32>,
    /// `eos` when the model closed its turn.
    #[serde(default)]
    stop_type: String,
    timings: Option<CompletionTimingsLite>,
}

#[derive(serde::Deserialize)]
struct CompletionTimingsLite {
    /// Prompt tokens the server evaluated.
    prompt_n: usize,
    /// Prompt tokens it took from the slot's cache.
    #[serde(default)]
    cache_n: usize,
    #[serde(default)]
    prompt_ms: f64,
    #[serde(default)]
    predicted_ms: f64,
}

/// One agent against `llama-server`: the base prefilled as state-pack's create does (one
/// token generated and dropped: the server evaluates a prompt only when asked for one),
/// then `steps` completions of the whole context so far.
async fn llama_server_client(
    http: reqwest::Client,
    cfg: LoadConfig,
    base_text: String,
    id: usize,
    on_step: impl Fn() + Send + Sync,
) -> ClientLog {
    let mut log = ClientLog::default();
    // The base as token ids, from the server's own tokenizer: a prompt array of strings
    // alone would be several prompts, one with an id in it is one prompt of mixed pieces.
    #[derive(serde::Deserialize)]
    struct Tokenized {
        tokens: Vec<u32>,
    }
    let body =
        serde_json::json!({"content": base_text, "add_special": false, "parse_special": true});
    let mut prompt: Vec<serde_json::Value> =
        match post::<Tokenized>(&http, &cfg, "/tokenize", body).await {
            Ok(t) if !t.tokens.is_empty() => t.tokens.into_iter().map(Into::into).collect(),
            Ok(_) => {
                log.fail((false, "/tokenize: no tokens for the base".into()));
                return log;
            }
            Err(e) => {
                log.fail(e);
                return log;
            }
        };
    let complete = |prompt: &[serde_json::Value], n_predict: usize| {
        post::<CompletionLite>(
            &http,
            &cfg,
            "/completion",
            serde_json::json!({
                "prompt": prompt,
                "n_predict": n_predict,
                "cache_prompt": true,
                "return_tokens": true,
                "temperature": 0.0,
                "top_k": 1,
                "stream": false,
            }),
        )
    };
    log.requests += 1;
    match complete(&prompt, 1).await {
        Ok(c) => {
            let t = c.timings.as_ref();
            log.base = Some(CreatedLite {
                state_hash: String::new(),
                tokens: TokensLite {
                    prefilled: t.map_or(0, |t| t.prompt_n),
                    reused: t.map_or(0, |t| t.cache_n),
                },
            });
        }
        Err(e) => {
            log.fail(e);
            return log;
        }
    }
    let mut closed = false;
    for step in 0..cfg.steps {
        let delta = match delta(&cfg.template, id, step, closed) {
            Ok(d) => d,
            Err(e) => {
                log.fail((false, e.to_string()));
                break;
            }
        };
        prompt.push(serde_json::Value::String(delta));
        log.requests += 1;
        let started = Instant::now();
        match complete(&prompt, cfg.max_tokens).await {
            Ok(c) => {
                log.infer_ms.push(started.elapsed().as_secs_f64() * 1e3);
                if let Some(t) = &c.timings {
                    // No queue of its own is reported: the engine's time is the server's.
                    log.engine_ms.push(t.prompt_ms + t.predicted_ms);
                    log.prefilled += t.prompt_n;
                    log.reused += t.cache_n;
                }
                closed = c.stop_type == "eos";
                prompt.extend(c.tokens.into_iter().map(serde_json::Value::from));
                // The server does not return the end-of-turn token it stopped on; a
                // state-pack state holds it, so the next prompt does too.
                if closed {
                    prompt.push(cfg.template.end_of_turn().into());
                }
            }
            Err(e) => {
                log.fail(e);
                return log;
            }
        }
        on_step();
    }
    log
}

impl ClientLog {
    fn fail(&mut self, (overloaded, e): (bool, String)) {
        self.errors.push(e);
        if overloaded {
            self.overloaded += 1;
        }
    }
}

async fn client(
    http: reqwest::Client,
    cfg: LoadConfig,
    base_text: String,
    id: usize,
    on_step: impl Fn() + Send + Sync,
) -> ClientLog {
    if cfg.api == LoadApi::LlamaServer {
        return llama_server_client(http, cfg, base_text, id, on_step).await;
    }
    let mut log = ClientLog::default();
    let fail = |log: &mut ClientLog, e: (bool, String)| log.fail(e);
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
    use std::sync::{Arc, Mutex};

    use axum::{routing::post, Json, Router};

    use super::*;

    /// A fake llama-server: every /completion answers `[step]` as its tokens, stopping on
    /// end of turn at even steps, and records the prompts.
    async fn fake_llama_server() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let app = Router::new()
            .route(
                "/tokenize",
                post(|| async { Json(serde_json::json!({"tokens": [7, 8, 9]})) }),
            )
            .route(
                "/completion",
                post(move |Json(body): Json<serde_json::Value>| {
                    let mut log = log.lock().expect("lock");
                    let n = log.len() as u32;
                    log.push(body["prompt"].clone());
                    async move {
                        Json(serde_json::json!({
                            "content": "x",
                            "tokens": [n],
                            "stop_type": if n.is_multiple_of(2) { "eos" } else { "limit" },
                            "timings": {"prompt_n": 10 + n, "cache_n": 100 * n,
                                        "prompt_ms": 1.0, "predicted_ms": 2.0},
                        }))
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    #[tokio::test]
    async fn a_llama_server_client_resends_its_whole_context_as_the_pack_holds_it() {
        let (url, seen) = fake_llama_server().await;
        let t = ChatTemplate::CHATML;
        let cfg = LoadConfig {
            url,
            token: None,
            clients: 1,
            steps: 3,
            max_tokens: 8,
            template: t,
            api: LoadApi::LlamaServer,
        };
        let report = run(&cfg, || {}).await.expect("run");
        assert_eq!(
            (report.errors, report.requests),
            (0, 4),
            "{:?}",
            report.error_samples
        );
        // The server's own counts: prompt_n and cache_n of the three infers (1 to 3).
        assert_eq!(report.prefilled, 11 + 12 + 13);
        assert_eq!(report.reused, 100 + 200 + 300);
        assert_eq!(report.base_prefilled_tokens, 10);
        let prompts = seen.lock().expect("lock").clone();
        // The base as the server tokenized it.
        let base = serde_json::json!([7, 8, 9]);
        let d0 = serde_json::Value::from(delta(&t, 0, 0, false).unwrap());
        // Infer 1 (answer [1], "limit": the turn stays open, the next delta closes it).
        let d1 = serde_json::Value::from(delta(&t, 0, 1, false).unwrap());
        let with = |rest: serde_json::Value| {
            let mut p = base.as_array().unwrap().clone();
            p.extend(rest.as_array().unwrap().iter().cloned());
            serde_json::Value::from(p)
        };
        assert_eq!(prompts[0], base);
        assert_eq!(prompts[1], with(serde_json::json!([d0])));
        // The base's dropped token is not in the context; infer 1's tokens are.
        assert_eq!(prompts[2], with(serde_json::json!([d0, 1, d1])));
        // Infer 2 stopped on end of turn: the server left that token out, the context has
        // it, and the next delta does not close the turn again.
        let d2 = serde_json::Value::from(delta(&t, 0, 2, true).unwrap());
        let eot = serde_json::Value::from(t.end_of_turn());
        assert_eq!(prompts[3], with(serde_json::json!([d0, 1, d1, 2, eot, d2])));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut [3.0], 99.0), 3.0);
        assert_eq!(percentile(&mut [], 50.0), 0.0);
    }
}
