//! The OpenAI-compatible endpoints: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models`.
//!
//! OpenAI clients are stateless: every request carries the whole conversation. The server
//! renders the messages turn by turn with the model's chat template ([`render`]), tokenizes
//! each piece on its own, finds the longest stored state the prompt begins with (the prefix
//! index) and continues from it ([`StatePack::continue_prompt`]), so a client re-sending its
//! history pays only for its new messages, and every answer has its signed receipts. Tools
//! and structured output are decoded under grammars ([`tools`]). Same authentication,
//! queue, limits and metrics as the native protocol; errors have OpenAI's shape
//! (`{"error": {"message", "type", "code"}}`).
//!
//! [`StatePack::continue_prompt`]: state_pack_core::pack::StatePack::continue_prompt

pub mod render;
mod stream;
pub mod tools;
pub mod wire;

use axum::http::{HeaderMap, HeaderName};
use serde_json::Value;

use self::tools::{parse_action, Reply, ToolMode};
use self::wire::*;
use super::*;
use state_pack_core::engine::{FinishReason, Grammar, Sampling};
use state_pack_core::pack::Continuation;

/// A request ready for the engine: its prompt tokens and how to generate.
pub(crate) struct Prepared {
    prompt: Vec<u32>,
    /// Tokens of the first turn (a new conversation's base state).
    base_len: usize,
    sampling: Sampling,
    /// How a reply is read: as text, or as an action when tools are declared.
    tools: bool,
    stream: bool,
    include_usage: bool,
}

pub(crate) async fn models(State(s): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: s.model_id().to_string(),
            object: "model",
            created: s.started_unix,
            owned_by: "state-pack",
        }],
    })
}

pub(crate) async fn chat_completions(
    State(s): State<Arc<AppState>>,
    axum::Extension(client): axum::Extension<Client>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    s.check_model(&req.model)?;
    let template = s.pack.engine().info().template;
    let mode = ToolMode::from_request(req.tools.as_deref(), req.tool_choice.as_ref())?;
    let grammar = if mode.is_active() {
        if req
            .response_format
            .as_ref()
            .is_some_and(|f| f.kind != "text")
        {
            return Err(ApiError::invalid(
                "response_format with tools is not supported: declare tools or a response format"
                    .into(),
            ));
        }
        mode.grammar(
            template.end_of_turn(),
            req.parallel_tool_calls != Some(false),
        )
    } else {
        tools::response_grammar(req.response_format.as_ref(), template.end_of_turn())?
    };
    let rendered = render::render(template, &req.messages, &mode)?;
    let (prompt, base_len) = s.tokenize_pieces(&rendered).await?;
    let prepared = s.prepare(&req.common, prompt, base_len, grammar, mode.is_active())?;
    s.answer(client, prepared, Kind::Chat).await
}

pub(crate) async fn completions(
    State(s): State<Arc<AppState>>,
    axum::Extension(client): axum::Extension<Client>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    s.check_model(&req.model)?;
    if req.echo == Some(true) || req.suffix.is_some() || req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid(
            "echo, suffix and best_of are not supported".into(),
        ));
    }
    let prompt = match &req.prompt {
        Value::Array(items) if items.len() == 1 && !items[0].is_number() => &items[0],
        other => other,
    };
    let tokens = match prompt {
        Value::String(text) => s.tokenize_prompt(text).await?,
        Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64) => {
            let ids: Vec<u32> = ids
                .iter()
                .filter_map(Value::as_u64)
                .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
                .collect();
            s.pack.engine().detokenize(&ids).await.map_err(|e| {
                ApiError::invalid(format!(
                    "prompt holds token ids this model does not have: {e}"
                ))
            })?;
            ids
        }
        _ => {
            return Err(ApiError::invalid(
                "prompt must be a string, a list of token ids, or a list holding one of those"
                    .into(),
            ))
        }
    };
    let base_len = tokens.len().saturating_sub(1);
    let prepared = s.prepare(&req.common, tokens, base_len, None, false)?;
    s.answer(client, prepared, Kind::Text).await
}

/// Which endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Text,
}

impl AppState {
    /// The id clients name the model by.
    pub(crate) fn model_id(&self) -> &str {
        self.config
            .model_id
            .as_deref()
            .unwrap_or(&self.pack.engine().info().name)
    }

