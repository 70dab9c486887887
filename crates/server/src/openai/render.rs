//! A chat request's messages as the pieces of text the model is shown, each tokenized on its
//! own: the conversation is rendered turn by turn with the model's [`ChatTemplate`], and an
//! assistant turn is cut where a generated reply is cut (reply prompt, the reply, its
//! end-of-turn marker and separator), so that a client re-sending its history produces the
//! very tokens the server stored when it generated that reply.

use state_pack_core::template::{ChatTemplate, Role};

use super::tools::{self, ToolMode};
use super::wire::{ChatMessage, Content};
use crate::error::ApiError;

/// One piece of a conversation's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Its text.
    pub text: String,
    /// Whether it is what an assistant said (between the reply prompt and the end-of-turn
    /// marker): the ids the model sampled for it, if the server generated it, stand in for
    /// its tokenization.
    pub reply: bool,
}

impl Piece {
    fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            reply: false,
        }
    }
}

/// A conversation's text, in pieces tokenized one by one.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The pieces, in order; the last one is the reply prompt.
    pub pieces: Vec<Piece>,
    /// How many leading pieces are the first turn (the system prompt with the tool list): a
    /// new conversation's base state, shared by every conversation that starts the same way.
    pub base_pieces: usize,
}

/// Renders `messages`; `mode` says whether tools are declared (then every assistant turn is
/// written in the action format the grammar makes the model write).
pub fn render(
    template: ChatTemplate,
    messages: &[ChatMessage],
    mode: &ToolMode,
) -> Result<Rendered, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty".into()));
    }
    let mut pieces = Vec::new();
    let mut base_pieces = 0;
    let mut previous: Option<Role> = None;
    let mut rest = messages;

    // Leading system (or developer) messages are one system turn, followed by the tool list.
    let mut system: Vec<String> = Vec::new();
    while let Some((m, tail)) = rest.split_first() {
        if !matches!(m.role.as_str(), "system" | "developer") {
            break;
        }
        system.push(text_of(m, 0)?);
        rest = tail;
    }
    if let Some(list) = mode.describe() {
        system.push(list);
    }
    if !system.is_empty() {
        pieces.push(Piece::text(turn(
            template,
            previous,
            Role::System,
            &system.join("\n\n"),
        )?));
        previous = Some(Role::System);
        base_pieces = 1;
    }

    let mut calls_seen: Vec<(String, String)> = Vec::new();
    for (i, m) in rest.iter().enumerate() {
        let at = i + messages.len() - rest.len();
        match m.role.as_str() {
            "system" | "developer" => {
                pieces.push(Piece::text(turn(
                    template,
                    previous,
                    Role::System,
                    &text_of(m, at)?,
                )?));
                previous = Some(Role::System);
            }
            "user" => {
                pieces.push(Piece::text(turn(
                    template,
                    previous,
                    Role::User,
                    &text_of(m, at)?,
                )?));
                previous = Some(Role::User);
            }
            "assistant" => {
                let said = match (&m.tool_calls, mode.is_active()) {
                    (Some(calls), _) if !calls.is_empty() => {
                        for c in calls {
                            calls_seen.push((c.id.clone(), c.function.name.clone()));
                        }
                        tools::render_calls(calls).map_err(|e| {
                            ApiError::invalid(format!("messages[{at}].tool_calls: {e}"))
                        })?
                    }
                    (_, true) => tools::render_answer(&text_of(m, at)?),
                    (_, false) => text_of(m, at)?,
                };
                pieces.extend(assistant_turn(template, previous, &said)?);
                previous = Some(Role::Assistant);
            }
            "tool" => {
                let id = m.tool_call_id.as_deref().ok_or_else(|| {
                    ApiError::invalid(format!("messages[{at}]: a tool message needs tool_call_id"))
                })?;
                let name = calls_seen
                    .iter()
                    .rev()
                    .find(|(c, _)| c == id)
                    .map(|(_, n)| n.as_str())
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "messages[{at}]: tool_call_id {id:?} names no earlier assistant tool call"
                        ))
                    })?;
                let text = template
                    .tool_result(previous, name, &text_of(m, at)?)
                    .map_err(|e| ApiError::invalid(e.to_string()))?;
                pieces.push(Piece::text(text));
                previous = Some(Role::User);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "messages[{at}].role {other:?} is not one of system, developer, user, assistant, tool"
                )))
            }
        }
    }
    if base_pieces == 0 {
        base_pieces = 1;
    }
    pieces.push(Piece::text(template.reply_prompt()));
    pieces.retain(|p| !p.text.is_empty());
    Ok(Rendered {
        pieces,
        base_pieces,
    })
}

