//! A scripted engine for fast tests of everything that is not about the model (feature
//! `testing`): the pack's accounting, the ledger, the server's error paths, the agent loop.
//!
//! It is an [`Engine`] with no weights: a byte-level tokenizer (three ChatML special tokens,
//! then one id per byte), replies that are scripted or a function of the prompt, and a
//! least-recently-used set of hot token sequences that accounts reuse the way llama.cpp does
//! (the longest held prefix is reused, at least one prompt token always runs, a sequence that
//! extends a held one replaces it). KV export, failures and latency can be switched on.
//!
//! Nothing it reports is a measurement of a model: it exists so that tests of logic run in
//! milliseconds, offline. Tests of what a model does use the real engines.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    common_prefix, Engine, EngineError, EngineUsage, FinishReason, Generation, ModelInfo, Sampling,
};
use crate::state::ModelFingerprint;

/// The special tokens, ids 0, 1 and 2; every other id is `3 + byte`.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// The end-of-turn token: generation stops when a reply is exhausted and emits it.
pub const END_OF_TURN: u32 = 2;
const BYTE_OFFSET: u32 = SPECIAL_TOKENS.len() as u32;
const KV_MAGIC: &[u8; 8] = b"SCRIPTKV";

/// What the engine answers to a generation.
#[derive(Clone)]
pub enum Reply {
    /// The same text every time.
    Fixed(String),
    /// The next text of the queue each time; when the queue is empty, `""` (an immediate
    /// end of turn).
    Queue(Arc<Mutex<VecDeque<String>>>),
    /// A function of the prompt's text (special tokens included).
    Fn(Arc<dyn Fn(&str) -> String + Send + Sync>),
}

impl Reply {
    /// A queue of replies, answered in order.
    pub fn queue<I: IntoIterator<Item = S>, S: Into<String>>(replies: I) -> Self {
        Reply::Queue(Arc::new(Mutex::new(
            replies.into_iter().map(Into::into).collect(),
        )))
    }

    /// Replies computed from the prompt's text.
    pub fn from_fn(f: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        Reply::Fn(Arc::new(f))
    }

    fn text(&self, prompt: &str) -> String {
        match self {
            Reply::Fixed(t) => t.clone(),
            Reply::Queue(q) => lock(q).pop_front().unwrap_or_default(),
            Reply::Fn(f) => f(prompt),
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Fixed(t) => f.debug_tuple("Fixed").field(t).finish(),
            Reply::Queue(q) => f.debug_tuple("Queue").field(&lock(q).len()).finish(),
            Reply::Fn(_) => f.write_str("Fn(..)"),
        }
    }
}

/// A failure the next engine call returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// [`EngineError::Rejected`] with this message.
    Rejected(String),
    /// [`EngineError::Failed`] with this message.
    Failed(String),
}

impl Fault {
    fn error(self) -> EngineError {
        match self {
            Fault::Rejected(m) => EngineError::Rejected(m),
            Fault::Failed(m) => EngineError::Failed(m),
        }
    }
}

/// How a [`ScriptedEngine`] behaves.
#[derive(Debug, Clone)]
pub struct ScriptedOptions {
    /// Token sequences held hot (least recently used dropped first); `0` holds none, so every
    /// prompt is prefilled in full, like the real engines' naive configuration.
    pub hot_states: usize,
    /// The most tokens one sequence may hold.
    pub context_window: usize,
    /// Whether [`Engine::export_kv`] / [`Engine::import_kv`] work.
    pub kv_export: bool,
    /// Simulated time per engine call (a generation, a prefill, a KV export).
    pub latency: Duration,
    /// Simulated time per token run or generated.
    pub per_token: Duration,
}

impl Default for ScriptedOptions {
    fn default() -> Self {
        Self {
            hot_states: 8,
            context_window: 4096,
            kv_export: false,
            latency: Duration::ZERO,
            per_token: Duration::ZERO,
        }
    }
}

/// Counts of what the engine was asked to do, for assertions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    /// [`Engine::prefill`] calls.
    pub prefills: usize,
    /// [`Engine::generate`] calls.
    pub generates: usize,
    /// Prompt tokens run (not reused) over all calls.
    pub tokens_run: usize,
    /// [`Engine::import_kv`] calls that restored a sequence.
    pub imports: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// Hot sequences, least recently used first.
    hot: VecDeque<Vec<u32>>,
    faults: VecDeque<Fault>,
    calls: Calls,
}

