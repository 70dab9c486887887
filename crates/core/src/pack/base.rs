//! Operations whose output is a token list of its own rather than an extension of their
//! input: `create` (a base state) and `compact` (a shorter state replacing a long one).

use super::*;

impl StatePack {
    /// A base state from `base_text`. Creating the same text twice gives the same state; when
    /// the engine already holds it nothing is prefilled.
    pub async fn create(&self, base_text: &str) -> Result<OpReport, PackError> {
        let tokens = self.engine.tokenize(base_text).await?;
        self.create_tokens(tokens).await
    }

    /// [`create`](Self::create) from already tokenized text.
    pub async fn create_tokens(&self, tokens: Vec<u32>) -> Result<OpReport, PackError> {
        let span = info_span!("pack.create", tokens = tokens.len());
        async {
            let started = Instant::now();
            if tokens.is_empty() {
                return Err(PackError::EmptyBase);
            }
            // Leave room for at least one more token.
            self.check_window(tokens.len() + 1)?;
            let output = StateHash::of(&self.engine.info().fingerprint, &tokens);
            // Concurrent creates of one base: the first prefills, the others find it hot.
            let _flight = self
                .flights
                .join(flight::key(&[b"create", output.as_bytes()]))
                .await;
            let outcome = self.make_hot(&tokens, (&output, tokens.len())).await?;
            self.commit(Pending {
                op: OpKind::Create,
                input: None,
                input_was_hot: false,
                delta: tokens.len(),
                delta_hash: DeltaHash::of(&self.engine.info().fingerprint, &tokens),
                tokens,
                outcome,
                output_text: None,
                policy: None,
                sampling: None,
                replay_of: None,
                started,
                overhead: Duration::ZERO,
            })
            .await
        }
        .instrument(span)
        .await
    }

    /// Replaces `state` by a shorter state made of `tokens` (a compacted context: the same
    /// system prompt and task, with old turns masked or summarized). The new state's parent
    /// is the state it replaces, and its receipt records `policy` (the policy, strategy,
    /// trigger and any summary's hash) and the hash of the new tokens. The engine prefills
    /// only what its prefix cache does not already hold (usually everything after the
    /// system prompt and task).
    pub async fn compact_tokens(
        &self,
        state: &StateHash,
        tokens: Vec<u32>,
        policy: serde_json::Value,
    ) -> Result<OpReport, PackError> {
        let span = info_span!("pack.compact", state = %state.short(), tokens = tokens.len());
        async {
            let started = Instant::now();
            if tokens.is_empty() {
                return Err(PackError::EmptyBase);
            }
            let replaced = self.load(state)?;
            let overhead = started.elapsed();
            let input_was_hot = self.is_hot(&replaced.tokens);
            self.check_window(tokens.len() + 1)?;
            let output = StateHash::of(&self.engine.info().fingerprint, &tokens);
            let outcome = self.make_hot(&tokens, (&output, tokens.len())).await?;
            self.commit(Pending {
                op: OpKind::Compact,
                input: Some(*state),
                input_was_hot,
                delta: tokens.len(),
                delta_hash: DeltaHash::of(&self.engine.info().fingerprint, &tokens),
                tokens,
                outcome,
                output_text: None,
                policy: Some(policy),
                sampling: None,
                replay_of: None,
                started,
                overhead,
            })
            .await
        }
        .instrument(span)
        .await
    }
}