    fn check_model(&self, asked: &str) -> Result<(), ApiError> {
        let info = self.pack.engine().info();
        if asked == self.model_id() || asked == info.name || asked == info.fingerprint.to_hex() {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::UnknownModel,
            format!(
                "the model {asked:?} is not served here: this server runs {:?} (GET /v1/models)",
                self.model_id()
            ),
        ))
    }

    /// A rendered conversation's tokens, each piece tokenized on its own, and how many of
    /// them are its first turn. A reply the server generated is replaced by the ids the model
    /// sampled for it ([`StatePack::sampled_reply`]), so the history matches what was stored
    /// even where re-tokenizing the reply's text would split it otherwise.
    ///
    /// [`StatePack::sampled_reply`]: state_pack_core::pack::StatePack::sampled_reply
    async fn tokenize_pieces(
        &self,
        rendered: &render::Rendered,
    ) -> Result<(Vec<u32>, usize), ApiError> {
        let end_of_turn = self
            .tokenize_prompt(self.pack.engine().info().template.end_of_turn())
            .await?;
        let mut prompt = Vec::new();
        let mut base_len = 0;
        for (i, piece) in rendered.pieces.iter().enumerate() {
            let sampled = if piece.reply {
                self.pack.sampled_reply(&prompt, &piece.text)?
            } else {
                None
            };
            match sampled {
                Some(mut ids) => {
                    // The end-of-turn marker the model sampled is the next piece's.
                    if end_of_turn.len() == 1 && ids.last() == end_of_turn.first() {
                        ids.pop();
                    }
                    prompt.extend(ids);
                }
                None => prompt.extend(self.tokenize_prompt(&piece.text).await?),
            }
            if i + 1 == rendered.base_pieces {
                base_len = prompt.len();
            }
        }
        Ok((prompt, base_len))
    }

    async fn tokenize_prompt(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        Ok(self
            .pack
            .engine()
            .tokenize(text)
            .await
            .map_err(state_pack_core::pack::PackError::from)?)
    }

    /// The request's parameters as the engine's, refusing what cannot be honoured.
    fn prepare(
        &self,
        p: &CommonParams,
        prompt: Vec<u32>,
        base_len: usize,
        grammar: Option<Grammar>,
        tools: bool,
    ) -> Result<Prepared, ApiError> {
        if p.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(
                "n must be 1: one answer per request".into(),
            ));
        }
        let stop_given = match &p.stop {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if stop_given {
            return Err(ApiError::invalid(
                "stop sequences are not supported: generation ends at the model's end-of-turn token or max_tokens".into(),
            ));
        }
        if p.logprobs == Some(true) {
            return Err(ApiError::invalid("logprobs are not supported".into()));
        }
        if p.presence_penalty.is_some_and(|x| x != 0.0)
            || p.frequency_penalty.is_some_and(|x| x != 0.0)
            || p.logit_bias.as_ref().is_some_and(|b| !b.is_empty())
        {
            return Err(ApiError::invalid(
                "presence_penalty, frequency_penalty and logit_bias are not supported".into(),
            ));
        }
        let limit = self.config.max_new_tokens;
        let window = self.pack.engine().info().context_window;
        let room = window.saturating_sub(prompt.len());
        if room == 0 {
            return Err(state_pack_core::pack::PackError::ContextOverflow {
                needed: prompt.len() + 1,
                window,
            }
            .into());
        }
        let max_tokens = p
            .max_completion_tokens
            .or(p.max_tokens)
            .unwrap_or_else(|| limit.min(room));
        let (temperature, top_p) =
            crate::api::check_sampling("", max_tokens, limit, p.temperature, p.top_p)?;
        if prompt.len() + max_tokens > window {
            return Err(state_pack_core::pack::PackError::ContextOverflow {
                needed: prompt.len() + max_tokens,
                window,
            }
            .into());
        }
        // Greedy decoding is the same whatever the seed or nucleus.
        let sampling = if temperature == 0.0 {
            Sampling::greedy(max_tokens)
        } else {
            Sampling::seeded(p.seed.unwrap_or(0), temperature, top_p, max_tokens)
        };
        let sampling = match grammar {
            None => sampling,
            Some(_) if temperature != 0.0 => {
                return Err(ApiError::invalid(
                    "tools and response_format decode greedily: send temperature 0 (or none)"
                        .into(),
                ))
            }
            Some(g) => sampling.constrained(g),
        };
        Ok(Prepared {
            prompt,
            base_len,
            sampling,
            tools,
            stream: p.stream == Some(true),
            include_usage: p.stream_options.as_ref().is_some_and(|o| o.include_usage),
        })
    }

    /// Runs a prepared request: from the store if it was answered before (no queue), else
    /// through the queue and the engine.
    async fn answer(
        self: Arc<Self>,
        client: Client,
        p: Prepared,
        kind: Kind,
    ) -> Result<Response, ApiError> {
        if p.stream {
            return stream::respond(self, client, p, kind).await;
        }
        let done = match self.pack.replay_prompt(&p.prompt, &p.sampling)? {
            Some(done) => done,
            None => {
                let (_permit, _queued) = self.engine(&client).await?;
                self.timed(async {
                    Ok(self
                        .pack
                        .continue_prompt(&p.prompt, p.base_len, &p.sampling, None)
                        .await?)
                })
                .await?
            }
        };
        self.count(&client, &done, p.prompt.len());
        let info = self.info(&done)?;
        let usage = usage(&done, p.prompt.len());
        let headers = headers(&info, &usage);
        let id = info
            .receipts
            .last()
            .map_or("", |r| &r.hash[..24])
            .to_string();
        let finish = done.inference.finish;
        let body = match kind {
            Kind::Chat => {
                let reply = self.reply(&done, p.tools);
                Json(ChatCompletion {
                    id: format!("chatcmpl-{id}"),
                    object: "chat.completion",
                    created: now_unix(),
                    model: self.model_id().to_string(),
                    choices: vec![ChatChoice {
                        index: 0,
                        finish_reason: finish_reason(finish, &reply),
                        message: AssistantMessage {
                            role: "assistant",
                            content: reply.content,
                            tool_calls: reply.tool_calls,
                        },
                        logprobs: None,
                    }],
                    usage,
                    system_fingerprint: format!(
                        "fp_{}",
                        self.pack.engine().info().fingerprint.short()
                    ),
                    state_pack: info,
                })
                .into_response()
            }
            Kind::Text => Json(TextCompletion {
                id: format!("cmpl-{id}"),
                object: "text_completion",
                created: now_unix(),
                model: self.model_id().to_string(),
                choices: vec![TextChoice {
                    text: done.inference.text.clone(),
                    index: 0,
                    logprobs: None,
                    finish_reason: finish_reason(finish, &Reply::default()),
                }],
                usage,
                state_pack: info,
            })
            .into_response(),
        };
        let mut response = body;
        response.headers_mut().extend(headers);
        Ok(response)
    }

    /// The reply as OpenAI shapes it.
    fn reply(&self, done: &Continuation, tools: bool) -> Reply {
        if tools {
            parse_action(
                &done.inference.text,
                &format!("call_{}", done.inference.report.output.short()),
            )
        } else {
            Reply {
                content: Some(done.inference.text.clone()),
                tool_calls: None,
            }
        }
    }

    /// state-pack's figures and the request's receipts.
    fn info(&self, done: &Continuation) -> Result<StatePackInfo, ApiError> {
        let r = &done.inference.report;
        let mut receipts = Vec::new();
        if let Some(base) = &done.base {
            receipts.push(self.receipt(base.receipt.seq)?);
        }
        receipts.push(self.receipt(r.receipt.seq)?);
        Ok(StatePackInfo {
            state: r.output,
            matched_state: done.matched.map(|(h, _)| h),
            matched_tokens: done.matched.map_or(0, |(_, n)| n),
            prefilled: done.prefilled(),
            tokens: r.tokens,
            engine_called: r.engine_called,
            replay_of: r.replay_of,
            receipts,
        })
    }

    /// Counts a request's operations in the metrics and the dashboard.
    fn count(&self, client: &Client, done: &Continuation, prompt_tokens: usize) {
        if let Some(base) = &done.base {
            self.metrics.operation(base);
        }
        self.metrics.operation(&done.inference.report);
        let prompt = prompt_tokens as u64;
        self.activity.request(
            &client.0,
            now_unix(),
            crate::activity::Counts {
                requests: 1,
                prompt_tokens: prompt,
                prefilled: done.prefilled(),
                cached: prompt.saturating_sub(done.prefilled()),
                restored: done.inference.report.tokens.restored
                    + done.base.as_ref().map_or(0, |b| b.tokens.restored),
                generated: done.inference.generated.len() as u64,
            },
        );
    }
}