fn turn(
    template: ChatTemplate,
    previous: Option<Role>,
    role: Role,
    content: &str,
) -> Result<String, ApiError> {
    template
        .turn(previous, role, content)
        .map_err(|e| ApiError::invalid(format!("messages: {e}")))
}

/// An assistant turn in the pieces a generated reply has: the reply prompt (the end of the
/// request that asked for it), the reply, and its end-of-turn marker with the separator.
/// Where the family's turn is not written that way, the turn is one piece.
fn assistant_turn(
    template: ChatTemplate,
    previous: Option<Role>,
    said: &str,
) -> Result<Vec<Piece>, ApiError> {
    let whole = turn(template, previous, Role::Assistant, said)?;
    let open = template.reply_prompt();
    let close = format!("{}{}", template.end_of_turn(), template.after_reply());
    match whole
        .strip_prefix(open)
        .and_then(|rest| rest.strip_suffix(close.as_str()))
    {
        Some(reply) => Ok(vec![
            Piece::text(open),
            Piece {
                text: reply.to_string(),
                reply: true,
            },
            Piece::text(close),
        ]),
        None => Ok(vec![Piece::text(whole)]),
    }
}

/// A message's text: its string, or its text parts joined.
fn text_of(m: &ChatMessage, at: usize) -> Result<String, ApiError> {
    match &m.content {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|p| match (p.kind.as_str(), &p.text) {
                ("text", Some(t)) => Ok(t.as_str()),
                (kind, _) => Err(ApiError::invalid(format!(
                    "messages[{at}]: content parts of type {kind:?} are not supported (text only)"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.join("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::wire::{FunctionCall, ToolCall};

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: Some(Content::Text(content.into())),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }

    #[test]
    fn chatml_turns_and_the_reply_cut_where_generation_cuts_it() {
        let r = render(
            ChatTemplate::CHATML,
            &[
                msg("system", "Be terse."),
                msg("user", "Hi"),
                msg("assistant", "Hello."),
                msg("user", "Bye"),
            ],
            &ToolMode::None,
        )
        .unwrap();
        let texts: Vec<&str> = r.pieces.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "<|im_start|>system\nBe terse.<|im_end|>\n",
                "<|im_start|>user\nHi<|im_end|>\n",
                "<|im_start|>assistant\n",
                "Hello.",
                "<|im_end|>\n",
                "<|im_start|>user\nBye<|im_end|>\n",
                "<|im_start|>assistant\n",
            ]
        );
        assert_eq!(r.base_pieces, 1);
        assert!(r.pieces[3].reply && !r.pieces[2].reply && !r.pieces[4].reply);
        // The pieces are the template's own rendering of the conversation.
        assert_eq!(
            texts.concat(),
            "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn tool_calls_and_results_round_trip_in_the_action_format() {
        let mode = ToolMode::Auto(vec![super::super::tools::tests::lookup()]);
        let mut call = msg("assistant", "");
        call.content = None;
        call.tool_calls = Some(vec![ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "lookup".into(),
                arguments: "{\"clause\": \"14.5\"}".into(),
            },
        }]);
        let mut result = msg("tool", "fees of 12 months");
        result.tool_call_id = Some("call_1".into());
        let r = render(
            ChatTemplate::CHATML,
            &[msg("user", "What caps liability?"), call, result],
            &mode,
        )
        .unwrap();
        assert!(
            r.pieces[0]
                .text
                .starts_with("<|im_start|>system\nTools:\n- lookup"),
            "{}",
            r.pieces[0].text
        );
        assert_eq!(
            r.pieces[3].text,
            "{\"calls\":[{\"tool\":\"lookup\",\"args\":{\"clause\":\"14.5\"}}]}"
        );
        assert_eq!(
            r.pieces[5].text,
            "<|im_start|>user\nObservation from lookup: fees of 12 months<|im_end|>\n"
        );
        let mut orphan = msg("tool", "x");
        orphan.tool_call_id = Some("call_9".into());
        let e = render(ChatTemplate::CHATML, &[msg("user", "q"), orphan], &mode).unwrap_err();
        assert!(e.message.contains("call_9"), "{}", e.message);
    }

    #[test]
    fn bad_roles_and_parts_are_refused_by_name() {
        let e = render(ChatTemplate::CHATML, &[msg("robot", "x")], &ToolMode::None).unwrap_err();
        assert!(e.message.contains("\"robot\""), "{}", e.message);
        let mut image = msg("user", "");
        image.content = Some(Content::Parts(vec![super::super::wire::ContentPart {
            kind: "image_url".into(),
            text: None,
        }]));
        let e = render(ChatTemplate::CHATML, &[image], &ToolMode::None).unwrap_err();
        assert!(e.message.contains("image_url"), "{}", e.message);
        assert!(render(ChatTemplate::CHATML, &[], &ToolMode::None).is_err());
    }
}