/// The scripted engine. Cheap to clone behind an `Arc`; all state is inside.
#[derive(Debug)]
pub struct ScriptedEngine {
    info: ModelInfo,
    options: ScriptedOptions,
    reply: Reply,
    inner: Mutex<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock leaves consistent data: every critical
    // section below completes its writes before it can panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ScriptedEngine {
    /// An engine answering every generation with `reply`.
    pub fn new(reply: Reply, options: ScriptedOptions) -> Self {
        Self {
            info: ModelInfo {
                name: "scripted".into(),
                path: PathBuf::from("scripted"),
                fingerprint: ModelFingerprint::from_bytes(*b"state-pack scripted engine v1\0\0\0"),
                context_window: options.context_window,
                kv_bytes_per_token: 64,
                template: crate::template::ChatTemplate::CHATML,
                kv_dtype: super::KvDType::Float32,
                device: super::Device::Cpu,
            },
            options,
            reply,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// An engine that always answers `text`, with the default options.
    pub fn replying(text: &str) -> Self {
        Self::new(Reply::Fixed(text.into()), ScriptedOptions::default())
    }

    /// Makes the next engine call (prefill or generate) fail with `fault`; several queue up.
    pub fn fail_next(&self, fault: Fault) {
        lock(&self.inner).faults.push_back(fault);
    }

    /// What the engine has been asked to do so far.
    pub fn calls(&self) -> Calls {
        lock(&self.inner).calls
    }

    /// Forgets every hot sequence, as a restarted engine would.
    pub fn evict_all(&self) {
        lock(&self.inner).hot.clear();
    }

    /// The token ids of `text`: specials first, then one id per byte.
    pub fn encode(text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len());
        let mut rest = text;
        'outer: while !rest.is_empty() {
            for (id, special) in SPECIAL_TOKENS.iter().enumerate() {
                if let Some(after) = rest.strip_prefix(special) {
                    out.push(id as u32);
                    rest = after;
                    continue 'outer;
                }
            }
            let Some(c) = rest.chars().next() else { break };
            let mut buf = [0u8; 4];
            out.extend(
                c.encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| BYTE_OFFSET + u32::from(b)),
            );
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    /// The text of `tokens` (invalid UTF-8 replaced), `None` if an id is out of range.
    pub fn decode(tokens: &[u32]) -> Option<String> {
        let mut bytes = Vec::with_capacity(tokens.len());
        for &t in tokens {
            match t {
                t if t < BYTE_OFFSET => {
                    bytes.extend_from_slice(SPECIAL_TOKENS[t as usize].as_bytes())
                }
                t if t < BYTE_OFFSET + 256 => bytes.push((t - BYTE_OFFSET) as u8),
                _ => return None,
            }
        }
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn check_ids(tokens: &[u32]) -> Result<(), EngineError> {
        match tokens.iter().find(|&&t| t >= BYTE_OFFSET + 256) {
            Some(t) => Err(EngineError::Rejected(format!(
                "token id {t} is outside the scripted vocabulary"
            ))),
            None => Ok(()),
        }
    }

    /// Accounts one prompt: how much of it is reused, and takes any queued fault.
    fn begin(&self, prompt: &[u32], generate: bool) -> Result<(usize, usize), EngineError> {
        Self::check_ids(prompt)?;
        let mut inner = lock(&self.inner);
        if let Some(f) = inner.faults.pop_front() {
            return Err(f.error());
        }
        let held = inner
            .hot
            .iter()
            .map(|e| common_prefix(e, prompt))
            .max()
            .unwrap_or(0);
        // As llama.cpp: the last prompt token always runs, for its logits.
        let reused = held.min(prompt.len().saturating_sub(1));
        let run = prompt.len() - reused;
        if generate {
            inner.calls.generates += 1;
        } else {
            inner.calls.prefills += 1;
        }
        inner.calls.tokens_run += run;
        Ok((reused, run))
    }

    /// Holds `tokens` hot: replaces a held sequence it extends, else adds it, dropping the
    /// least recently used beyond capacity.
    fn hold(&self, tokens: Vec<u32>) {
        if self.options.hot_states == 0 || tokens.is_empty() {
            return;
        }
        let mut inner = lock(&self.inner);
        if let Some(i) = inner
            .hot
            .iter()
            .position(|e| e.len() <= tokens.len() && tokens.starts_with(e))
        {
            inner.hot.remove(i);
        }
        inner.hot.push_back(tokens);
        while inner.hot.len() > self.options.hot_states {
            inner.hot.pop_front();
        }
    }

    async fn simulate(&self, tokens: usize) -> Duration {
        let started = Instant::now();
        let d = self.options.latency + self.options.per_token * tokens as u32;
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        started.elapsed()
    }
}

#[async_trait]
impl Engine for ScriptedEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn engine_name(&self) -> &'static str {
        "scripted"
    }