fn finish_reason(finish: FinishReason, reply: &Reply) -> &'static str {
    match (finish, &reply.tool_calls) {
        (_, Some(_)) => "tool_calls",
        (FinishReason::Length, None) => "length",
        (FinishReason::Stop, None) => "stop",
    }
}

fn usage(done: &Continuation, prompt_tokens: usize) -> Usage {
    let prompt_tokens = prompt_tokens as u64;
    let completion_tokens = done.inference.generated.len() as u64;
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
        prompt_tokens_details: PromptTokensDetails {
            cached_tokens: prompt_tokens.saturating_sub(done.prefilled()),
        },
    }
}

/// The `x-state-pack-*` headers: what LangChain and other clients that drop unknown body
/// fields can still read.
fn headers(info: &StatePackInfo, usage: &Usage) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    if let Some(r) = info.receipts.last() {
        put("x-state-pack-receipt", format!("{}:{}", r.seq, r.hash));
    }
    put("x-state-pack-state", info.state.to_hex());
    put(
        "x-state-pack-matched-tokens",
        info.matched_tokens.to_string(),
    );
    put("x-state-pack-prefilled-tokens", info.prefilled.to_string());
    put(
        "x-state-pack-cached-tokens",
        usage.prompt_tokens_details.cached_tokens.to_string(),
    );
    h
}

fn now_unix() -> u64 {
    unix_now()
}
