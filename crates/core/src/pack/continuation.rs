//! Prompts that arrive whole: a client that re-sends its history (the OpenAI-style
//! endpoints) sends every token again, and the pack continues from the longest stored state
//! the prompt begins with, so only the tokens after it are new to the pack (and, when that
//! state is hot or has a KV blob, to the engine).

use super::*;

/// What [`StatePack::continue_prompt`] did.
#[derive(Debug, Clone)]
pub struct Continuation {
    /// The stored state the prompt was found to begin with, and its length in tokens; `None`
    /// when no stored state on this model is a prefix of the prompt.
    pub matched: Option<(StateHash, usize)>,
    /// The base state created for a prompt that no stored state began (its first
    /// `base_len` tokens), with its report.
    pub base: Option<OpReport>,
    /// The generation after the prompt.
    pub inference: Inference,
}

impl Continuation {
    /// Prompt tokens the engine ran for this request (the base's and the infer's).
    pub fn prefilled(&self) -> u64 {
        self.base.as_ref().map_or(0, |b| b.tokens.prefilled)
            + self.inference.report.tokens.prefilled
    }
}

impl StatePack {
    /// The longest stored state on this engine's model whose tokens are a prefix of
    /// `tokens[..max_len]`, with its length. Index lookups ([`Store::longest_prefix`]), not a
    /// scan.
    pub fn longest_stored_prefix(
        &self,
        tokens: &[u32],
        max_len: usize,
    ) -> Result<Option<(StateHash, usize)>, PackError> {
        let model = self.engine.info().fingerprint;
        Ok(self
            .store()
            .longest_prefix(&model, tokens, max_len)?
            .map(|s| (s.hash, s.tokens.len())))
    }

    /// The ids the model sampled when it answered `prompt` with `text`, if this store holds
    /// that answer: an infer from the longest stored prefix of `prompt` with the rest of
    /// `prompt` as its delta, whose generated text is `text` (compared without surrounding
    /// whitespace, which chat templates trim). A client that re-sends a reply as text gets
    /// the reply's own tokens back, which re-tokenizing the text need not give (a model, and
    /// a grammar above all, may split text into tokens as the tokenizer would not).
    pub fn sampled_reply(&self, prompt: &[u32], text: &str) -> Result<Option<Vec<u32>>, PackError> {
        const CANDIDATES: usize = 16;
        let Some((input, len)) = self.longest_stored_prefix(prompt, prompt.len())? else {
            return Ok(None);
        };
        let delta = DeltaHash::of(&self.engine.info().fingerprint, &prompt[len..]);
        let infers = self.store().infers_from(&input, &delta, CANDIDATES)?;
        for (output, said) in infers {
            if said.trim() != text.trim() {
                continue;
            }
            let tokens = self.tokens(&output)?;
            if tokens.len() > prompt.len() && tokens.starts_with(prompt) {
                return Ok(Some(tokens[prompt.len()..].to_vec()));
            }
        }
        Ok(None)
    }

    /// The answer to `prompt` under `sampling` from the store, if the same request (the same
    /// longest stored prefix, the same rest of the prompt, the same parameters) was answered
    /// before; recorded with a replay receipt ([`replay_tokens`](Self::replay_tokens)). Never
    /// calls the engine.
    pub fn replay_prompt(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
    ) -> Result<Option<Continuation>, PackError> {
        if prompt.len() < 2 {
            return Ok(None);
        }
        let Some((state, len)) = self.longest_stored_prefix(prompt, prompt.len() - 1)? else {
            return Ok(None);
        };
        Ok(self
            .replay_tokens(&state, &prompt[len..], sampling)?
            .map(|inference| Continuation {
                matched: Some((state, len)),
                base: None,
                inference,
            }))
    }

    /// Generates after `prompt` under `sampling`, continuing from the longest stored state
    /// that is a proper prefix of it: an infer whose delta is the rest of the prompt
    /// (answered from the store when the same request was answered before, like
    /// [`infer_tokens_or_replay`](Self::infer_tokens_or_replay)). When no stored state
    /// begins the prompt, its first `base_len` tokens (clamped to leave at least one token
    /// of delta) become a base state first, so that other prompts with the same beginning
    /// (a system prompt) share it. Generated ids go to `sink` as they are sampled.
    pub async fn continue_prompt(
        &self,
        prompt: &[u32],
        base_len: usize,
        sampling: &Sampling,
        sink: Option<TokenSink>,
    ) -> Result<Continuation, PackError> {
        if prompt.len() < 2 {
            return Err(PackError::InvalidParameters(
                "a prompt needs at least two tokens".into(),
            ));
        }
        self.check_window(prompt.len() + sampling.max_tokens)?;
        let matched = self.longest_stored_prefix(prompt, prompt.len() - 1)?;
        let (from, base) = match matched {
            Some((state, _)) => (state, None),
            None => {
                let base_len = base_len.clamp(1, prompt.len() - 1);
                let base = self.create_tokens(prompt[..base_len].to_vec()).await?;
                (base.output, Some(base))
            }
        };
        let start = matched.map_or(base_len_of(&base), |(_, len)| len);
        let delta = &prompt[start..];
        let inference = match sink {
            Some(sink) => {
                self.infer_tokens_or_replay_streaming(&from, delta, sampling, sink)
                    .await?
            }
            None => self.infer_tokens_or_replay(&from, delta, sampling).await?,
        };
        Ok(Continuation {
            matched,
            base,
            inference,
        })
    }
}

fn base_len_of(base: &Option<OpReport>) -> usize {
    base.as_ref().map_or(0, |b| b.tokens.state as usize)
}
