//! The llama.cpp engine's worker thread: it owns the context and runs every job — placing
//! prompts in slots, decoding, sampling under grammars, exporting and importing KV.
//!
//! Generations run together (continuous batching, as llama-server does): each step is one
//! `llama_decode` holding the next token of every sequence that is decoding and the next
//! prompt chunk of one sequence that is prefilling, each in its own slot; a request that
//! arrives while others run joins at the next step. Sampling, grammars and seeds stay per
//! sequence, and so do the figures: a sequence's prefill time is the wall time from its
//! first prompt chunk to its last, its decode time from there to its last token.

use std::collections::VecDeque;

use super::slots::Placement;
use super::*;

/// The engine thread's side: owns the context.
pub(super) struct Worker {
    pub(super) model: Arc<LlamaModel>,
    pub(super) slots: Arc<Mutex<Slots>>,
    pub(super) reuse: bool,
    /// KV cells in the context, shared by every slot.
    pub(super) cells: usize,
    pub(super) batch: usize,
    pub(super) tok_env_cache: OnceLock<Result<TokEnv, String>>,
    /// Whether a prompt chunk and other sequences' decode tokens that together reach
    /// [`CPU_FA_TILE`] run in separate calls, taking turns (see [`Mix`]), and decode tokens
    /// beyond [`CPU_FA_TILE`] - 1 wait for the next call (on the CPU).
    pub(super) split_prompts: bool,
    /// Whose turn it is when they take turns: the prompt chunk's (`true`) or the decodes'.
    pub(super) prompt_turn: std::cell::Cell<bool>,
    /// Where the next call's decode tokens start among the decoding sequences, when there are
    /// too many for one call (on the CPU, [`CPU_FA_TILE`] or more: they go in turns).
    pub(super) decode_from: std::cell::Cell<usize>,
}

/// Batch rows from which ggml's CPU flash attention runs tiled (`GGML_FA_TILE_Q` in
/// llama.cpp's `ggml-cpu/common.h`, 64 in the version the crate builds).
///
/// Below it each query row skips, cell by cell, the KV cells its mask hides (every other
/// sequence's, in the unified cache). From it on, rows go in tiles of 64, and a tile skips a
/// block of cells only when all its rows' masks hide it: a tile holding one decode token of
/// each of 32 sequences computes attention over every cell of all of them, masked after.
/// At 32 agents x 20 steps that was most of a step (`docs/PERFORMANCE.md`, section 9). The
/// same holds for decode tokens alone: from 64 decoding sequences, a call takes 63 of them,
/// the next call the next 63, in turn.
pub(super) const CPU_FA_TILE: usize = 64;

/// What one `llama_decode` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// The next token of every decoding sequence and one prefilling sequence's next chunk.
    Both,
    /// Only the decode tokens.
    Decodes,
    /// Only the prompt chunk.
    Prompt,
}

pub(super) fn failed(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Failed(format!("llama.cpp {what}: {e}"))
}

/// A generation waiting for a slot.
struct Request {
    prompt: Vec<u32>,
    sampling: Sampling,
    sink: Option<TokenSink>,
    export: Option<PromptKvRequest>,
    reply: oneshot::Sender<Result<Generation, EngineError>>,
}

/// A generation in flight, in its slot.
struct Running {
    seq: usize,
    prompt: Vec<u32>,
    reused: usize,
    /// Prompt tokens whose KV is in the slot (reused, then prefilled chunk by chunk).
    fed: usize,
    sampling: Sampling,
    matcher: Option<Matcher>,
    seeded: Option<SeededSampler>,
    sink: Option<TokenSink>,
    /// Answered with the prompt's KV once the prompt is in, before the first decode.
    export: Option<PromptKvRequest>,
    /// How long that export took: between prefill and decode, in neither's time.
    export_time: Duration,
    reply: oneshot::Sender<Result<Generation, EngineError>>,
    out: Vec<u32>,
    started: Instant,
    /// When its first prompt chunk could run (after placing it in its slot).
    prefill_from: Instant,
    /// When its last prompt chunk had run: prefill ends and decoding starts.
    prefilled_at: Option<Instant>,
    /// Tokens of this sequence in the batch being decoded, and where its logits are.
    in_batch: usize,
    logits_at: Option<i32>,
}

impl Running {
    fn prefilling(&self) -> bool {
        self.fed < self.prompt.len()
    }