    async fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(Self::encode(text))
    }

    async fn detokenize(&self, tokens: &[u32]) -> Result<String, EngineError> {
        Self::decode(tokens).ok_or_else(|| {
            EngineError::Rejected("a token id is outside the scripted vocabulary".into())
        })
    }

    async fn prefill(&self, prompt: &[u32]) -> Result<EngineUsage, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::Rejected("empty prompt".into()));
        }
        if prompt.len() > self.info.context_window {
            return Err(EngineError::Rejected(format!(
                "{} prompt tokens exceed the context window of {}",
                prompt.len(),
                self.info.context_window
            )));
        }
        let started = Instant::now();
        let (reused, run) = self.begin(prompt, false)?;
        let prefill_time = self.simulate(run).await;
        self.hold(prompt.to_vec());
        Ok(EngineUsage {
            prompt_tokens: prompt.len(),
            prefilled: run,
            reused,
            generated: 0,
            prefill_time,
            decode_time: Duration::ZERO,
            wall: started.elapsed(),
            unreported: 0,
            retokenized: false,
        })
    }

    async fn generate(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
    ) -> Result<Generation, EngineError> {
        sampling.check(prompt, self.info.context_window)?;
        let started = Instant::now();
        let (reused, run) = self.begin(prompt, true)?;
        let prefill_time = self.simulate(run).await;
        let prompt_text = Self::decode(prompt).unwrap_or_default();
        let reply = Self::encode(&self.reply.text(&prompt_text));
        let (mut tokens, finish) = if reply.len() >= sampling.max_tokens {
            (reply[..sampling.max_tokens].to_vec(), FinishReason::Length)
        } else {
            (reply, FinishReason::Stop)
        };
        let text = Self::decode(&tokens).unwrap_or_default();
        if finish == FinishReason::Stop {
            tokens.push(END_OF_TURN);
        }
        let decode_time = self.simulate(tokens.len()).await;
        // The last sampled token was never run through the model: its KV is not held.
        let mut held = prompt.to_vec();
        held.extend_from_slice(&tokens[..tokens.len().saturating_sub(1)]);
        self.hold(held);
        Ok(Generation {
            usage: EngineUsage {
                prompt_tokens: prompt.len(),
                prefilled: run,
                reused,
                generated: tokens.len(),
                prefill_time,
                decode_time,
                wall: started.elapsed(),
                unreported: 0,
                retokenized: false,
            },
            tokens,
            text,
            finish,
        })
    }

    fn hot_prefix_len(&self, tokens: &[u32]) -> usize {
        let mut inner = lock(&self.inner);
        let best = inner
            .hot
            .iter()
            .enumerate()
            .map(|(i, e)| (common_prefix(e, tokens), i))
            .max();
        match best {
            Some((n, i)) if n > 0 => {
                // A lookup is a use: move it to the most recently used end.
                if let Some(e) = inner.hot.remove(i) {
                    inner.hot.push_back(e);
                }
                n
            }
            _ => 0,
        }
    }

    fn hot_entries(&self) -> usize {
        lock(&self.inner).hot.len()
    }

    fn hot_tokens(&self) -> usize {
        let inner = lock(&self.inner);
        let held: Vec<&[u32]> = inner.hot.iter().map(Vec::as_slice).collect();
        super::distinct_prefix_tokens(&held)
    }

    fn kv_export(&self) -> bool {
        self.options.kv_export
    }

    async fn export_kv(&self, tokens: &[u32], from: usize) -> Result<Option<Vec<u8>>, EngineError> {
        if !self.options.kv_export || from > tokens.len() {
            return Ok(None);
        }
        let held = lock(&self.inner)
            .hot
            .iter()
            .any(|e| e.len() >= tokens.len() && e.starts_with(tokens));
        if !held {
            return Ok(None);
        }
        self.simulate(0).await;
        let mut out = KV_MAGIC.to_vec();
        out.extend_from_slice(&(from as u64).to_le_bytes());
        out.extend(tokens[from..].iter().flat_map(|t| t.to_le_bytes()));
        Ok(Some(out))
    }

    async fn import_kv(&self, tokens: &[u32], chunks: Vec<Vec<u8>>) -> Result<bool, EngineError> {
        if !self.options.kv_export {
            return Ok(false);
        }
        let mut restored = Vec::with_capacity(tokens.len());
        for chunk in &chunks {
            let Some(body) = chunk.strip_prefix(KV_MAGIC.as_slice()) else {
                return Ok(false);
            };
            let (from, ids) = body.split_at(8.min(body.len()));
            let from = u64::from_le_bytes(from.try_into().unwrap_or([0xff; 8]));
            if from != restored.len() as u64 || ids.len() % 4 != 0 {
                return Ok(false);
            }
            restored.extend(
                ids.chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        if restored != tokens {
            return Ok(false);
        }
        lock(&self.inner).calls.imports += 1;
        self.hold(restored);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tokenizer_round_trips_specials_and_utf8() {
        let text = "<|im_start|>user\nnaïve 🦀<|im_end|>";
        let ids = ScriptedEngine::encode(text);
        assert_eq!(ids[0], 1);
        assert_eq!(*ids.last().unwrap(), END_OF_TURN);
        assert_eq!(ScriptedEngine::decode(&ids).unwrap(), text);
        assert_eq!(ScriptedEngine::decode(&[9999]), None);
    }

    #[tokio::test]
    async fn reuse_is_the_longest_held_prefix_and_the_last_token_always_runs() {
        let e = ScriptedEngine::replying("ok");
        let a = ScriptedEngine::encode("hello world");
        let u = e.prefill(&a).await.unwrap();
        assert_eq!((u.prefilled, u.reused), (a.len(), 0));
        // The same prompt again: everything but the last token is reused.
        let u = e.prefill(&a).await.unwrap();
        assert_eq!((u.prefilled, u.reused), (1, a.len() - 1));
        let mut b = a.clone();
        b.extend(ScriptedEngine::encode("!!"));
        let g = e.generate(&b, &Sampling::greedy(8)).await.unwrap();
        assert_eq!((g.usage.prefilled, g.usage.reused), (2, a.len()));
        assert_eq!(g.text, "ok");
        assert_eq!(g.finish, FinishReason::Stop);
        assert_eq!(g.tokens.last(), Some(&END_OF_TURN));
        // It now holds the prompt and the reply but not the end-of-turn token.
        let mut c = b.clone();
        c.extend(&g.tokens);
        assert_eq!(e.hot_prefix_len(&c), c.len() - 1);
        assert_eq!(
            e.hot_entries(),
            1,
            "an extension replaces the sequence it extends"
        );
    }

    #[tokio::test]
    async fn the_least_recently_used_sequence_goes_first() {
        let e = ScriptedEngine::new(
            Reply::Fixed(String::new()),
            ScriptedOptions {
                hot_states: 2,
                ..ScriptedOptions::default()
            },
        );
        let [a, b, c] = ["aaa", "bbb", "ccc"].map(ScriptedEngine::encode);
        e.prefill(&a).await.unwrap();
        e.prefill(&b).await.unwrap();
        assert_eq!(e.hot_prefix_len(&a), 3, "a is now the most recently used");
        e.prefill(&c).await.unwrap();
        assert_eq!(e.hot_prefix_len(&b), 0, "b was dropped");
        assert_eq!(e.hot_prefix_len(&a), 3);
    }

    #[tokio::test]
    async fn faults_lengths_and_kv_round_trips() {
        let e = ScriptedEngine::new(
            Reply::queue(["first", "second reply"]),
            ScriptedOptions {
                kv_export: true,
                ..ScriptedOptions::default()
            },
        );
        let p = ScriptedEngine::encode("prompt");
        e.fail_next(Fault::Failed("boom".into()));
        assert!(matches!(e.prefill(&p).await, Err(EngineError::Failed(m)) if m == "boom"));
        assert_eq!(e.calls().prefills, 0, "a failed call did nothing");
        let g = e.generate(&p, &Sampling::greedy(3)).await.unwrap();
        assert_eq!((g.text.as_str(), g.finish), ("fir", FinishReason::Length));
        assert_eq!(g.tokens.len(), 3);
        let g = e.generate(&p, &Sampling::greedy(64)).await.unwrap();
        assert_eq!(g.text, "second reply");

        let kv = e.export_kv(&p, 2).await.unwrap().expect("held");
        let head = e.export_kv(&p[..2], 0).await.unwrap().expect("held");
        e.evict_all();
        assert_eq!(e.hot_prefix_len(&p), 0);
        assert!(
            !e.import_kv(&p, vec![kv.clone()]).await.unwrap(),
            "a gap at 0..2"
        );
        assert!(e.import_kv(&p, vec![head, kv]).await.unwrap());
        assert_eq!(e.hot_prefix_len(&p), p.len());
        assert_eq!(e.calls().imports, 1);
    }
}
