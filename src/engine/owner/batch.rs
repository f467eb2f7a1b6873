//! Decoding jobs together: which queued jobs may join a batch, the batch's
//! side of a running decode (`JoinedRequests`, a `RowFeed`), and each job
//! answered as its own rows end.

#[allow(clippy::wildcard_imports)] // the owner's imports, as if this were owner.rs
use super::*;

/// Whether `next` can be decoded in one batch with `first`.
pub(super) fn joinable(first: &GenerateJob, next: &GenerateJob) -> bool {
    first.spec == next.spec
        && first.form == next.form
        && first.verse == next.verse
        // Keywords are placed after the prompt: one plan, one prompt.
        && (first.verse.keywords.is_empty() || first.prompt == next.prompt)
        && first.max_new_tokens == next.max_new_tokens
        && SamplingParams {
            seed: first.sampling.seed,
            ..next.sampling.clone()
        } == first.sampling
}

/// A job's request as token ids and settings, checked against the model.
pub(super) fn prepare_job(
    model: &LoadedModel,
    job: &GenerateJob,
) -> Result<GenerateRequest, JobFailure> {
    let settings = RequestSettings {
        prompt: &job.prompt,
        form: &job.form,
        variations: job.variations,
        max_new_tokens: job.max_new_tokens,
        sampling: &job.sampling,
        verse: &job.verse,
    };
    let req = prepare_request(model, &settings).map_err(|e| {
        let kind = match e {
            PrepareError::BadRequest(_) => ErrorKind::BadRequest,
            PrepareError::NoTokenizer { .. } => ErrorKind::BadModel,
        };
        JobFailure::new(kind, e.to_string())
    })?;
    validate_request(&model.model, &req)
        .map_err(|e| JobFailure::new(ErrorKind::BadRequest, e.to_string()))?;
    Ok(req)
}

/// The rows of a prepared request, as rows of a joined batch.
pub(super) fn row_starts(r: &GenerateRequest) -> impl Iterator<Item = RowStart> + '_ {
    (0..r.variations).map(move |variation| RowStart {
        prompt_ids: r.prompt_ids.clone(),
        seed: r.sampling.seed,
        variation,
        start: r
            .constraint
            .as_ref()
            .map(|c| c.1.clone())
            .unwrap_or_default(),
    })
}

/// One request of a decode: its prompt, and its rows as they end.
pub(super) struct JobInDecode {
    id: RequestId,
    prompt_ids: Vec<u32>,
    rows: Vec<Option<EndedRow>>,
    answered: bool,
}

/// What a row left when it ended.
pub(super) struct EndedRow {
    variation: Variation,
    timings: GenerationTimings,
    batch_rows: usize,
    kv_cache_bytes: usize,
    step_runner: Option<crate::model::StepRunner>,
    step_kernels: Option<crate::model::StepKernels>,
    device_draws: bool,
}

impl JobInDecode {
    /// The job's answer without its variations, its prompt cut to the
    /// `keep` tokens the decode kept.
    pub(super) fn generation_base(&self, keep: usize, timings: GenerationTimings) -> Generation {
        let cut = self.prompt_ids.len().saturating_sub(keep);
        Generation {
            prompt_ids: self.prompt_ids[cut..].to_vec(),
            truncated_prompt_tokens: cut,
            variations: Vec::new(),
            timings,
            kv_cache_bytes: 0,
            ids_without_text: 0,
            batch_rows: 0,
            step_runner: None,
            step_kernels: None,
            device_draws: false,
        }
    }

    /// The job's answer once every row has ended (`None` before): its
    /// variations in order, the slowest row's timings, the largest batch and
    /// cache it was part of, and its ids past the tokenizer's `vocab`.
    pub(super) fn generation(&mut self, keep: usize, vocab: Option<usize>) -> Option<Generation> {
        if self.rows.iter().any(Option::is_none) {
            return None;
        }
        let rows: Vec<EndedRow> = self.rows.iter_mut().filter_map(Option::take).collect();
        let slowest = rows
            .iter()
            .max_by(|a, b| {
                let end = |r: &EndedRow| r.timings.first_token_ms + r.timings.decode_ms;
                end(a).total_cmp(&end(b))
            })
            .map(|r| r.timings.clone())
            .unwrap_or_default();
        let mut g = self.generation_base(keep, slowest);
        g.batch_rows = rows.iter().map(|r| r.batch_rows).max().unwrap_or(0);
        g.kv_cache_bytes = rows.iter().map(|r| r.kv_cache_bytes).max().unwrap_or(0);
        g.step_runner = rows.iter().find_map(|r| r.step_runner.clone());
        g.step_kernels = rows.iter().find_map(|r| r.step_kernels);
        g.device_draws = rows.iter().any(|r| r.device_draws);
        g.variations = rows.into_iter().map(|r| r.variation).collect();
        if let Some(vocab) = vocab {
            g.ids_without_text = g
                .variations
                .iter()
                .flat_map(|v| &v.ids)
                .filter(|&&id| id as usize >= vocab)
                .count();
        }
        Some(g)
    }
}

