//! The servers' JSON, read into one shape. Every field is checked for its type: a server
//! that answers something else gets a one-line error naming the field, never a guess.

use std::time::Duration;

use serde_json::Value;

/// A model as `/v1/models` lists it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Listed {
    pub id: String,
    /// llama-server's `meta.n_vocab`.
    pub n_vocab: Option<usize>,
    /// llama-server's `meta.n_ctx`, or vLLM's `max_model_len`.
    pub n_ctx: Option<usize>,
}

/// What a completion request answered, from either API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// The model that answered, if the server said.
    pub model: Option<String>,
    /// The generated text (without a final end-of-generation token).
    pub text: String,
    /// The ids the server sampled, if it returned them.
    pub tokens: Option<Vec<u32>>,
    /// The server stopped on an end-of-generation token (or a stop word), not at the limit.
    pub stopped: bool,
    /// Prompt tokens the server took from its cache, if it reported a count.
    pub cached: Option<usize>,
    /// Prompt tokens it ran through the model, if it reported them.
    pub prompt_evaluated: Option<usize>,
    /// The server's time on the prompt, if reported.
    pub prompt_time: Option<Duration>,
    /// The server's time generating, if reported.
    pub decode_time: Option<Duration>,
    /// The prompt tokens the server counted (`usage.prompt_tokens`), if reported.
    pub prompt_tokens: Option<usize>,
}

fn count(v: &Value, field: &str) -> Result<Option<usize>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| format!("`{field}` is not a count: {x}")),
    }
}

fn millis(v: &Value, field: &str) -> Result<Option<Duration>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map(|ms| Some(Duration::from_secs_f64(ms / 1e3)))
            .ok_or_else(|| format!("`{field}` is not a duration in ms: {x}")),
    }
}

fn ids(v: &Value, field: &str) -> Result<Option<Vec<u32>>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or_else(|| format!("`{field}` holds {t}, not a token id"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(x) => Err(format!("`{field}` is not a list of token ids: {x}")),
    }
}

fn string(v: &Value, field: &str) -> Result<Option<String>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(x) => Err(format!("`{field}` is not a string: {x}")),
    }
}

/// The models of a `/v1/models` answer.
pub(crate) fn models(v: &Value) -> Result<Vec<Listed>, String> {
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or("/v1/models has no `data` list")?;
    data.iter()
        .map(|m| {
            let id = string(m, "id")?.ok_or("a model in /v1/models has no `id`")?;
            let meta = m.get("meta").cloned().unwrap_or(Value::Null);
            Ok(Listed {
                id,
                n_vocab: count(&meta, "n_vocab")?,
                n_ctx: count(&meta, "n_ctx")?.or(count(m, "max_model_len")?),
            })
        })
        .collect()
}

/// llama-server's context per slot (`/props`: `default_generation_settings.n_ctx`).
pub(crate) fn slot_context(props: &Value) -> Option<usize> {
    props
        .get("default_generation_settings")
        .and_then(|s| s.get("n_ctx"))
        .and_then(Value::as_u64)
        .map(|n| n as usize)
}

/// llama-server's parallel slots (`/props`: `total_slots`).
pub(crate) fn slots(props: &Value) -> Option<usize> {
    props
        .get("total_slots")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
}

/// An answer of llama-server's `/completion`.
pub(crate) fn llama_answer(v: &Value) -> Result<Answer, String> {
    let timings = v.get("timings").cloned().unwrap_or(Value::Null);
    let stop_type = string(v, "stop_type")?;
    Ok(Answer {
        model: string(v, "model")?,
        text: string(v, "content")?.unwrap_or_default(),
        tokens: ids(v, "tokens")?,
        stopped: matches!(stop_type.as_deref(), Some("eos" | "word")),
        cached: count(&timings, "cache_n")?,
        prompt_evaluated: count(&timings, "prompt_n")?,
        prompt_time: millis(&timings, "prompt_ms")?,
        decode_time: millis(&timings, "predicted_ms")?,
        prompt_tokens: None,
    })
}

fn first_choice(v: &Value) -> Result<&Value, String> {
    v.get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| "the answer has no `choices`".to_string())
}

/// An answer of `/v1/completions`: the OpenAI shape, with llama-server's `timings` and
/// vLLM's `token_ids` where present.
pub(crate) fn openai_answer(v: &Value) -> Result<Answer, String> {
    let choice = first_choice(v)?;
    let text = string(choice, "text")?.ok_or("the choice has no `text`")?;
    openai_shaped(v, choice, text, ids(choice, "token_ids")?)
}

/// An answer of `/v1/chat/completions`: its message's text, never ids.
pub(crate) fn chat_answer(v: &Value) -> Result<Answer, String> {
    let choice = first_choice(v)?;
    let message = choice.get("message").ok_or("the choice has no `message`")?;
    // A message without content (a tool call) has no text.
    let text = string(message, "content")?.unwrap_or_default();
    openai_shaped(v, choice, text, None)
}

