//! The rows of a decode: each row's sampler, context, clock and end, and
//! the [`RowFeed`] through which rows join a running decode and are
//! reported as they end.

#[allow(clippy::wildcard_imports)] // the module's imports, as if this were mod.rs
use super::*;

/// The caller's side of a decode that rows can join while it runs (the
/// engine's requests arriving mid-decode) and that reports each row as it
/// ends, so a request is answered when its own rows are done.
pub trait RowFeed {
    /// Rows that join now, between two steps: at most `free`, each with a
    /// prompt of at most `max_prompt_tokens` after the usual cut (a longer
    /// one is cut to it). They take the request's settings with their own
    /// seed and start. Asked on the growing-cache path only.
    fn admit(&mut self, free: usize, max_prompt_tokens: usize) -> Vec<RowStart>;
    /// Whether row `row` (numbered in admission order) was cancelled.
    fn cancelled(&self, row: usize) -> bool;
    /// A sampled token of row `ev.variation`.
    fn token(&mut self, ev: &TokenEvent);
    /// A row has ended (stop token, length, full context or cancelled).
    fn finished(&mut self, row: FinishedRow<'_>);
}

/// A row of a decode as it ends.
#[derive(Debug)]
pub struct FinishedRow<'a> {
    /// The row's number, in admission order (the first rows are the request's).
    pub row: usize,
    pub variation: &'a Variation,
    /// This row's own: prompt to first token from when it joined, decode
    /// steps and time after it; forward and sample time its share of the
    /// decode's.
    pub timings: GenerationTimings,
    /// The most rows decoded together while this row was live.
    pub batch_rows: usize,
    /// Bytes the KV cache held when it ended.
    pub kv_cache_bytes: usize,
    /// How the decode's steps ran, and their kernels (the static path only).
    pub step_runner: Option<StepRunner>,
    pub step_kernels: Option<StepKernels>,
    /// Whether the decode's steps drew their tokens on the device.
    pub device_draws: bool,
}

/// When a row joined, wrote its first token, and how many steps it decoded.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowClock {
    pub(super) joined: Instant,
    pub(super) first_token: Option<Instant>,
    pub(super) steps: usize,
    pub(super) batch_rows: usize,
}

impl RowClock {
    pub(super) fn new(joined: Instant, batch_rows: usize) -> Self {
        Self {
            joined,
            first_token: None,
            steps: 0,
            batch_rows,
        }
    }
}

/// Every row's state: what it wrote, how it samples, what it has seen.
pub(super) struct Rows<'r> {
    pub(super) req: &'r GenerateRequest,
    pub(super) out: Generation,
    pub(super) samplers: Vec<TokenSampler>,
    pub(super) streams: Vec<Utf8Stream>,
    pub(super) contexts: Vec<Vec<u32>>,
    pub(super) starts: Vec<String>,
    pub(super) clocks: Vec<RowClock>,
    /// Rows that ended since the feed last heard of endings.
    pub(super) ended: Vec<usize>,
    /// Set when the decode draws its tokens on the device (the prompt
    /// pass's first tokens then follow the device's definition on the host).
    pub(super) device_draws: Option<DrawSettings>,
}