/// The engine's side of a decode (a [`RowFeed`]): whose each row is, the
/// jobs that join while it runs (taken from the head of the queue, so none
/// overtakes another command), and each job's `Done` as its rows end.
pub(super) struct JoinedRequests<'e> {
    engine: &'e OwnerThread,
    model: &'e LoadedModel,
    /// The first job: others join when [`joinable`] with it.
    template: GenerateJob,
    /// Prompt tokens kept (the same for every joinable job).
    keep: usize,
    /// Per row (admission order): its job and variation number.
    owners: Vec<(RequestId, usize)>,
    jobs: Vec<JobInDecode>,
    /// Rows of `MAX_VARIATIONS` the fit check did not allow.
    spare_rows: usize,
    deferred: &'e mut VecDeque<Command>,
    /// Swaps that finished loading meanwhile, applied after the decode.
    late_swaps: &'e mut Vec<Result<Resident, JobFailure>>,
    /// The next job in line, prepared, waiting for room or columns.
    held: Option<(GenerateJob, GenerateRequest)>,
}

impl JoinedRequests<'_> {
    pub(super) fn register(&mut self, job: GenerateJob, req: GenerateRequest) {
        self.owners.extend((0..req.variations).map(|v| (job.id, v)));
        self.jobs.push(JobInDecode {
            id: job.id,
            prompt_ids: req.prompt_ids,
            rows: (0..req.variations).map(|_| None).collect(),
            answered: false,
        });
    }

    pub(super) fn is_cancelled(&self, id: RequestId) -> bool {
        self.engine.cancel_up_to.load(Ordering::Relaxed) >= id
            || self
                .engine
                .cancelled
                .lock()
                .is_ok_and(|set| set.contains(&id))
    }
}

impl RowFeed for JoinedRequests<'_> {
    fn admit(&mut self, free: usize, max_prompt_tokens: usize) -> Vec<RowStart> {
        // A swap in flight may be about to change the model: nobody joins.
        if self.engine.swap.is_some() {
            return Vec::new();
        }
        let loaded = take_inbox(&self.engine.inbox, self.deferred);
        self.late_swaps.extend(loaded);
        let mut free = free.saturating_sub(self.spare_rows);
        let mut rows = Vec::new();
        loop {
            let (job, req) = match self.held.take() {
                Some(held) => held,
                None => {
                    let next_joins = matches!(self.deferred.front(),
                        Some(Command::Generate(next)) if joinable(&self.template, next));
                    let Some(Command::Generate(job)) =
                        next_joins.then(|| self.deferred.pop_front()).flatten()
                    else {
                        break;
                    };
                    match prepare_job(self.model, &job) {
                        Ok(req) => (job, req),
                        Err(f) => {
                            // Answered now, not when the decode ends: a
                            // bad request is the client's to fix.
                            if let Ok(mut set) = self.engine.cancelled.lock() {
                                set.remove(&job.id);
                            }
                            self.engine.emit(f.into_event(Some(job.id)));
                            continue;
                        }
                    }
                }
            };
            if req.variations > free || req.prompt_ids.len().min(self.keep) > max_prompt_tokens {
                // No room yet, or longer than the decode's columns so far:
                // held (prepared once), it joins a few steps later or starts
                // the next decode, still first in line.
                self.held = Some((job, req));
                break;
            }
            tracing::debug!(
                request = job.id,
                rows = req.variations,
                "joining a running decode"
            );
            free -= req.variations;
            rows.extend(row_starts(&req));
            self.register(job, req);
        }
        rows
    }

    fn cancelled(&self, row: usize) -> bool {
        self.owners
            .get(row)
            .is_some_and(|(id, _)| self.is_cancelled(*id))
    }

    fn token(&mut self, ev: &TokenEvent) {
        if ev.text.is_empty() {
            return;
        }
        if let Some(&(request, variation)) = self.owners.get(ev.variation) {
            if let Some(w) = &self.engine.waker {
                w();
            }
            let _ = self.engine.events.send(Event::Token {
                request,
                variation,
                text: ev.text.clone(),
            });
        }
    }

    fn finished(&mut self, row: FinishedRow<'_>) {
        let Some(&(id, v)) = self.owners.get(row.row) else {
            return;
        };
        let Some(job) = self.jobs.iter_mut().find(|j| j.id == id) else {
            return;
        };
        if let Some(slot) = job.rows.get_mut(v) {
            *slot = Some(EndedRow {
                variation: row.variation.clone(),
                timings: row.timings,
                batch_rows: row.batch_rows,
                kv_cache_bytes: row.kv_cache_bytes,
                step_runner: row.step_runner,
                step_kernels: row.step_kernels,
                device_draws: row.device_draws,
            });
        }
        let vocab = self.model.tokenizer.as_ref().map(|t| t.vocab_size());
        if let Some(generation) = job.generation(self.keep, vocab) {
            job.answered = true;
            if let Ok(mut set) = self.engine.cancelled.lock() {
                set.remove(&id);
            }
            self.engine.emit(Event::Done {
                request: id,
                generation,
            });
        }
    }
}

