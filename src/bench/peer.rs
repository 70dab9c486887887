//! The peer arm: the same demo loop against llama.cpp's own `llama-server`, the tool a user
//! would otherwise pick, timed from this process over HTTP.
//!
//! Every step sends the whole token sequence (base, every delta, every generated token) to
//! `POST /completion` with `cache_prompt: true`, so the server keeps its slot's KV and
//! evaluates only the new tokens: the same work state-pack's llama.cpp engine does, minus
//! hashing, receipts and KV blobs. The tokens are ours (same GGUF, same vocabulary), so both
//! see identical inputs.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use super::{Arm, ArmRun, BenchError, StepSplit};
use crate::demo::{self, StepTotals};
use crate::engine::Engine;
use crate::pack::PackError;

/// A running `llama-server` serving the model under test.
#[derive(Debug, Clone)]
pub struct Peer {
    url: String,
    client: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct Completion {
    content: String,
    /// Generated token ids (`return_tokens: true`).
    #[serde(default)]
    tokens: Vec<u32>,
    /// `eos`, `limit`, `word` or `none`.
    #[serde(default)]
    stop_type: String,
    timings: Option<CompletionTimings>,
}

#[derive(Debug, Deserialize)]
struct CompletionTimings {
    /// Prompt tokens the server evaluated (the rest came from its cache).
    prompt_n: usize,
    /// Its time evaluating them, milliseconds.
    #[serde(default)]
    prompt_ms: f64,
    /// Its time generating, milliseconds.
    #[serde(default)]
    predicted_ms: f64,
}

impl Peer {
    /// Checks that `url` (e.g. `http://127.0.0.1:8080`) answers `GET /health`.
    pub async fn connect(url: &str) -> Result<Self, BenchError> {
        let url = url.trim_end_matches('/').to_string();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| BenchError::Peer(format!("cannot build an HTTP client: {e}")))?;
        let health = client
            .get(format!("{url}/health"))
            .send()
            .await
            .map_err(|e| {
                BenchError::Peer(format!(
                    "no llama-server answers at {url} ({e}); start one on the same GGUF, see docs/PERFORMANCE.md"
                ))
            })?;
        if !health.status().is_success() {
            return Err(BenchError::Peer(format!(
                "{url}/health answered {}: is the model still loading?",
                health.status()
            )));
        }
        Ok(Self { url, client })
    }