/// The usage, timings and finish of an OpenAI-shaped answer whose `choice` said `text`.
fn openai_shaped(
    v: &Value,
    choice: &Value,
    text: String,
    tokens: Option<Vec<u32>>,
) -> Result<Answer, String> {
    let usage = v.get("usage").cloned().unwrap_or(Value::Null);
    let details = usage
        .get("prompt_tokens_details")
        .cloned()
        .unwrap_or(Value::Null);
    let cached = count(&details, "cached_tokens")?;
    let prompt = count(&usage, "prompt_tokens")?;
    let timings = v.get("timings").cloned().unwrap_or(Value::Null);
    Ok(Answer {
        model: string(v, "model")?,
        text,
        tokens,
        stopped: string(choice, "finish_reason")?.as_deref() == Some("stop"),
        cached,
        prompt_evaluated: match (count(&timings, "prompt_n")?, prompt, cached) {
            (Some(n), _, _) => Some(n),
            (None, Some(p), Some(c)) => Some(p.saturating_sub(c)),
            _ => None,
        },
        prompt_time: millis(&timings, "prompt_ms")?,
        decode_time: millis(&timings, "predicted_ms")?,
        prompt_tokens: prompt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn llama_server_counts_are_read_as_it_reports_them() {
        let a = llama_answer(&json!({
            "content": "I'm glad", "tokens": [57, 5248], "stop_type": "eos",
            "model": "m.gguf",
            "timings": {"cache_n": 10, "prompt_n": 2, "prompt_ms": 36.5, "predicted_n": 2, "predicted_ms": 20.0}
        }))
        .unwrap();
        assert_eq!(a.tokens, Some(vec![57, 5248]));
        assert!(a.stopped);
        assert_eq!((a.cached, a.prompt_evaluated), (Some(10), Some(2)));
        assert_eq!(a.prompt_time, Some(Duration::from_micros(36_500)));
        assert_eq!(a.model.as_deref(), Some("m.gguf"));
    }

    #[test]
    fn a_server_without_a_cached_count_is_not_reported_not_zero() {
        let a = openai_answer(&json!({
            "choices": [{"text": "hi", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 1}
        }))
        .unwrap();
        assert_eq!(a.cached, None);
        assert_eq!(a.prompt_evaluated, None);
        assert_eq!(a.tokens, None);
        assert!(!a.stopped);
        let b = openai_answer(&json!({
            "choices": [{"text": "hi", "finish_reason": "stop", "token_ids": [5, 6]}],
            "usage": {"prompt_tokens": 12, "prompt_tokens_details": {"cached_tokens": 0}}
        }))
        .unwrap();
        // A reported zero is a zero.
        assert_eq!((b.cached, b.prompt_evaluated), (Some(0), Some(12)));
        assert_eq!(b.tokens, Some(vec![5, 6]));
        assert!(b.stopped);
    }

    #[test]
    fn a_chat_answer_is_its_message_text_with_the_usage() {
        let a = chat_answer(&json!({
            "model": "gpt-x",
            "choices": [{"message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 30, "prompt_tokens_details": {"cached_tokens": 24}}
        }))
        .unwrap();
        assert_eq!(a.text, "Hello");
        assert_eq!(a.tokens, None);
        assert!(a.stopped);
        assert_eq!(
            (a.cached, a.prompt_evaluated, a.prompt_tokens),
            (Some(24), Some(6), Some(30))
        );
        assert_eq!(a.model.as_deref(), Some("gpt-x"));
        let e = chat_answer(&json!({"choices": [{"text": "x"}]})).unwrap_err();
        assert!(e.contains("message"), "{e}");
    }

    #[test]
    fn malformed_answers_name_the_field() {
        let e = llama_answer(&json!({"content": "x", "tokens": ["a"]})).unwrap_err();
        assert!(e.contains("`tokens`"), "{e}");
        let e = llama_answer(&json!({"content": 3})).unwrap_err();
        assert!(e.contains("`content`"), "{e}");
        let e = openai_answer(&json!({"choices": []})).unwrap_err();
        assert!(e.contains("choices"), "{e}");
        let e = models(&json!({"object": "list"})).unwrap_err();
        assert!(e.contains("data"), "{e}");
        let e = llama_answer(&json!({"timings": {"cache_n": -1}})).unwrap_err();
        assert!(e.contains("cache_n"), "{e}");
    }

    #[test]
    fn models_give_ids_vocabulary_and_context() {
        let m = models(&json!({"data": [
            {"id": "a.gguf", "meta": {"n_vocab": 49152, "n_ctx": 8192}},
            {"id": "b", "max_model_len": 4096}
        ]}))
        .unwrap();
        assert_eq!(
            m[0],
            Listed {
                id: "a.gguf".into(),
                n_vocab: Some(49152),
                n_ctx: Some(8192)
            }
        );
        assert_eq!(
            m[1],
            Listed {
                id: "b".into(),
                n_vocab: None,
                n_ctx: Some(4096)
            }
        );
    }
}