impl Rows<'_> {
    pub(super) fn push(
        &mut self,
        prompt: Vec<u32>,
        sampler: TokenSampler,
        start: String,
        clock: RowClock,
    ) {
        self.out.variations.push(Variation {
            ids: Vec::new(),
            text: String::new(),
            stop: None,
            relaxed: Vec::new(),
        });
        self.samplers.push(sampler);
        self.streams.push(Utf8Stream::new());
        self.contexts.push(prompt);
        self.starts.push(start);
        self.clocks.push(clock);
    }

    pub(super) fn live(&self, r: usize) -> bool {
        self.out.variations[r].stop.is_none()
    }

    /// Ends row `r` (if still live): the text's tail, the verse rules a
    /// finished poem relaxed.
    pub(super) fn end(&mut self, r: usize, reason: StopReason) {
        let v = &mut self.out.variations[r];
        if v.stop.is_some() {
            return;
        }
        v.stop = Some(reason);
        let tail = self.streams[r].finish();
        v.text.push_str(&tail);
        if let Some((c, _)) = &self.req.constraint {
            if reason == StopReason::Stop && c.enforces_verse_rules() {
                v.relaxed = relaxed_rules(
                    &format!("{}{}", self.starts[r], v.text),
                    &c.form,
                    c.first_ruled_line(),
                );
            }
        }
        self.ended.push(r);
    }

    /// Row `r`'s next draw on the device's definition.
    pub(super) fn draw_row(&self, r: usize, settings: DrawSettings) -> DrawRow {
        DrawRow {
            settings,
            seed: self.samplers[r].seed(),
            draw: u32::try_from(self.out.variations[r].ids.len()).unwrap_or(u32::MAX),
            active: self.live(r),
        }
    }

    /// The tokens row `r`'s form allows next, as bits over `vocab` (all
    /// without a form). Only for constraints that do not read the logits
    /// (verse rules do: those decodes draw on the host).
    pub(super) fn allowed_bits(&self, r: usize, vocab: usize) -> Vec<u32> {
        let Some((c, _)) = &self.req.constraint else {
            return device_draw::all_allowed(vocab);
        };
        let mut probe = vec![0f32; vocab];
        c.apply(
            &format!("{}{}", self.starts[r], self.out.variations[r].text),
            &mut probe,
        );
        let allowed = probe.iter().enumerate().filter(|(_, l)| l.is_finite());
        device_draw::bits_of(allowed.map(|(i, _)| i as u32), vocab)
    }

    /// Before a device-drawing step: every batch row's draw, the allowed
    /// tokens when a form masks them, and at a decode's start what each row
    /// has seen.
    pub(super) fn prepare_device(
        &self,
        decoding: &mut Decoding<'_>,
        slots: &[usize],
        vocab: usize,
    ) -> Result<(), GenerateError> {
        let (Some(settings), Some((sampler, written))) =
            (self.device_draws, decoding.device_sampler())
        else {
            return Ok(());
        };
        let draws: Vec<DrawRow> = slots.iter().map(|&r| self.draw_row(r, settings)).collect();
        if !written {
            let contexts: Vec<&[u32]> = slots.iter().map(|&r| &self.contexts[r][..]).collect();
            sampler.start(&draws, &contexts)?;
        }
        let allowed = self.req.constraint.as_ref().map(|_| {
            slots
                .iter()
                .flat_map(|&r| self.allowed_bits(r, vocab))
                .collect()
        });
        if written || allowed.is_some() {
            sampler.prepare(&draws, allowed)?;
        }
        Ok(())
    }

    /// Each live row's token from a step: drawn from its logits on the host
    /// (by the host sampler, or on the device's definition when the decode
    /// draws there), or as the device drew it.
    pub(super) fn pick(
        &mut self,
        next: Next,
        slots: &[usize],
    ) -> Vec<(usize, Result<u32, GenerateError>)> {
        match (next, self.device_draws) {
            (Next::Logits(l), None) => self.sample(slots.iter().copied().zip(l).collect()),
            (Next::Logits(l), Some(settings)) => {
                let vocab = l.first().map_or(0, Vec::len);
                slots
                    .iter()
                    .zip(&l)
                    .filter(|(&r, _)| self.live(r))
                    .map(|(&r, logits)| {
                        let seen = device_draw::bits_of(self.contexts[r].iter().copied(), vocab);
                        let allowed = self.allowed_bits(r, vocab);
                        let row = self.draw_row(r, settings);
                        let drawn = device_draw::draw_row(logits, &row, &seen, &allowed);
                        (r, drawn.map_err(GenerateError::from))
                    })
                    .collect()
            }
            (Next::Drawn(ids), _) => slots
                .iter()
                .zip(ids)
                .filter(|(&r, _)| self.live(r))
                .map(|(&r, id)| (r, device_draw::drawn(id).map_err(GenerateError::from)))
                .collect(),
        }
    }

    /// Samples the next token of each row that has logits (in parallel: each
    /// row has its own sampler and RNG stream, so the result is the same).
    pub(super) fn sample(
        &mut self,
        logits: Vec<(usize, Vec<f32>)>,
    ) -> Vec<(usize, Result<u32, GenerateError>)> {
        let mut by_row: Vec<Option<Vec<f32>>> = vec![None; self.samplers.len()];
        for (r, l) in logits {
            by_row[r] = Some(l);
        }
        let (variations, starts, contexts) = (&self.out.variations, &self.starts, &self.contexts);
        let constraint = &self.req.constraint;
        let pick = |(r, (sampler, logits)): (usize, (&mut TokenSampler, Option<Vec<f32>>))| {
            let mut row_logits = logits?;
            if variations[r].stop.is_some() {
                return None;
            }
            if let Some((c, _)) = constraint {
                let written = format!("{}{}", starts[r], variations[r].text);
                c.apply(&written, &mut row_logits);
            }
            Some((r, sampler.sample(row_logits, &contexts[r])))
        };
        let live = by_row.iter().filter(|l| l.is_some()).count();
        if live > 1 {
            self.samplers
                .par_iter_mut()
                .zip(by_row)
                .enumerate()
                .filter_map(pick)
                .collect()
        } else {
            self.samplers
                .iter_mut()
                .zip(by_row)
                .enumerate()
                .filter_map(pick)
                .collect()
        }
    }

    /// Takes row `r`'s sampled `id`: ends the row on a stop token or at its
    /// length, else streams it. Returns whether the row goes on.
    pub(super) fn accept<'t>(
        &mut self,
        r: usize,
        id: u32,
        token_bytes: &impl Fn(u32) -> &'t [u8],
        feed: &mut dyn RowFeed,
        now: Instant,
    ) -> bool {
        let clock = &mut self.clocks[r];
        match clock.first_token {
            None => clock.first_token = Some(now),
            Some(_) => clock.steps += 1,
        }
        if self.req.stop_ids.contains(&id) {
            self.end(r, StopReason::Stop);
            return false;
        }
        let text = self.streams[r].push(token_bytes(id));
        let v = &mut self.out.variations[r];
        v.text.push_str(&text);
        v.ids.push(id);
        self.contexts[r].push(id);
        feed.token(&TokenEvent {
            variation: r,
            id,
            text,
        });
        if self.out.variations[r].ids.len() >= self.req.max_new_tokens {
            self.end(r, StopReason::MaxTokens);
            return false;
        }
        true
    }

    /// Records in the answer what the decoding held and how its steps ran.
    pub(super) fn note_decoding(&mut self, decoding: Option<&Decoding<'_>>) {
        if let Some(d) = decoding {
            self.out.kv_cache_bytes = d.cache_bytes();
            self.out.step_runner = d.runner();
            self.out.step_kernels = d.kernels();
        }
    }

    /// Tells the feed of the rows that ended since it last heard.
    pub(super) fn report_ended(&mut self, feed: &mut dyn RowFeed, decoding: Option<&Decoding<'_>>) {
        // Called every step; most steps end no row.
        if self.ended.is_empty() {
            return;
        }
        let kv_cache_bytes = decoding.map_or(0, Decoding::cache_bytes);
        let step_runner = decoding.and_then(Decoding::runner);
        let step_kernels = decoding.and_then(Decoding::kernels);
        let now = Instant::now();
        let whole = &self.out.timings;
        for r in std::mem::take(&mut self.ended) {
            let c = self.clocks[r];
            let share = if whole.decode_steps > 0 {
                c.steps as f64 / whole.decode_steps as f64
            } else {
                0.0
            };
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
            let timings = GenerationTimings {
                first_token_ms: c.first_token.map_or(0.0, |t| ms(c.joined, t)),
                decode_steps: c.steps,
                decode_ms: c.first_token.map_or(0.0, |t| ms(t, now)),
                forward_ms: whole.forward_ms * share,
                sample_ms: whole.sample_ms * share,
            };
            feed.finished(FinishedRow {
                row: r,
                variation: &self.out.variations[r],
                timings,
                batch_rows: c.batch_rows,
                kv_cache_bytes,
                step_runner: step_runner.clone(),
                step_kernels,
                device_draws: self.out.device_draws,
            });
        }
    }
}