impl OwnerThread {
    /// Takes the Generate jobs queued right behind `first` that can share its
    /// decode (same model, form, rules, length and sampling but the seed), up
    /// to the batch cap. Only a contiguous run at the head of the queue joins,
    /// so no job ever overtakes another command.
    pub(super) fn join_queued(&mut self, first: GenerateJob) -> Vec<GenerateJob> {
        if self.swap.is_none() {
            // No swap in flight: nothing can be loading beside us.
            for result in take_inbox(&self.inbox, &mut self.deferred) {
                self.finish_swap(result);
            }
        }
        if self.swap.is_none() && !self.batch_window.is_zero() {
            self.wait_for_joiners(&first);
        }
        let mut rows = first.variations;
        let mut jobs = vec![first];
        while let Some(Command::Generate(next)) = self.deferred.front() {
            if !joinable(&jobs[0], next) || rows + next.variations > MAX_VARIATIONS {
                break;
            }
            rows += next.variations;
            if let Some(Command::Generate(next)) = self.deferred.pop_front() {
                jobs.push(next);
            }
        }
        jobs
    }

    /// The batch window: until the queue behind `first` holds a full batch of
    /// compatible rows, or something else, wait up to `batch_window` for more
    /// (requests of clients that were answered a moment ago, or of a burst
    /// still arriving).
    pub(super) fn wait_for_joiners(&mut self, first: &GenerateJob) {
        let compatible_rows = |deferred: &VecDeque<Command>| {
            let mut rows = first.variations;
            for cmd in deferred {
                match cmd {
                    Command::Generate(next) if joinable(first, next) => rows += next.variations,
                    _ => return (rows, true),
                }
            }
            (rows, false)
        };
        let deadline = Instant::now() + self.batch_window;
        loop {
            let (rows, blocked) = compatible_rows(&self.deferred);
            if blocked || rows >= MAX_VARIATIONS {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok(Inbox::Command(cmd)) => self.deferred.push_back(cmd),
                Ok(Inbox::SwapLoaded(result)) => self.finish_swap(*result),
                Err(_) => return,
            }
        }
    }

    /// Runs `jobs` (one, or several joined by [`Self::join_queued`]) as one
    /// batched decode. Each job gets its own tokens and its own `Done` or
    /// error; a cancelled job's rows stop while the others go on.
    pub(super) fn run_jobs(&mut self, mut jobs: Vec<GenerateJob>) {
        let rows: usize = jobs.iter().map(|j| j.variations).sum();
        tracing::debug!(jobs = jobs.len(), rows, "decoding requests as one batch");
        if let Err(f) = self.ensure_loaded(&jobs[0].spec, rows) {
            if jobs.len() > 1 && f.kind == ErrorKind::DoesNotFit {
                // Together they do not fit: each runs on its own, in order.
                for job in jobs.drain(1..).rev() {
                    self.deferred.push_front(Command::Generate(job));
                }
                return self.run_jobs(jobs);
            }
            for job in &jobs[1..] {
                self.fail(Some(job.id), f.for_another());
            }
            return self.fail(Some(jobs[0].id), f);
        }
        let Some(resident) = self.loaded.as_ref() else {
            for job in &jobs {
                let f = JobFailure::new(ErrorKind::Internal, "model vanished after loading".into());
                self.fail(Some(job.id), f);
            }
            return;
        };
        let m = &resident.model;
        let resident_actual = resident.actual;
        let spec = jobs[0].spec.clone();
        let mut prepared = Vec::with_capacity(jobs.len());
        let mut refused = Vec::new();
        for job in jobs {
            match prepare_job(m, &job) {
                Ok(req) => prepared.push((job, req)),
                Err(f) => refused.push((job.id, f)),
            }
        }
        // Jobs that arrive while it decodes may join it, as many rows as the
        // fit check allows (checked once here, not per step).
        let cap = if rows >= MAX_VARIATIONS
            || self
                .check_fit(&spec, resident_actual, MAX_VARIATIONS)
                .is_err()
        {
            rows
        } else {
            MAX_VARIATIONS
        };
        let mut deferred = std::mem::take(&mut self.deferred);
        let mut late_swaps = Vec::new();
        let failures = if prepared.is_empty() {
            Vec::new()
        } else {
            self.decode_joined(prepared, cap, &mut deferred, &mut late_swaps)
        };
        self.deferred = deferred;
        for result in late_swaps {
            self.finish_swap(result);
        }
        for (id, f) in refused {
            self.fail(Some(id), f);
        }
        for (request, mut f) in failures {
            if let Ok(mut set) = self.cancelled.lock() {
                set.remove(&request);
            }
            if is_out_of_memory(&f.message) {
                let partial = f.partial.take();
                f = self.out_of_memory_failure(MemoryStage::Generate, &spec, rows, &f.message);
                f.partial = partial;
            }
            self.fail(Some(request), f);
        }
    }