    /// Whether its next token is a decode token (its prompt is in and it has sampled one).
    fn decoding(&self) -> bool {
        !self.prefilling() && !self.out.is_empty()
    }
}

impl Worker {
    /// Runs jobs until every sender is gone; `pool` (the context's CPU threads) sleeps
    /// whenever no generation runs.
    pub(super) fn serve(
        &self,
        mut ctx: LlamaContext<'_>,
        rx: mpsc::Receiver<Job>,
        pool: Option<&ThreadPool>,
    ) {
        let mut waiting: VecDeque<Request> = VecDeque::new();
        let mut running: Vec<Running> = Vec::new();
        let mut open = true;
        loop {
            // Block for work only when nothing runs; otherwise take what has arrived and step.
            if running.is_empty() && waiting.is_empty() {
                if let Some(pool) = pool {
                    pool.pause();
                }
                match rx.recv() {
                    Ok(job) => self.accept(&mut ctx, job, &mut waiting),
                    Err(_) => break,
                }
            }
            while open {
                match rx.try_recv() {
                    Ok(job) => self.accept(&mut ctx, job, &mut waiting),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => open = false,
                }
            }
            self.admit(&mut ctx, &mut waiting, &mut running);
            if running.is_empty() {
                if !open && waiting.is_empty() {
                    break;
                }
                continue;
            }
            self.step(&mut ctx, &mut running);
        }
        // llama.cpp's own clocks, to set beside the engine's figures (llama-server prints the
        // same at each request's end; `n_reused` counts decodes that reused the last graph).
        let timings = ctx.timings();
        debug!(?timings, "llama.cpp engine thread stopped");
    }

    /// Exports and imports run at once (between two steps); generations queue for a slot.
    fn accept(&self, ctx: &mut LlamaContext<'_>, job: Job, waiting: &mut VecDeque<Request>) {
        match job {
            Job::Generate {
                prompt,
                sampling,
                sink,
                export,
                reply,
            } => waiting.push_back(Request {
                prompt,
                sampling,
                sink,
                export,
                reply,
            }),
            Job::Export {
                tokens,
                from,
                reply,
            } => {
                let _ = reply.send(self.export(ctx, &tokens, from));
            }
            Job::Import {
                tokens,
                chunks,
                reply,
            } => {
                let _ = reply.send(self.import(ctx, &tokens, &chunks));
            }
        }
    }