    /// The server's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn complete(&self, prompt: &[u32], n_predict: usize) -> Result<Completion, BenchError> {
        let body = json!({
            "prompt": prompt,
            "n_predict": n_predict,
            "cache_prompt": true,
            "temperature": 0.0,
            "top_k": 1,
            "return_tokens": true,
            "stream": false,
        });
        let resp = self
            .client
            .post(format!("{}/completion", self.url))
            .json(&body)
            .send()
            .await
            .map_err(|e| BenchError::Peer(format!("{}/completion: {e}", self.url)))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(BenchError::Peer(format!(
                "{}/completion answered {status}: {}",
                self.url,
                text.chars().take(300).collect::<String>()
            )));
        }
        resp.json()
            .await
            .map_err(|e| BenchError::Peer(format!("unexpected /completion answer: {e}")))
    }

    /// One run of the demo loop (`steps` steps, greedy, [`demo::TOKENS_PER_STEP`] tokens a
    /// step) for `session`, with `case_file` in its system prompt, tokenized by `engine`.
    pub(super) async fn run(
        &self,
        engine: &dyn Engine,
        session: &str,
        case_file: &str,
        steps: usize,
        on_step: &mut (impl FnMut(Arm, usize) + Send),
    ) -> Result<ArmRun, BenchError> {
        let tokenize = |text: String| async move {
            engine
                .tokenize(&text)
                .await
                .map_err(|e| BenchError::Pack(PackError::from(e)))
        };
        let template = engine.info().template;
        let end_of_turn = tokenize(template.end_of_turn().into()).await?;
        let run_started = Instant::now();
        let mut context = tokenize(demo::base_text_with(&template, session, case_file)?).await?;
        // The base is prefilled once, as state-pack's `create` does (one token is generated
        // and dropped: the server needs n_predict >= 1 to evaluate a prompt).
        let base = self.complete(&context, 1).await?;
        let mut totals = StepTotals {
            steps: 1,
            prefilled: base.timings.as_ref().map_or(context.len(), |t| t.prompt_n),
            ..StepTotals::default()
        };
        let mut closed = false;
        let mut step_ms = Vec::with_capacity(steps);
        let mut split = StepSplit::default();
        let mut outputs = Vec::with_capacity(steps);
        for k in 0..steps {
            let started = Instant::now();
            context.extend(tokenize(demo::observation_delta(&template, k, closed)?).await?);
            let c = self.complete(&context, demo::TOKENS_PER_STEP).await?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            step_ms.push(ms);
            if let Some(t) = &c.timings {
                split.prefill += t.prompt_ms;
                split.decode += t.predicted_ms;
                split.other += (ms - t.prompt_ms - t.predicted_ms).max(0.0);
            }
            let prefilled = c.timings.as_ref().map_or(context.len(), |t| t.prompt_n);
            totals.steps += 1;
            totals.prefilled += prefilled;
            totals.reused += context.len().saturating_sub(prefilled);
            totals.generated += c.tokens.len();
            context.extend(&c.tokens);
            closed = c.stop_type == "eos";
            // The server does not return the end-of-turn token it stopped on; state-pack's
            // states hold it, so the next prompt must too.
            if closed && !c.tokens.ends_with(&end_of_turn) {
                context.extend(&end_of_turn);
            }
            outputs.push(c.content);
            on_step(Arm::Peer, k + 1);
        }
        totals.wall = run_started.elapsed();
        Ok(ArmRun {
            arm: Arm::Peer,
            totals,
            step_ms,
            split_ms: split.scaled(1.0 / steps.max(1) as f64),
            outputs,
            progress: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use axum::{routing::get, routing::post, Json, Router};

    use super::*;
    use crate::engine::{EngineError, EngineUsage, Generation, ModelInfo, Sampling};
    use crate::state::ModelFingerprint;
    use crate::template::ChatTemplate;

    /// Tokenizes text as its bytes; nothing else is needed by the peer arm.
    struct Bytes(ModelInfo);

    #[async_trait]
    impl Engine for Bytes {
        fn info(&self) -> &ModelInfo {
            &self.0
        }
        async fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
            Ok(text.bytes().map(u32::from).collect())
        }
        async fn detokenize(&self, _: &[u32]) -> Result<String, EngineError> {
            unreachable!("the peer arm never detokenizes")
        }
        async fn prefill(&self, _: &[u32]) -> Result<EngineUsage, EngineError> {
            unreachable!("the peer arm never runs the engine")
        }
        async fn generate(&self, _: &[u32], _: &Sampling) -> Result<Generation, EngineError> {
            unreachable!("the peer arm never runs the engine")
        }
        fn hot_prefix_len(&self, _: &[u32]) -> usize {
            0
        }
    }

    fn engine() -> Bytes {
        Bytes(ModelInfo {
            name: "bytes".into(),
            path: "bytes.gguf".into(),
            fingerprint: ModelFingerprint::from_bytes([0; 32]),
            context_window: 1 << 20,
            kv_bytes_per_token: 0,
            template: state_pack_core::template::ChatTemplate::CHATML,
            kv_dtype: Default::default(),
            device: Default::default(),
        })
    }

    /// A fake llama-server: answers each /completion with the next scripted reply and
    /// records the prompts it was sent.
    async fn fake(replies: Vec<serde_json::Value>) -> (String, Arc<Mutex<Vec<Vec<u32>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let replies = Arc::new(Mutex::new(replies.into_iter()));
        let log = Arc::clone(&seen);
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route(
                "/completion",
                post(move |Json(body): Json<serde_json::Value>| {
                    let prompt: Vec<u32> =
                        serde_json::from_value(body["prompt"].clone()).expect("token ids");
                    log.lock().expect("lock").push(prompt);
                    let next = replies.lock().expect("lock").next();
                    async move {
                        match next {
                            Some(r) => (axum::http::StatusCode::OK, Json(r)),
                            None => (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                Json(json!({"error": "no more replies"})),
                            ),
                        }
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

    fn reply(tokens: &[u32], stop: &str, prompt_n: usize) -> serde_json::Value {
        json!({"content": "out", "tokens": tokens, "stop_type": stop, "timings": {"prompt_n": prompt_n}})
    }

    #[tokio::test]
    async fn sends_the_whole_sequence_and_closes_turns_like_the_pack() {
        let (url, seen) = fake(vec![
            reply(&[1], "limit", 100),
            reply(&[7, 8], "eos", 40),
            reply(&[9], "limit", 30),
        ])
        .await;
        let peer = Peer::connect(&format!("{url}/")).await.expect("connect");
        let e = engine();
        let mut steps = Vec::new();
        let run = peer
            .run(&e, "s", "", 2, &mut |arm, n| steps.push((arm, n)))
            .await
            .expect("run");
        assert_eq!(steps, vec![(Arm::Peer, 1), (Arm::Peer, 2)]);
        assert_eq!(run.step_ms.len(), 2);
        assert_eq!(run.totals.prefilled, 100 + 40 + 30);
        assert_eq!(run.totals.generated, 3);

        let bytes = |s: String| s.bytes().map(u32::from).collect::<Vec<u32>>();
        let t = ChatTemplate::CHATML;
        let base = bytes(demo::base_text(&t, "s").unwrap());
        let delta1 = bytes(demo::observation_delta(&t, 0, false).unwrap());
        // Step 1 stopped on end of turn: the server's tokens lack it, the pack's state has it,
        // and the next observation does not close the turn again.
        let delta2 = bytes(demo::observation_delta(&t, 1, true).unwrap());
        let mut step1 = base.clone();
        step1.extend(&delta1);
        let mut step2 = step1.clone();
        step2.extend([7, 8]);
        step2.extend(bytes(t.end_of_turn().into()));
        step2.extend(&delta2);
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen, vec![base, step1, step2]);
    }

    #[tokio::test]
    async fn errors_name_the_server_and_its_answer() {
        let (url, _) = fake(vec![reply(&[1], "limit", 10)]).await;
        let peer = Peer::connect(&url).await.expect("connect");
        let e = engine();
        let err = peer.run(&e, "s", "", 1, &mut |_, _| {}).await.unwrap_err();
        assert!(
            matches!(&err, BenchError::Peer(m) if m.contains("503") && m.contains("no more replies")),
            "{err}"
        );

        // Nothing listening.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = Peer::connect(&format!("http://{addr}")).await.unwrap_err();
        assert!(err.to_string().contains("no llama-server answers"), "{err}");
    }
}
