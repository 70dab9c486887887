//! Deterministic infers answered from the store: the same state, delta and sampling
//! parameters give the same tokens, so a repeated request is answered with what the first
//! one computed, under a receipt of its own that names the receipt it repeats.

use super::*;

impl StatePack {
    /// [`infer`](Self::infer), except that a deterministic request (same state, same delta,
    /// same sampling parameters) that was already answered is answered again from the store:
    /// the engine is not called, and the receipt names the receipt it repeats (`replay_of`)
    /// with nothing prefilled, reused or generated.
    pub async fn infer_or_replay(
        &self,
        state: &StateHash,
        delta_text: &str,
        sampling: &Sampling,
    ) -> Result<Inference, PackError> {
        let delta = self.engine.tokenize(delta_text).await?;
        self.infer_tokens_or_replay(state, &delta, sampling).await
    }

    /// [`infer_or_replay`](Self::infer_or_replay) with an already tokenized delta.
    pub async fn infer_tokens_or_replay(
        &self,
        state: &StateHash,
        delta: &[u32],
        sampling: &Sampling,
    ) -> Result<Inference, PackError> {
        let _flight = self.infer_flight(state, delta, sampling).await?;
        match self.replay_tokens(state, delta, sampling)? {
            Some(answer) => Ok(answer),
            None => self.infer_tokens(state, delta, sampling).await,
        }
    }

    /// Concurrent identical deterministic infers run one after the other: the first calls
    /// the engine, the others are answered from the store as replays of it. `None` for a
    /// request that cannot be replayed (it runs at once).
    async fn infer_flight(
        &self,
        state: &StateHash,
        delta: &[u32],
        sampling: &Sampling,
    ) -> Result<Option<flight::Flight<'_>>, PackError> {
        if !sampling.is_deterministic() || delta.is_empty() {
            return Ok(None);
        }
        let sampling = sampling_record(sampling)?.to_string();
        let delta_hash = DeltaHash::of(&self.engine.info().fingerprint, delta);
        let key = flight::key(&[
            b"infer",
            state.as_bytes(),
            delta_hash.as_bytes(),
            sampling.as_bytes(),
        ]);
        Ok(Some(self.flights.join(key).await))
    }

    /// [`infer_tokens_or_replay`](Self::infer_tokens_or_replay), sending the generated ids to
    /// `sink` as the engine samples them (all at once for an answer from the store).
    pub async fn infer_tokens_or_replay_streaming(
        &self,
        state: &StateHash,
        delta: &[u32],
        sampling: &Sampling,
        sink: TokenSink,
    ) -> Result<Inference, PackError> {
        let _flight = self.infer_flight(state, delta, sampling).await?;
        match self.replay_tokens(state, delta, sampling)? {
            Some(answer) => {
                for t in &answer.generated {
                    let _ = sink.send(*t);
                }
                Ok(answer)
            }
            None => {
                self.infer_tokens_streaming(state, delta, sampling, sink)
                    .await
            }
        }
    }

    /// Answers a deterministic infer from the store if the same request (state, delta,
    /// sampling) was answered before, recording the replay with its receipt; `None` if it
    /// was not (or the sampling is not deterministic). Never calls the engine.
    pub fn replay_tokens(
        &self,
        state: &StateHash,
        delta: &[u32],
        sampling: &Sampling,
    ) -> Result<Option<Inference>, PackError> {
        if !sampling.is_deterministic() || delta.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let key = sampling_record(sampling)?;
        let delta_hash = DeltaHash::of(&self.engine.info().fingerprint, delta);
        let Some(earlier) = self.store().find_infer(state, &delta_hash, &key)? else {
            return Ok(None);
        };
        let span = info_span!("pack.replay", state = %state.short(), of = earlier.receipt_seq);
        let _enter = span.enter();
        let Extension {
            tokens: prompt,
            input_was_hot,
            overhead,
        } = self.extend(state, delta, 0, started)?;
        let output = self.load(&earlier.output)?;
        if !output.tokens.starts_with(&prompt)
            || output.tokens.len() - prompt.len() > sampling.max_tokens
        {
            return Err(PackError::Inconsistent {
                state: earlier.output,
                reason: format!(
                    "receipt {} records it as the answer to this request, but its tokens do not extend the request's",
                    earlier.receipt_seq
                ),
            });
        }
        let generated = output.tokens[prompt.len()..].to_vec();
        let hash = earlier.output;
        let report = self
            .record(
                Pending {
                    op: OpKind::Infer,
                    input: Some(*state),
                    input_was_hot,
                    tokens: output.tokens,
                    delta: delta.len(),
                    delta_hash,
                    outcome: Outcome {
                        usage: EngineUsage::default(),
                        engine_called: false,
                        restored: Restored::default(),
                        kv: None,
                    },
                    output_text: Some(earlier.text.clone()),
                    policy: None,
                    sampling: Some((key, earlier.finish)),
                    replay_of: Some(earlier.receipt_seq),
                    started,
                    overhead,
                },
                hash,
                None,
            )?
            .0;
        Ok(Some(Inference {
            text: earlier.text,
            generated,
            finish: earlier.finish,
            report,
        }))
    }
}