    /// Starts waiting generations, in arrival order, while an idle slot can take them.
    fn admit(
        &self,
        ctx: &mut LlamaContext<'_>,
        waiting: &mut VecDeque<Request>,
        running: &mut Vec<Running>,
    ) {
        while let Some(r) = waiting.front() {
            if r.reply.is_closed() {
                waiting.pop_front();
                continue;
            }
            let Some(place) = self.slots().plan(&r.prompt, self.reuse) else {
                return;
            };
            // Admit it only if every running sequence can still finish beside it in the cell
            // pool (idle slots' cells can be dropped); one alone is always tried.
            let need = |prompt: usize, fed: usize, max: usize, out: usize| {
                (prompt - fed.min(prompt)) + max.saturating_sub(out)
            };
            let pending: usize = running
                .iter()
                .map(|x| need(x.prompt.len(), x.fed, x.sampling.max_tokens, x.out.len()))
                .sum();
            let wanted = need(r.prompt.len(), place.reused, r.sampling.max_tokens, 0);
            if !running.is_empty() && self.slots().busy_cells() + pending + wanted > self.cells {
                return;
            }
            let Some(r) = waiting.pop_front() else { return };
            match self.start(ctx, r, place) {
                Ok(run) => running.push(run),
                Err((reply, e)) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    fn start(
        &self,
        ctx: &mut LlamaContext<'_>,
        r: Request,
        place: Placement,
    ) -> Result<
        Running,
        (
            oneshot::Sender<Result<Generation, EngineError>>,
            EngineError,
        ),
    > {
        let started = Instant::now();
        let matcher = match r
            .sampling
            .grammar
            .as_ref()
            .map(|g| self.matcher(g))
            .transpose()
        {
            Ok(m) => m,
            Err(e) => return Err((r.reply, e)),
        };
        if let Err(e) = self.place(ctx, &r.prompt, place) {
            return Err((r.reply, e));
        }
        let (seq, reused) = (place.dest, place.reused);
        self.slots().set_busy(seq, true);
        let prefill_from = Instant::now();
        let seeded = match r.sampling.mode {
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
        Ok(Running {
            seq,
            reused,
            fed: reused,
            prompt: r.prompt,
            sampling: r.sampling,
            matcher,
            seeded,
            sink: r.sink,
            export: r.export,
            export_time: Duration::ZERO,
            reply: r.reply,
            out: Vec::new(),
            started,
            prefill_from,
            prefilled_at: None,
            in_batch: 0,
            logits_at: None,
        })
    }

    /// Ends `run` with `result`: its slot becomes idle (keeping what it holds on success,
    /// dropped on failure).
    fn finish(
        &self,
        ctx: &mut LlamaContext<'_>,
        run: Running,
        result: Result<Generation, EngineError>,
    ) {
        if result.is_err() {
            self.drop_slot(ctx, run.seq);
        }
        self.slots().set_busy(run.seq, false);
        let _ = run.reply.send(result);
    }

    /// One `llama_decode` for every running sequence: the next token of those decoding, then
    /// prompt chunks of those prefilling, up to the batch size; then samples for every
    /// sequence whose logits it produced.
    fn step(&self, ctx: &mut LlamaContext<'_>, running: &mut Vec<Running>) {
        // A client that went away: stop its generation, keep what its slot holds.
        let mut i = 0;
        while i < running.len() {
            if running[i].reply.is_closed() {
                let run = running.swap_remove(i);
                self.slots().set_busy(run.seq, false);
            } else {
                i += 1;
            }
        }
        if running.is_empty() {
            return;
        }
        // A prompt chunk beside one token of every other slot.
        let mut batch = LlamaBatch::new(self.batch + self.slots().tokens.len(), 1);
        loop {
            batch.clear();
            // Chosen again after a sequence gave way below: what was due may have left.
            let mix = self.mix(running);
            let next_from = match self.fill(&mut batch, running, mix) {
                Ok(next_from) => next_from,
                Err(e) => {
                    let e = e.to_string();
                    for run in running.drain(..) {
                        self.finish(ctx, run, Err(EngineError::Failed(e.clone())));
                    }
                    return;
                }
            };
            match decode_marked(ctx, &mut batch) {
                Ok(()) => {
                    if mix != Mix::Both {
                        // The other kind goes next.
                        self.prompt_turn.set(mix == Mix::Decodes);
                    }
                    if let Some(from) = next_from {
                        // The decodes left out go next.
                        self.decode_from.set(from);
                    }
                    break;
                }
                Err(DecodeError::NoKvCacheSlot) => {
                    let victim = self.slots().eviction();
                    if let Some(v) = victim {
                        warn!(
                            slot = v,
                            "KV cache full: dropping the least recently used sequence"
                        );
                        self.drop_slot(ctx, v);
                        continue;
                    }
                    // Nothing idle left to drop: the newest sequence gives way to the others
                    // (alone, it does not fit at all).
                    let Some(run) = running.pop() else { return };
                    self.finish(
                        ctx,
                        run,
                        Err(EngineError::Rejected(
                            "the prompt does not fit the KV cache".into(),
                        )),
                    );
                    if running.is_empty() {
                        return;
                    }
                }
                Err(e) => {
                    for run in running.drain(..) {
                        self.finish(ctx, run, Err(failed("decode", &e)));
                    }
                    return;
                }
            }
        }
        // On a GPU `llama_decode` returns once the batch is queued. Where logits come out,
        // wait for them before reading the clock, so that a prompt's last chunk is billed to
        // prefill, not to the decode after it (sampling would wait for them anyway).
        if running.iter().any(|r| r.logits_at.is_some()) {
            ctx.synchronize();
        }
        let now = Instant::now();
        let mut i = 0;
        while i < running.len() {
            let run = &mut running[i];
            // What the slot now holds: the prompt chunk or the token just run.
            let ran = if run.prefilling() {
                &run.prompt[run.fed..run.fed + run.in_batch]
            } else {
                &run.out[run.out.len() - run.in_batch..]
            };
            {
                let mut slots = self.slots();
                slots.tokens[run.seq].extend_from_slice(ran);
                slots.touch(run.seq);
            }
            if run.prefilling() {
                run.fed += run.in_batch;
                if !run.prefilling() {
                    run.prefilled_at = Some(now);
                    if let Some(export) = run.export.take() {
                        self.export_prompt(ctx, run, export);
                    }
                }
            }
            let Some(at) = run.logits_at.take() else {
                i += 1;
                continue;
            };
            match self.sample(ctx, run, at) {
                Ok(None) => i += 1,
                Ok(Some(finish)) => {
                    let run = running.swap_remove(i);
                    let g = self.generation(&run, finish);
                    self.finish(ctx, run, Ok(g));
                }
                Err(e) => {
                    let run = running.swap_remove(i);
                    self.finish(ctx, run, Err(e));
                }
            }
        }
    }

    /// What the next `llama_decode` holds. Everything due, unless on the CPU a prompt chunk
    /// and the decode tokens would together reach [`CPU_FA_TILE`] rows: then the chunk and the
    /// decode tokens take turns, each in a call of its own.
    fn mix(&self, running: &[Running]) -> Mix {
        let decoding = running.iter().filter(|r| r.decoding()).count();
        let chunk = next_prompt(running).map_or(0, |i| self.chunk(&running[i]));
        if !self.split_prompts || decoding == 0 || chunk == 0 || decoding + chunk < CPU_FA_TILE {
            Mix::Both
        } else if self.prompt_turn.get() {
            Mix::Prompt
        } else {
            Mix::Decodes
        }
    }

    /// The prompt tokens `run` feeds in its next call: the rest of its prompt, up to the
    /// prefill batch size.
    fn chunk(&self, run: &Running) -> usize {
        (run.prompt.len() - run.fed).min(self.batch)
    }

    /// Puts each running sequence's next tokens in `batch`, as `mix` says: the next token of
    /// every decoding sequence (on the CPU at most [`CPU_FA_TILE`] - 1, the others in the
    /// next calls), then the next prompt chunk (up to the prefill batch size) of one
    /// prefilling sequence.
    ///
    /// Returns where the next call's decode tokens start, when this one could not take all.
    fn fill(
        &self,
        batch: &mut LlamaBatch,
        running: &mut [Running],
        mix: Mix,
    ) -> Result<Option<usize>, EngineError> {
        let mut n = 0i32;
        for run in running.iter_mut() {
            run.in_batch = 0;
            run.logits_at = None;
        }
        let decoding: Vec<usize> = if mix == Mix::Prompt {
            Vec::new()
        } else {
            (0..running.len())
                .filter(|&i| running[i].decoding())
                .collect()
        };
        // On the CPU at most CPU_FA_TILE - 1 of them a call, taking turns.
        let room = if self.split_prompts {
            CPU_FA_TILE - 1
        } else {
            usize::MAX
        };
        let due = decoding.len();
        let (taken, next_from) = if due > room {
            let from = self.decode_from.get() % due;
            // In the batch in `running`'s order, as when all fit.
            let mut taken: Vec<usize> = (0..room).map(|k| decoding[(from + k) % due]).collect();
            taken.sort_unstable();
            (taken, Some((from + room) % due))
        } else {
            (decoding, None)
        };
        {
            let mut slots = self.slots();
            slots.peak_decoding = slots.peak_decoding.max(due);
            slots.peak_decode_batch = slots.peak_decode_batch.max(taken.len());
        }
        for i in taken {
            let run = &mut running[i];
            let Some(&last) = run.out.last() else {
                continue;
            };
            let pos = run.prompt.len() + run.out.len() - 1;
            batch
                .add(LlamaToken(last as i32), pos as i32, &[run.seq as i32], true)
                .map_err(|e| failed("batch", e))?;
            run.in_batch = 1;
            run.logits_at = Some(n);
            n += 1;
        }
        // One prompt per decode, in the chunks it would get alone: llama.cpp's kernels are not
        // invariant to a batch's make-up (two prompts sharing a batch changed a greedy token
        // of one of them in our tests); one token of each decoding sequence beside a prompt
        // chunk changes nothing.
        let prompt = next_prompt(running).filter(|_| mix != Mix::Decodes);
        if let Some(run) = prompt.map(|i| &mut running[i]) {
            let take = self.chunk(run);
            for k in 0..take {
                let pos = run.fed + k;
                let last = pos + 1 == run.prompt.len();
                batch
                    .add(
                        LlamaToken(run.prompt[pos] as i32),
                        pos as i32,
                        &[run.seq as i32],
                        last,
                    )
                    .map_err(|e| failed("batch", e))?;
                if last {
                    run.logits_at = Some(n);
                }
                n += 1;
            }
            run.in_batch = take;
        }
        Ok(next_from)
    }

    /// Samples `run`'s next token from the logits at batch index `at`; `Some` when it ends.
    fn sample(
        &self,
        ctx: &mut LlamaContext<'_>,
        run: &mut Running,
        at: i32,
    ) -> Result<Option<FinishReason>, EngineError> {
        let mut logits = ctx.get_logits_ith(at).to_vec();
        if let Some(m) = run.matcher.as_mut() {
            let mask = m
                .compute_mask_or_eos()
                .map_err(|e| EngineError::Failed(format!("grammar: {e}")))?;
            for (id, l) in logits.iter_mut().enumerate() {
                if !mask.is_allowed(id as u32) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let pick = match &run.seeded {
            Some(s) => s.draw(&logits, run.prompt.len() + run.out.len()),
            None => argmax(&logits),
        } as u32;
        run.out.push(pick);
        if let Some(sink) = &run.sink {
            let _ = sink.send(pick);
        }
        if let Some(m) = run.matcher.as_mut() {
            if !m.is_stopped() {
                m.consume_token(pick)
                    .map_err(|e| EngineError::Failed(format!("grammar: {e}")))?;
            }
        }
        if self.model.vocab().is_eog(LlamaToken(pick as i32)) {
            return Ok(Some(FinishReason::Stop));
        }
        if run.out.len() >= run.sampling.max_tokens {
            return Ok(Some(FinishReason::Length));
        }
        Ok(None)
    }

    fn generation(&self, run: &Running, finish: FinishReason) -> Generation {
        let shown: &[u32] = if finish == FinishReason::Stop {
            &run.out[..run.out.len() - 1]
        } else {
            &run.out
        };
        let vocab = self.model.vocab();
        let text =
            String::from_utf8_lossy(&vocab.detokenize(&to_llama(shown), false, true)).into_owned();
        Generation {
            text,
            finish,
            usage: EngineUsage {
                prompt_tokens: run.prompt.len(),
                prefilled: run.prompt.len() - run.reused,
                reused: run.reused,
                generated: run.out.len(),
                prefill_time: run
                    .prefilled_at
                    .map(|t| t - run.prefill_from)
                    .unwrap_or_default(),
                decode_time: run
                    .prefilled_at
                    .map(|t| t.elapsed().saturating_sub(run.export_time))
                    .unwrap_or_default(),
                wall: run.started.elapsed(),
                unreported: 0,
                retokenized: false,
            },
            tokens: run.out.clone(),
        }
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

    /// Makes the slot `prompt` runs in ([`Slots::plan`]) hold exactly the reused prefix.
    fn place(
        &self,
        ctx: &mut LlamaContext<'_>,
        prompt: &[u32],
        Placement {
            dest,
            source: best,
            reused: reuse,
        }: Placement,
    ) -> Result<(), EngineError> {
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
        Ok(())
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

    /// Answers `export` with the KV of `run`'s prompt from `export.from`, the prompt being
    /// all in its slot now.
    fn export_prompt(
        &self,
        ctx: &mut LlamaContext<'_>,
        run: &mut Running,
        export: PromptKvRequest,
    ) {
        let started = Instant::now();
        let exported = if export.from < run.prompt.len() {
            self.export_range(ctx, run.seq, export.from, run.prompt.len())
        } else {
            Ok(None)
        };
        run.export_time = started.elapsed();
        let exported = exported.map(|raw| {
            raw.map(|raw| ExportedKv {
                raw,
                time: run.export_time,
            })
        });
        let _ = export.reply.send(exported);
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
        self.export_range(ctx, slot, from, tokens.len())
    }

    /// The KV of positions `from..to` of slot `slot`, which holds at least `to` tokens.
    fn export_range(
        &self,
        ctx: &mut LlamaContext<'_>,
        slot: usize,
        from: usize,
        to: usize,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        // Tag the range's cells with the scratch sequence too (no tensor is copied), then
        // serialize that sequence.
        let scratch = self.scratch_seq();
        let _ = ctx.kv_cache_seq_rm(scratch, None, None);
        ctx.copy_kv_cache_seq(slot as i32, scratch, Some(from as u32), Some(to as u32))
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
            // Every slot is running a generation: the state is prefilled instead.
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

/// The prefilling sequence whose chunk runs next: the oldest. `running` is not in arrival
/// order (finished runs are swap-removed), and picking by position let newer prompts overtake
/// an older one again and again.
fn next_prompt(running: &[Running]) -> Option<usize> {
    running
        .iter()
        .enumerate()
        .filter(|(_, r)| r.prefilling())
        .min_by_key(|(_, r)| r.started)
        .map(|(i, _)| i)
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