impl<'r> Rows<'r> {
    /// The request's first rows, with `prompts` cut to the context.
    pub(super) fn start(
        req: &'r GenerateRequest,
        prompts: &[Vec<u32>],
        started: Instant,
        device_draws: Option<DrawSettings>,
    ) -> Self {
        let first_rows = req.variations;
        let (prompt, truncated) = match req.rows.first() {
            Some(r) => (prompts[0].clone(), r.prompt_ids.len() - prompts[0].len()),
            None => (prompts[0].clone(), req.prompt_ids.len() - prompts[0].len()),
        };
        let mut rows = Rows {
            req,
            out: Generation {
                prompt_ids: prompt,
                truncated_prompt_tokens: truncated,
                variations: Vec::new(),
                timings: GenerationTimings::default(),
                kv_cache_bytes: 0,
                ids_without_text: 0,
                batch_rows: first_rows,
                step_runner: None,
                step_kernels: None,
                device_draws: device_draws.is_some(),
            },
            samplers: Vec::new(),
            streams: Vec::new(),
            contexts: Vec::new(),
            starts: Vec::new(),
            clocks: Vec::new(),
            ended: Vec::new(),
            device_draws,
        };
        let start_text = req
            .constraint
            .as_ref()
            .map(|c| c.1.clone())
            .unwrap_or_default();
        for (r, p) in prompts.iter().enumerate() {
            let (sampler, start) = match req.rows.get(r) {
                Some(row) => (row_sampler(req, row), row.start.clone()),
                None => (TokenSampler::new(&req.sampling, r), start_text.clone()),
            };
            rows.push(
                p.clone(),
                sampler,
                start,
                RowClock::new(started, first_rows),
            );
        }
        rows
    }
}
