//! `stream: true`: the answer as server-sent events, text as the engine samples it.
//!
//! The request queues like any other; once it holds the engine the response starts, and
//! each sampled token's text is sent as a chunk (the newest token is held back until the
//! next one shows it is not the end-of-turn marker, and a token that ends inside a UTF-8
//! character waits for the rest). A reply under a tool grammar is sent as one chunk when it
//! is complete, as `tool_calls` or `content`. The last chunk carries `finish_reason` and the
//! `state_pack` object with the receipts; with `stream_options.include_usage` one more
//! chunk carries `usage`; then `data: [DONE]`. A failure after the response started is an
//! `{"error": ...}` event. The work runs to its end (and its receipts are written) even if
//! the client goes away.

use std::convert::Infallible;

use axum::response::sse::{Event, Sse};
use futures_util::stream;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::*;

pub(super) async fn respond(
    s: Arc<AppState>,
    client: Client,
    p: Prepared,
    kind: Kind,
) -> Result<Response, ApiError> {
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), ApiError>>();
    let (events, rx) = mpsc::unbounded_channel::<Event>();
    tokio::spawn(run(s, client, p, kind, ready_tx, events));
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(ApiError::internal("the stream's task ended", &"no answer")),
    }
    let body = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(body).into_response())
}

async fn run(
    s: Arc<AppState>,
    client: Client,
    p: Prepared,
    kind: Kind,
    ready: oneshot::Sender<Result<(), ApiError>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let replayed = match s.pack.replay_prompt(&p.prompt, &p.sampling) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let _permit = match replayed {
        Some(_) => None,
        None => match s.engine(&client).await {
            Ok((permit, _)) => Some(permit),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        },
    };
    if ready.send(Ok(())).is_err() {
        return;
    }
    let chunk = Chunker {
        id: format!("{}-{}", kind.id_prefix(), now_unix()),
        created: now_unix(),
        model: s.model_id().to_string(),
        kind,
    };
    let send = |v: serde_json::Value| {
        let _ = events.send(Event::default().data(v.to_string()));
    };
    if kind == Kind::Chat {
        send(chunk.delta(json!({"role": "assistant", "content": ""}), None));
    }
    let (sink, mut ids) = mpsc::unbounded_channel::<u32>();
    let work = async {
        match replayed {
            Some(done) => {
                for t in &done.inference.generated {
                    let _ = sink.send(*t);
                }
                drop(sink);
                Ok(done)
            }
            None => {
                s.timed(async {
                    Ok(s.pack
                        .continue_prompt(&p.prompt, p.base_len, &p.sampling, Some(sink))
                        .await?)
                })
                .await
            }
        }
    };
    let engine = s.pack.engine().clone();
    let forward = async {
        let mut sampled = Vec::new();
        let mut shown = String::new();
        while let Some(t) = ids.recv().await {
            sampled.push(t);
            if p.tools {
                continue;
            }
            let Ok(text) = engine.detokenize(&sampled[..sampled.len() - 1]).await else {
                continue;
            };
            if text.ends_with('\u{FFFD}') || text.len() <= shown.len() {
                continue;
            }
            if let Some(delta) = text.strip_prefix(shown.as_str()) {
                send(chunk.text(delta));
                shown = text;
            }
        }
        shown
    };
    let (result, shown) = tokio::join!(work, forward);
    let done = match result {
        Ok(done) => done,
        Err(e) => {
            send(
                json!({"error": {"message": e.message, "type": e.code.kind(), "code": e.code.as_str()}}),
            );
            send_done(&events);
            return;
        }
    };
    s.count(&client, &done, p.prompt.len());
    let info = match s.info(&done) {
        Ok(i) => i,
        Err(e) => {
            send(
                json!({"error": {"message": e.message, "type": e.code.kind(), "code": e.code.as_str()}}),
            );
            send_done(&events);
            return;
        }
    };
    let reply = s.reply(&done, p.tools);
    let finish = finish_reason(done.inference.finish, &reply);
    let last = match (&reply.tool_calls, p.tools) {
        (Some(calls), _) => {
            let calls: Vec<_> = calls
                .iter()
                .enumerate()
                .map(|(i, c)| json!({"index": i, "id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}))
                .collect();
            chunk.delta(json!({"tool_calls": calls}), Some(finish))
        }
        (None, true) => chunk.delta(json!({"content": reply.content}), Some(finish)),
        (None, false) => {
            let full = &done.inference.text;
            let rest = match full.strip_prefix(shown.as_str()) {
                Some(rest) => rest,
                None => {
                    tracing::warn!("streamed text is not a prefix of the answer's text");
                    ""
                }
            };
            match kind {
                Kind::Chat => chunk.delta(json!({"content": rest}), Some(finish)),
                Kind::Text => chunk.finish_text(rest, finish),
            }
        }
    };
    let mut last = last;
    last["state_pack"] = serde_json::to_value(&info).unwrap_or_default();
    send(last);
    if p.include_usage {
        let mut u = chunk.empty();
        u["usage"] = serde_json::to_value(usage(&done, p.prompt.len())).unwrap_or_default();
        send(u);
    }
    send_done(&events);
}

fn send_done(events: &mpsc::UnboundedSender<Event>) {
    let _ = events.send(Event::default().data("[DONE]"));
}

impl Kind {
    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        }
    }
}

/// Chunk bodies of one stream.
struct Chunker {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Chunker {
    fn base(&self, choices: serde_json::Value) -> serde_json::Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices})
    }

    fn delta(&self, delta: serde_json::Value, finish: Option<&str>) -> serde_json::Value {
        self.base(json!([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]))
    }

    fn text(&self, text: &str) -> serde_json::Value {
        match self.kind {
            Kind::Chat => self.delta(json!({"content": text}), None),
            Kind::Text => self
                .base(json!([{"index": 0, "text": text, "finish_reason": null, "logprobs": null}])),
        }
    }

    fn finish_text(&self, text: &str, finish: &str) -> serde_json::Value {
        self.base(json!([{"index": 0, "text": text, "finish_reason": finish, "logprobs": null}]))
    }

    fn empty(&self) -> serde_json::Value {
        self.base(json!([]))
    }
}
