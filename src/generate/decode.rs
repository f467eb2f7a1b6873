//! The decode loop with joining rows ([`generate_feeding`]): rows that end
//! leave the batch, rows the feed admits join it between steps.

#[allow(clippy::wildcard_imports)] // the module's imports, as if this were mod.rs
use super::*;

/// [`generate_rows`] with a [`RowFeed`]: on the growing-cache path (the
/// CPU's) rows that end leave the batch, and rows the feed admits between
/// steps join it, up to [`MAX_VARIATIONS`]; each row ends as it would have
/// alone. The result holds every row, in admission order.
#[allow(clippy::too_many_lines)] // the decode loop; a `Decode` struct whose `run` calls small steps is the next cut (issue #42)
pub fn generate_feeding<'t>(
    path: DecodePath,
    model: &Gpt2,
    req: &GenerateRequest,
    token_bytes: impl Fn(u32) -> &'t [u8],
    feed: &mut dyn RowFeed,
) -> Result<Generation, GenerateError> {
    validate_request(model, req)?;
    let n_positions = model.config().n_positions;
    // Keep room for the requested tokens. The caller reports the drop
    // (`truncated_prompt_tokens`); it is not logged here as well.
    let keep = prompt_tokens_kept_for(req, n_positions);
    let slides = slides_context(req);
    let rolling = path == DecodePath::Growing;
    let cut = |ids: &[u32]| ids[ids.len().saturating_sub(keep)..].to_vec();
    let first_rows = req.variations;
    let prompts: Vec<Vec<u32>> = if req.rows.is_empty() {
        vec![cut(&req.prompt_ids); first_rows]
    } else {
        req.rows.iter().map(|r| cut(&r.prompt_ids)).collect()
    };
    let started = Instant::now();
    let device_draws = path.device_draws(req, model.config().vocab_size);
    let mut rows = Rows::start(req, &prompts, started, device_draws);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let columns = static_columns(longest, req.max_new_tokens, n_positions);
    let on_device = rows.device_draws.is_some();
    let mut decoding = Some(Decoding::open(path, model, first_rows, columns, on_device)?);
    // Which row each batch row is (rows leave and join on the growing path).
    let mut slots: Vec<usize> = (0..first_rows).collect();
    // Rows that start from the same prompt (the variations of one request,
    // or requests that asked the same) share one prompt pass on the growing
    // path: each distinct prompt is computed once and its keys and values
    // copied to its rows. (Eight variations of a 3-token prompt were 24 rows,
    // past the packed kernel's limit: the weights widened for a GEMM.)
    let mut first_logits = None;
    if rolling {
        let mut distinct: Vec<Vec<u32>> = Vec::new();
        let of_row: Vec<usize> = prompts
            .iter()
            .map(|p| match distinct.iter().position(|d| d == p) {
                Some(i) => i,
                None => {
                    distinct.push(p.clone());
                    distinct.len() - 1
                }
            })
            .collect();
        if distinct.len() < prompts.len() {
            let (mut cache, logits) =
                prefill(model, &distinct).map_err(|e| fail(e.into(), rows.out.clone()))?;
            cache
                .select_rows(&of_row)
                .map_err(|e| fail(e.into(), rows.out.clone()))?;
            decoding = Some(Decoding::Growing(cache));
            first_logits = Some(of_row.iter().map(|&i| logits[i].clone()).collect());
        }
    }

    let mut input = TokenBatch::left_padded(&prompts, 0);
    let mut step = 0usize;
    let mut decode_started = None;
    loop {
        for &r in &slots {
            if rows.live(r) && feed.cancelled(r) {
                rows.end(r, StopReason::Cancelled);
            }
        }
        if slots.iter().all(|&r| !rows.live(r)) {
            break;
        }
        let forward_started = Instant::now();
        let Some(open) = decoding.as_mut() else {
            break;
        };
        rows.prepare_device(open, &slots, model.config().vocab_size)
            .map_err(|e| fail(e, rows.out.clone()))?;
        let next = match first_logits.take() {
            Some(l) => Ok(Next::Logits(l)),
            None => open.next(model, &input),
        };
        let next = match next {
            Ok(l) => l,
            Err(ForwardError::ContextFull { .. }) if slides => {
                // The form needs more tokens than the context holds: keep each
                // row's first token (the start) and the latest half of its
                // context, and go on from there (positions restart).
                let half = n_positions / 2;
                let tails: Vec<Vec<u32>> = slots
                    .iter()
                    .map(|&r| {
                        let c = &rows.contexts[r];
                        let from = c.len().saturating_sub(half).max(1);
                        c[..1.min(c.len())]
                            .iter()
                            .chain(&c[from..])
                            .copied()
                            .collect()
                    })
                    .collect();
                let longest = tails.iter().map(Vec::len).max().unwrap_or(1);
                let columns = static_columns(longest, req.max_new_tokens, n_positions);
                // The old decoder (and its lock on the static buffers) goes first.
                drop(decoding.take());
                decoding = Some(Decoding::open(
                    path,
                    model,
                    slots.len(),
                    columns,
                    on_device,
                )?);
                input = TokenBatch::left_padded(&tails, 0);
                continue;
            }
            Err(ForwardError::ContextFull { .. }) => {
                for &r in &slots {
                    rows.end(r, StopReason::ContextFull);
                }
                break;
            }
            Err(e) => return Err(fail(e.into(), rows.out)),
        };
        let sample_started = Instant::now();
        if step > 0 {
            rows.out.timings.forward_ms +=
                (sample_started - forward_started).as_secs_f64() * 1000.0;
        }
        let picks = rows.pick(next, &slots);
        if step > 0 {
            rows.out.timings.sample_ms += sample_started.elapsed().as_secs_f64() * 1000.0;
        }
        let now = Instant::now();
        let mut next: Vec<(usize, u32)> = Vec::with_capacity(slots.len());
        for (r, picked) in picks {
            match picked {
                Ok(id) => {
                    if rows.accept(r, id, &token_bytes, feed, now) {
                        next.push((r, id));
                    }
                }
                Err(e) => return Err(fail(e, rows.out)),
            }
        }
        if step == 0 {
            rows.out.timings.first_token_ms = started.elapsed().as_secs_f64() * 1000.0;
            decode_started = Some(Instant::now());
        } else {
            rows.out.timings.decode_steps += 1;
        }
        step += 1;
        rows.report_ended(feed, decoding.as_ref());
        if rolling {
            let mut newcomers_ended = false;
            // Rows that ended leave the batch; others may join it.
            if let Some(Decoding::Growing(cache)) = decoding.as_mut() {
                let stay: Vec<bool> = slots.iter().map(|&r| rows.live(r)).collect();
                if stay.iter().any(|k| *k) {
                    cache
                        .retain_rows(&stay)
                        .map_err(|e| fail(e.into(), rows.out.clone()))?;
                    slots.retain(|&r| rows.live(r));
                }
                let free = MAX_VARIATIONS.saturating_sub(slots.len());
                if !slots.is_empty() && free > 0 {
                    let max_prompt = cache.len().min(keep);
                    let joining = feed.admit(free, max_prompt);
                    if !joining.is_empty() {
                        let joined = admit_rows(
                            model,
                            cache,
                            &mut rows,
                            &joining,
                            max_prompt,
                            feed,
                            &token_bytes,
                        )
                        .map_err(|e| fail(e, rows.out.clone()))?;
                        slots.extend(joined.iter().map(|(r, _)| *r));
                        next.extend(
                            joined
                                .into_iter()
                                .filter_map(|(r, id)| id.map(|id| (r, id))),
                        );
                        newcomers_ended = true;
                    }
                }
            }
            if newcomers_ended {
                rows.report_ended(feed, decoding.as_ref());
            }
            {
                let batch = slots.len();
                for &r in &slots {
                    let c = &mut rows.clocks[r];
                    c.batch_rows = c.batch_rows.max(batch);
                }
                rows.out.batch_rows = rows.out.batch_rows.max(batch);
            }
        }
        if next.is_empty() {
            break;
        }
        // One input per batch row; a row that ended this step (on the static
        // path, where nobody leaves) is fed a masked placeholder.
        let mut ids = vec![0u32; slots.len()];
        let mut live = vec![false; slots.len()];
        for (r, id) in next {
            if let Some(s) = slots.iter().position(|&x| x == r) {
                ids[s] = id;
                live[s] = true;
            }
        }
        input = TokenBatch::step(ids, live);
    }
    if let Some(t) = decode_started {
        rows.out.timings.decode_ms = t.elapsed().as_secs_f64() * 1000.0;
    }
    rows.note_decoding(decoding.as_ref());
    rows.report_ended(feed, decoding.as_ref());
    Ok(rows.out)
}

