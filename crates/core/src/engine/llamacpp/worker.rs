//! The llama.cpp engine's worker thread: it owns the context and runs every job — placing a
//! prompt in a slot, decoding, sampling under a grammar, exporting and importing KV.

use super::slots::Placement;
use super::*;

/// The engine thread's side: owns the context.
pub(super) struct Worker {
    pub(super) model: Arc<LlamaModel>,
    pub(super) slots: Arc<Mutex<Slots>>,
    pub(super) reuse: bool,
    pub(super) batch: usize,
    pub(super) tok_env_cache: OnceLock<Result<TokEnv, String>>,
}

pub(super) fn failed(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Failed(format!("llama.cpp {what}: {e}"))
}

impl Worker {
    pub(super) fn serve(&self, mut ctx: LlamaContext<'_>, rx: mpsc::Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            match job {
                Job::Generate {
                    prompt,
                    sampling,
                    sink,
                    reply,
                } => {
                    let _ = reply.send(self.generate(&mut ctx, &prompt, &sampling, sink));
                }
                Job::Export {
                    tokens,
                    from,
                    reply,
                } => {
                    let _ = reply.send(self.export(&mut ctx, &tokens, from));
                }
                Job::Import {
                    tokens,
                    chunks,
                    reply,
                } => {
                    let _ = reply.send(self.import(&mut ctx, &tokens, &chunks));
                }
            }
        }
        debug!("llama.cpp engine thread stopped");
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        lock(&self.slots)
    }

    fn scratch_seq(&self) -> i32 {
        self.slots().tokens.len() as i32
    }

    /// Frees slot `s`'s cells and marks it empty.
    fn drop_slot(&self, ctx: &mut LlamaContext<'_>, s: usize) {
        let _ = ctx.kv_cache_seq_rm(s as i32, None, None);
        self.slots().tokens[s].clear();
    }

    /// Picks the slot `prompt` runs in and makes its sequence hold exactly the reused prefix;
    /// returns (slot, reused tokens).
    fn place(
        &self,
        ctx: &mut LlamaContext<'_>,
        prompt: &[u32],
    ) -> Result<(usize, usize), EngineError> {
        let Placement {
            dest,
            source: best,
            reused: reuse,
        } = self.slots().plan(prompt, self.reuse);
        if dest == best {
            ctx.kv_cache_seq_rm(dest as i32, Some(reuse as u32), None)
                .map_err(|e| failed("KV trim", e))?;
            self.slots().tokens[dest].truncate(reuse);
        } else {
            self.drop_slot(ctx, dest);
            if reuse > 0 {
                ctx.copy_kv_cache_seq(best as i32, dest as i32, Some(0), Some(reuse as u32))
                    .map_err(|e| failed("KV copy", e))?;
                self.slots().tokens[dest] = prompt[..reuse].to_vec();
            }
        }
        if !self.reuse {
            // Nothing kept between requests: the cache holds only this prompt.
            ctx.clear_kv_cache();
            self.slots().tokens[dest].clear();
        }
        self.slots().touch(dest);
        Ok((dest, reuse))
    }

    /// Decodes a batch of 32 tokens in the scratch sequence, then forgets it.
    pub(super) fn warm_up(&self, ctx: &mut LlamaContext<'_>) -> Result<(), EngineError> {
        let n = 32.min(self.batch);
        let scratch = self.scratch_seq();
        let mut batch = LlamaBatch::new(n, 1);
        for i in 0..n {
            batch
                .add(LlamaToken(i as i32), i as i32, &[scratch], i + 1 == n)
                .map_err(|e| failed("batch", e))?;
        }
        decode_marked(ctx, &mut batch).map_err(|e| failed("warm-up decode", e))?;
        let _ = ctx.kv_cache_seq_rm(scratch, None, None);
        Ok(())
    }

    /// Runs `tokens` at positions `start..` of slot `seq`, asking for logits of the last one.
    /// When the cell pool is full, drops other slots (least recently used first) and retries.
    fn decode(
        &self,
        ctx: &mut LlamaContext<'_>,
        seq: usize,
        tokens: &[u32],
        start: usize,
    ) -> Result<(), EngineError> {
        let mut batch = LlamaBatch::new(self.batch, 1);
        let mut pos = start;
        for chunk in tokens.chunks(self.batch) {
            loop {
                batch.clear();
                for (i, &t) in chunk.iter().enumerate() {
                    let last = pos + i + 1 == start + tokens.len();
                    batch
                        .add(LlamaToken(t as i32), (pos + i) as i32, &[seq as i32], last)
                        .map_err(|e| failed("batch", e))?;
                }
                match decode_marked(ctx, &mut batch) {
                    Ok(()) => break,
                    Err(DecodeError::NoKvCacheSlot) => {
                        let victim = self.slots().eviction(seq);
                        match victim {
                            Some(v) => {
                                warn!(
                                    slot = v,
                                    "KV cache full: dropping the least recently used sequence"
                                );
                                self.drop_slot(ctx, v);
                            }
                            _ => {
                                return Err(EngineError::Rejected(
                                    "the prompt does not fit the KV cache".into(),
                                ))
                            }
                        }
                    }
                    Err(e) => return Err(failed("decode", e)),
                }
            }
            self.slots().tokens[seq].extend_from_slice(chunk);
            pos += chunk.len();
        }
        Ok(())
    }

    fn tok_env(&self) -> Result<TokEnv, EngineError> {
        self.tok_env_cache
            .get_or_init(|| {
                Ok(llama_cpp_2::sampling::LlamaSampler::llguidance_tok_env(
                    &self.model,
                ))
            })
            .clone()
            .map_err(EngineError::Failed)
    }

    fn matcher(&self, grammar: &Grammar) -> Result<Matcher, EngineError> {
        let env = self.tok_env()?;
        let factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Failed(format!("grammar engine: {e}")))?;
        let top = match grammar {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(schema.clone()),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        };
        let parser = factory
            .create_parser(top)
            .map_err(|e| EngineError::Rejected(format!("invalid grammar: {e}")))?;
        Ok(Matcher::new(Ok(parser)))
    }

    fn generate(
        &self,
        ctx: &mut LlamaContext<'_>,
        prompt: &[u32],
        sampling: &Sampling,
        sink: Option<TokenSink>,
    ) -> Result<Generation, EngineError> {
        let wall = Instant::now();
        let mut matcher = sampling
            .grammar
            .as_ref()
            .map(|g| self.matcher(g))
            .transpose()?;
        let (seq, reused) = self.place(ctx, prompt)?;
        let prefill_started = Instant::now();
        if let Err(e) = self.decode(ctx, seq, &prompt[reused..], reused) {
            self.drop_slot(ctx, seq);
            return Err(e);
        }
        let prefill_time = prefill_started.elapsed();
        let decode_started = Instant::now();
        let vocab = self.model.vocab();
        let seeded = match sampling.mode {
            SamplingMode::Greedy => None,
            SamplingMode::Seeded {
                seed,
                temperature,
                top_p,
            } => Some(SeededSampler {
                seed,
                temperature,
                top_p,
                next_position: Default::default(),
            }),
        };
        let mut out: Vec<u32> = Vec::new();
        let mut logits_at = (prompt.len() - reused) as i32 - 1;
        let finish = loop {
            let mut logits = ctx.get_logits_ith(logits_at % self.batch as i32).to_vec();
            if let Some(m) = matcher.as_mut() {
                let mask = m
                    .compute_mask_or_eos()
                    .map_err(|e| EngineError::Failed(format!("grammar: {e}")))?;
                for (id, l) in logits.iter_mut().enumerate() {
                    if !mask.is_allowed(id as u32) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let pick = match &seeded {
                Some(s) => s.draw(&logits, prompt.len() + out.len()),
                None => argmax(&logits),
            } as u32;
            out.push(pick);
            if let Some(sink) = &sink {
                let _ = sink.send(pick);
            }
            if let Some(m) = matcher.as_mut() {
                if !m.is_stopped() {
                    m.consume_token(pick)
                        .map_err(|e| EngineError::Failed(format!("grammar: {e}")))?;
                }
            }
            if vocab.is_eog(LlamaToken(pick as i32)) {
                break FinishReason::Stop;
            }
            if out.len() >= sampling.max_tokens {
                break FinishReason::Length;
            }
            let pos = prompt.len() + out.len() - 1;
            if let Err(e) = self.decode(ctx, seq, &[pick], pos) {
                self.drop_slot(ctx, seq);
                return Err(e);
            }
            logits_at = 0;
        };
        let decode_time = decode_started.elapsed();
        let shown: &[u32] = if finish == FinishReason::Stop {
            &out[..out.len() - 1]
        } else {
            &out
        };
        let text =
            String::from_utf8_lossy(&vocab.detokenize(&to_llama(shown), false, true)).into_owned();
        Ok(Generation {
            text,
            finish,
            usage: EngineUsage {
                prompt_tokens: prompt.len(),
                prefilled: prompt.len() - reused,
                reused,
                generated: out.len(),
                prefill_time,
                decode_time,
                wall: wall.elapsed(),
            },
            tokens: out,
        })
    }

    /// The KV of positions `from..` of `tokens`, if a slot holds all of `tokens`.
    fn export(
        &self,
        ctx: &mut LlamaContext<'_>,
        tokens: &[u32],
        from: usize,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        let (slot, common) = self.slots().longest_match(tokens);
        if tokens.is_empty() || common < tokens.len() || from >= tokens.len() {
            return Ok(None);
        }
        // Tag the range's cells with the scratch sequence too (no tensor is copied), then
        // serialize that sequence.
        let scratch = self.scratch_seq();
        let _ = ctx.kv_cache_seq_rm(scratch, None, None);
        ctx.copy_kv_cache_seq(
            slot as i32,
            scratch,
            Some(from as u32),
            Some(tokens.len() as u32),
        )
        .map_err(|e| failed("KV copy", e))?;
        let flags = LlamaStateSeqFlags::empty();
        let mut bytes = vec![0u8; ctx.state_seq_get_size_ext(scratch, flags)];
        let n = unsafe {
            // SAFETY: `bytes` has exactly the size llama.cpp just reported for this sequence.
            ctx.state_seq_get_data_ext(bytes.as_mut_ptr(), scratch, flags)
        };
        let _ = ctx.kv_cache_seq_rm(scratch, None, None);
        if n != bytes.len() {
            return Err(failed(
                "state export",
                format!("wrote {n} bytes, expected {}", bytes.len()),
            ));
        }
        Ok(Some(bytes))
    }

    /// Loads `chunks` (exported for consecutive ranges of `tokens`) into a free or least
    /// recently used slot.
    fn import(
        &self,
        ctx: &mut LlamaContext<'_>,
        tokens: &[u32],
        chunks: &[Vec<u8>],
    ) -> Result<bool, EngineError> {
        if !self.reuse {
            return Ok(false);
        }
        let Some(dest) = self.slots().victim(None) else {
            return Ok(false);
        };
        self.drop_slot(ctx, dest);
        let scratch = self.scratch_seq();
        let mut ok = true;
        for (i, chunk) in chunks.iter().enumerate() {
            // The first chunk goes straight into the slot; later ones into scratch, then their
            // cells are tagged with the slot too (loading into a sequence first clears it).
            let target = if i == 0 { dest as i32 } else { scratch };
            let loaded = unsafe {
                // SAFETY: the bytes are ones `export` produced for this model: the blob store
                // checked their SHA-256 and model fingerprint before handing them over, and
                // llama.cpp checks the layout (cell count, layers, types) as it reads and
                // returns 0 on any mismatch.
                ctx.state_seq_set_data_ext(chunk, target, LlamaStateSeqFlags::empty())
            };
            if !loaded {
                ok = false;
                break;
            }
            if target == scratch {
                ctx.copy_kv_cache_seq(scratch, dest as i32, None, None)
                    .map_err(|e| failed("KV copy", e))?;
                let _ = ctx.kv_cache_seq_rm(scratch, None, None);
            }
        }
        let (lo, hi) = (
            ctx.kv_cache_seq_pos_min(dest as i32),
            ctx.kv_cache_seq_pos_max(dest as i32),
        );
        if !ok || lo != 0 || hi + 1 != tokens.len() as i32 {
            warn!(
                ok,
                lo,
                hi,
                expected = tokens.len(),
                "KV blob did not restore; the state will be prefilled"
            );
            let _ = ctx.kv_cache_seq_rm(scratch, None, None);
            self.drop_slot(ctx, dest);
            return Ok(false);
        }
        let mut slots = self.slots();
        slots.tokens[dest] = tokens.to_vec();
        slots.touch(dest);
        Ok(true)
    }
}

fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// `ctx.decode`, marked as engine work for the fatal-signal reporter
/// (`crate::engine::fatal_signal`), so that a signal raised inside llama.cpp says so.
fn decode_marked(ctx: &mut LlamaContext<'_>, batch: &mut LlamaBatch) -> Result<(), DecodeError> {
    let _call = crate::engine::fatal_signal::EngineCall::start();
    ctx.decode(batch)
}