    /// The decode of [`Self::run_jobs`]: one request of all the jobs' rows,
    /// its tokens sent as each job's events. Each job is answered (`Done`) as
    /// soon as its own rows end, and on the growing path compatible jobs that
    /// arrive meanwhile join the decode between steps (up to `cap` rows).
    /// Returns the failures of the jobs not answered when the decode failed.
    pub(super) fn decode_joined(
        &self,
        prepared: Vec<(GenerateJob, GenerateRequest)>,
        cap: usize,
        deferred: &mut VecDeque<Command>,
        late_swaps: &mut Vec<Result<Resident, JobFailure>>,
    ) -> Vec<(RequestId, JobFailure)> {
        let Some(resident) = self.loaded.as_ref() else {
            return Vec::new();
        };
        let m = &resident.model;
        let Some(template) = prepared.first().map(|(job, _)| job.clone()) else {
            return Vec::new();
        };
        let req = match prepared.as_slice() {
            [(_, only)] => only.clone(),
            [(_, first), ..] => GenerateRequest {
                variations: prepared.iter().map(|(_, r)| r.variations).sum(),
                rows: prepared.iter().flat_map(|(_, r)| row_starts(r)).collect(),
                ..first.clone()
            },
            [] => return Vec::new(),
        };
        self.set_state(EngineState::Generating);
        let mut feed = JoinedRequests {
            engine: self,
            model: m,
            template,
            keep: prompt_tokens_kept_for(&req, m.config.n_positions),
            owners: Vec::new(),
            jobs: Vec::new(),
            spare_rows: MAX_VARIATIONS.saturating_sub(cap),
            deferred,
            late_swaps,
            held: None,
        };
        for (job, r) in prepared {
            feed.register(job, r);
        }
        let bytes = |id: u32| -> &[u8] { m.tokenizer.as_ref().map_or(&[], |t| t.token_bytes(id)) };
        let path = crate::generate::DecodePath::for_device(m.model.device());
        let result = generate_feeding(path, &m.model, &req, bytes, &mut feed);
        if let Some((job, _)) = feed.held.take() {
            feed.deferred.push_front(Command::Generate(job));
        }
        let JoinedRequests {
            jobs, owners, keep, ..
        } = feed;
        let e = match result {
            Ok(_) => return Vec::new(),
            Err(e) => e,
        };
        let message = e.to_string();
        let (kind, partial) = match e {
            GenerateError::Invalid { .. } => (ErrorKind::BadRequest, None),
            GenerateError::Failed { partial, .. } => (ErrorKind::Generation, Some(partial)),
            _ => (ErrorKind::Generation, None),
        };
        let mut failures = Vec::new();
        for job in jobs.into_iter().filter(|j| !j.answered) {
            // Each unanswered job's rows of the partial output, in its order.
            let partial = partial.as_ref().map(|p| {
                let variations = owners
                    .iter()
                    .zip(&p.variations)
                    .filter(|((id, _), _)| *id == job.id)
                    .map(|(_, v)| v.clone())
                    .collect();
                Box::new(Generation {
                    variations,
                    ..job.generation_base(keep, p.timings.clone())
                })
            });
            // An out-of-memory is turned into the engine's report by the caller.
            failures.push((
                job.id,
                JobFailure {
                    kind,
                    message: crate::without_backtrace(&message),
                    partial,
                    fit: None,
                },
            ));
        }
        failures
    }
}

/// Everything waiting in the inbox, without blocking: commands queue behind
/// `deferred` in order; the results of swaps that finished loading are
/// returned for the caller to apply when it may.
pub(super) fn take_inbox(
    inbox: &Receiver<Inbox>,
    deferred: &mut VecDeque<Command>,
) -> Vec<Result<Resident, JobFailure>> {
    let mut loaded = Vec::new();
    while let Ok(msg) = inbox.try_recv() {
        match msg {
            Inbox::Command(cmd) => deferred.push_back(cmd),
            Inbox::SwapLoaded(result) => loaded.push(*result),
        }
    }
    loaded
}