/// `prompts` (left-padded) through the model in a cache of their own: the
/// cache and each row's logits after its last token.
pub(super) fn prefill(
    model: &Gpt2,
    prompts: &[Vec<u32>],
) -> Result<(KvCache, Vec<Vec<f32>>), ForwardError> {
    let mut cache = model.new_cache(prompts.len());
    let batch = TokenBatch::left_padded(prompts, 0);
    // On a rayon worker on the CPU, as the decode's steps (see `next_logits`).
    let logits = if model.device().is_cpu() {
        rayon::scope(|_| model.forward_last(&batch, &mut cache))
    } else {
        model.forward_last(&batch, &mut cache)
    }?;
    let logits = logits
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?;
    Ok((cache, logits))
}

/// The sampler of a joined row: the request's settings with the row's seed,
/// as variation `variation` of it.
pub(super) fn row_sampler(req: &GenerateRequest, row: &RowStart) -> TokenSampler {
    let sampling = SamplingParams {
        seed: row.seed,
        ..req.sampling.clone()
    };
    TokenSampler::new(&sampling, row.variation)
}

/// Prefills `joining` together in a cache of their own (their prompts cut to
/// `max_prompt` tokens), appends it to `cache`, and samples each one's first
/// token. Returns each new row with that token when the row goes on.
pub(super) fn admit_rows<'t>(
    model: &Gpt2,
    cache: &mut KvCache,
    rows: &mut Rows<'_>,
    joining: &[RowStart],
    max_prompt: usize,
    feed: &mut dyn RowFeed,
    token_bytes: &impl Fn(u32) -> &'t [u8],
) -> Result<Vec<(usize, Option<u32>)>, GenerateError> {
    let joined = Instant::now();
    let prompts: Vec<Vec<u32>> = joining
        .iter()
        .map(|j| j.prompt_ids[j.prompt_ids.len().saturating_sub(max_prompt)..].to_vec())
        .collect();
    let (fresh, logits) = prefill(model, &prompts)?;
    cache.admit(fresh)?;
    let first = rows.samplers.len();
    for (j, p) in joining.iter().zip(prompts) {
        let clock = RowClock::new(joined, cache.batch());
        rows.push(p, row_sampler(rows.req, j), j.start.clone(), clock);
    }
    let picks = rows.sample((first..).zip(logits).collect());
    let mut out = Vec::with_capacity(picks.len());
    for (r, picked) in picks {
        let id = picked?;
        let goes_on = rows.accept(r, id, token_bytes, feed, Instant::now());
        out.push((r, goes_on.then_some(id)));
    }
    Ok(out)
}

/// The verse rules a finished poem breaks, as the checker finds them.
/// The rules a finished poem breaks from line `first_ruled` (1-based) on.
/// Free verse (first ruled line 2) that took no regulated shape was never
/// held to them.
pub(super) fn relaxed_rules(
    poem: &str,
    form: &forms::PoemForm,
    first_ruled: usize,
) -> Vec<crate::poetry::Relaxed> {
    if first_ruled > 1 && forms::regular_form(poem).is_none() {
        return Vec::new();
    }
    crate::poetry::check_in_form(poem, form)
        .problems
        .into_iter()
        .filter(|p| p.line >= first_ruled)
        .map(|p| crate::poetry::Relaxed {
            line: p.line,
            column: p.column,
            rule: p.rule.label().to_string(),
        })
        .collect()
}

pub(super) fn fail(source: GenerateError, partial: Generation) -> GenerateError {
    GenerateError::Failed {
        source: Box::new(source),
        partial: Box::new(partial),
    }
}
