//! The next token drawn on the device, inside the captured decode step: only
//! each row's chosen id crosses to the host.
//!
//! Owns: the device draw's definition ([`draw_row`], the reference that
//! `device_draw.cu` follows step for step), the one state buffer it reads and
//! writes (settings, seen tokens and allowed tokens of every row, the ids it
//! chose), the custom op that runs it (the CUDA kernel, or [`draw_row`] on the
//! CPU) and [`DeviceSampler`], the [`StepTail`] a static decoder captures after
//! its logits. Must not: decide which requests draw here (the decode loop in
//! `generate/mod.rs` does) or change the host sampler's draws.
//!
//! The draw: the repetition penalty on every token already in the sequence,
//! the allowed tokens (a form's mask, as bits), then greedy (the highest
//! score, the lowest id on ties) or the temperature, the top k in rank order
//! (higher score first, then the lower id), the nucleus over them (rank `j`
//! kept while the probability mass before it, over the whole vocabulary, is
//! under `top_p`), and a Gumbel-max draw among those kept, its noise a hash of
//! (seed, draw number, token id). That is the distribution of the host sampler
//! (candle-transformers' `LogitsProcessor`), but not its draws: the same seed
//! writes another poem here than on the host. A GPU cannot make the host's
//! moves cheaply (its top k comes from a sequential selection whose order
//! decides the draw), and an order-free draw is what makes this one the same
//! in every run. Settings the kernel does not cover (a nucleus without a top
//! k, a top k over 256) stay on the host: see [`DrawSettings::of`].

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor};

use crate::model::StepTail;

use super::{GenerateError, SamplingParams};

/// The largest top k the device draws (the kernel sorts the top k in one
/// block of this many threads).
pub const MAX_DEVICE_TOP_K: usize = 256;
/// u32 words of a row's header in the state buffer.
const HEADER: usize = 8;
const FLAG_GREEDY: u32 = 1;
const FLAG_ACTIVE: u32 = 2;
/// What the kernel writes for a row whose mask leaves no token.
const NO_TOKEN: u32 = u32::MAX;
/// What it writes for a row with a NaN or +inf score.
const NON_FINITE: u32 = u32::MAX - 1;
/// Threads of the kernel's block; the reference sums in their order.
const DRAW_THREADS: usize = 256;
/// The nucleus of `top_p >= 1` (every rank kept whatever the rounding).
const NO_NUCLEUS: f32 = 2.0;

/// What the device draws with, worked out from [`SamplingParams`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrawSettings {
    pub greedy: bool,
    /// `1 / temperature` in f32, as the host sampler scales.
    pub inv_temperature: f32,
    /// 0: every allowed token.
    pub top_k: u32,
    pub top_p: f32,
    pub penalty: f32,
}

impl DrawSettings {
    /// The device draw of `params` over `vocab` tokens, or why those settings
    /// are drawn on the host: a nucleus without a top k needs the whole
    /// vocabulary sorted, and a top k over [`MAX_DEVICE_TOP_K`] does not fit
    /// the kernel's sort.
    pub fn of(params: &SamplingParams, vocab: usize) -> Result<Self, String> {
        let penalty = params.repetition_penalty;
        if params.greedy {
            return Ok(Self {
                greedy: true,
                inv_temperature: 1.0,
                top_k: 0,
                top_p: NO_NUCLEUS,
                penalty,
            });
        }
        let top_k = if params.top_k >= vocab {
            0
        } else {
            params.top_k
        };
        let nucleus = params.top_p < 1.0;
        if top_k == 0 && nucleus {
            return Err(format!(
                "top_p {} without top_k needs the whole vocabulary sorted",
                params.top_p
            ));
        }
        if top_k > MAX_DEVICE_TOP_K {
            return Err(format!(
                "top_k {top_k} is over the device's {MAX_DEVICE_TOP_K}"
            ));
        }
        Ok(Self {
            greedy: false,
            inv_temperature: (1.0 / params.temperature) as f32,
            top_k: top_k as u32,
            top_p: if nucleus {
                params.top_p as f32
            } else {
                NO_NUCLEUS
            },
            penalty,
        })
    }
}

/// One row's draw: its settings, seed and how many tokens it has drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrawRow {
    pub settings: DrawSettings,
    pub seed: u64,
    /// Tokens this row has drawn so far (the noise's counter).
    pub draw: u32,
    /// False for a row that has ended: the kernel leaves it alone.
    pub active: bool,
}

impl DrawRow {
    fn header(&self) -> [u32; HEADER] {
        let s = &self.settings;
        let flags = u32::from(s.greedy) * FLAG_GREEDY + u32::from(self.active) * FLAG_ACTIVE;
        [
            self.seed as u32,
            (self.seed >> 32) as u32,
            self.draw,
            s.top_k,
            flags,
            s.inv_temperature.to_bits(),
            s.top_p.to_bits(),
            s.penalty.to_bits(),
        ]
    }

    fn from_header(h: &[u32]) -> Self {
        Self {
            settings: DrawSettings {
                greedy: h[4] & FLAG_GREEDY != 0,
                inv_temperature: f32::from_bits(h[5]),
                top_k: h[3],
                top_p: f32::from_bits(h[6]),
                penalty: f32::from_bits(h[7]),
            },
            seed: u64::from(h[0]) | (u64::from(h[1]) << 32),
            draw: h[2],
            active: h[4] & FLAG_ACTIVE != 0,
        }
    }
}

/// Why a row could not draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DrawFailure {
    #[error("the form's mask leaves no token to draw")]
    NoToken,
    #[error("a score is NaN or infinite")]
    NonFinite,
}

impl From<DrawFailure> for GenerateError {
    fn from(f: DrawFailure) -> Self {
        match f {
            DrawFailure::NonFinite => GenerateError::NonFinite,
            DrawFailure::NoToken => GenerateError::Candle(candle_core::Error::Msg(format!(
                "cannot draw a token on the device: {f}"
            ))),
        }
    }
}

/// u32 words of a bit set over `vocab` tokens.
pub fn bit_words(vocab: usize) -> usize {
    vocab.div_ceil(32)
}

fn bit(bits: &[u32], i: usize) -> bool {
    bits.get(i / 32).is_some_and(|w| (w >> (i % 32)) & 1 == 1)
}

/// The bit set of `ids` over `vocab` tokens (ids past it are left out).
pub fn bits_of(ids: impl IntoIterator<Item = u32>, vocab: usize) -> Vec<u32> {
    let mut bits = vec![0u32; bit_words(vocab)];
    for id in ids {
        if (id as usize) < vocab {
            bits[id as usize / 32] |= 1 << (id % 32);
        }
    }
    bits
}

/// Every token allowed.
pub fn all_allowed(vocab: usize) -> Vec<u32> {
    bits_of(0..vocab as u32, vocab)
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The Gumbel noise of token `id` in draw `draw` of the row seeded `seed`.
pub fn gumbel(seed: u64, draw: u32, id: u32) -> f32 {
    let h = mix64(
        mix64(seed.wrapping_add(u64::from(draw).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            ^ u64::from(id).wrapping_mul(0xd1b5_4a32_d192_ed03),
    );
    // 23 bits and a half, times 2^-23: strictly inside (0, 1), exact in f32.
    let u = ((h >> 41) as u32 as f32 + 0.5) * 1.192_092_9e-7;
    -(-u.ln()).ln()
}

/// The row's score of token `i` (see the module docs).
fn score(logits: &[f32], seen: &[u32], allowed: &[u32], i: usize, s: &DrawSettings) -> f32 {
    if !bit(allowed, i) {
        return f32::NEG_INFINITY;
    }
    let mut l = logits[i];
    if s.penalty != 1.0 && bit(seen, i) {
        l = if l >= 0.0 {
            l / s.penalty
        } else {
            l * s.penalty
        };
    }
    if s.greedy {
        l
    } else {
        l * s.inv_temperature + 0.0
    }
}

/// The sum of `exp(z - top)` over finite scores in the kernel's order: each
/// of its threads sums every `DRAW_THREADS`-th score, then the partial sums
/// pair up in a tree.
fn block_sum(z: &[f32], top: f32) -> f32 {
    let mut partial = [0f32; DRAW_THREADS];
    for (i, &v) in z.iter().enumerate() {
        if v > f32::NEG_INFINITY {
            partial[i % DRAW_THREADS] += (v - top).exp();
        }
    }
    let mut s = DRAW_THREADS / 2;
    while s > 0 {
        for t in 0..s {
            partial[t] += partial[t + s];
        }
        s /= 2;
    }
    partial[0]
}

/// The best of `(value, id)` candidates: the larger value, the lower id on ties.
fn best(candidates: impl Iterator<Item = (f32, u32)>) -> Option<u32> {
    candidates
        .fold(None, |acc: Option<(f32, u32)>, (v, i)| match acc {
            Some((bv, bi)) if bv > v || (bv == v && bi < i) => Some((bv, bi)),
            _ => Some((v, i)),
        })
        .map(|(_, i)| i)
}

/// The device draw of one row from its `logits` (see the module docs);
/// `seen` and `allowed` are bit sets over the vocabulary.
pub fn draw_row(
    logits: &[f32],
    row: &DrawRow,
    seen: &[u32],
    allowed: &[u32],
) -> Result<u32, DrawFailure> {
    let s = &row.settings;
    let z: Vec<f32> = (0..logits.len())
        .map(|i| score(logits, seen, allowed, i, s))
        .collect();
    if z.iter().any(|v| v.is_nan() || *v == f32::INFINITY) {
        return Err(DrawFailure::NonFinite);
    }
    let finite = || {
        z.iter()
            .enumerate()
            .filter(|(_, v)| **v > f32::NEG_INFINITY)
            .map(|(i, &v)| (v, i as u32))
    };
    let greedy = best(finite()).ok_or(DrawFailure::NoToken)?;
    if s.greedy {
        return Ok(greedy);
    }
    let noisy = |(v, i): (f32, u32)| (v + gumbel(row.seed, row.draw, i), i);
    if s.top_k == 0 {
        return best(finite().map(noisy)).ok_or(DrawFailure::NoToken);
    }
    let top = z[greedy as usize];
    let total = block_sum(&z, top);
    let mut ranked: Vec<(f32, u32)> = finite().collect();
    ranked.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.truncate(s.top_k as usize);
    let mut before = 0f32;
    let mut kept = Vec::with_capacity(ranked.len());
    for &(v, i) in &ranked {
        if before < s.top_p {
            kept.push((v, i));
        }
        before += (v - top).exp() / total;
    }
    best(kept.into_iter().map(noisy)).ok_or(DrawFailure::NoToken)
}

/// Where each part of the state buffer starts, for `batch` rows of `vocab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StateLayout {
    batch: usize,
    words: usize,
}

impl StateLayout {
    fn new(batch: usize, vocab: usize) -> Self {
        Self {
            batch,
            words: bit_words(vocab),
        }
    }
    fn headers(&self) -> usize {
        self.batch
    }
    fn seen(&self) -> usize {
        self.batch * (1 + HEADER)
    }
    fn allowed(&self) -> usize {
        self.seen() + self.batch * self.words
    }
    fn len(&self) -> usize {
        self.allowed() + self.batch * self.words
    }
}

/// Draws every active row's next token from `logits` `(B, V)` f32 into the
/// state buffer (u32, laid out as [`StateLayout`]), in place.
struct DrawOp {
    layout: StateLayout,
    vocab: usize,
}

fn op_error(problem: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("device draw: {problem}"))
}

impl DrawOp {
    fn check(&self, l_state: &Layout, l_logits: &Layout) -> candle_core::Result<()> {
        let want = [self.layout.batch, self.vocab];
        if l_logits.dims() != want {
            return Err(op_error(format!(
                "logits of shape {:?}, want {want:?}",
                l_logits.dims()
            )));
        }
        if l_state.dims() != [self.layout.len()] {
            return Err(op_error(format!(
                "state of shape {:?}, want [{}]",
                l_state.dims(),
                self.layout.len()
            )));
        }
        Ok(())
    }
}

impl InplaceOp2 for DrawOp {
    fn name(&self) -> &'static str {
        "device-draw"
    }

    fn cpu_fwd(
        &self,
        state: &mut CpuStorage,
        l_state: &Layout,
        logits: &CpuStorage,
        l_logits: &Layout,
    ) -> candle_core::Result<()> {
        self.check(l_state, l_logits)?;
        let (CpuStorage::U32(state), CpuStorage::F32(logits)) = (state, logits) else {
            return Err(op_error("the state must be u32 and the logits f32"));
        };
        let (sa, sb) = l_state
            .contiguous_offsets()
            .ok_or_else(|| op_error("the state is not contiguous"))?;
        let (la, lb) = l_logits
            .contiguous_offsets()
            .ok_or_else(|| op_error("the logits are not contiguous"))?;
        let (state, logits) = (&mut state[sa..sb], &logits[la..lb]);
        let (lay, v) = (self.layout, self.vocab);
        for r in 0..lay.batch {
            let h = lay.headers() + r * HEADER;
            let row = DrawRow::from_header(&state[h..h + HEADER]);
            if !row.active {
                continue;
            }
            let (seen, allowed) = (
                lay.seen() + r * lay.words..lay.seen() + (r + 1) * lay.words,
                lay.allowed() + r * lay.words..lay.allowed() + (r + 1) * lay.words,
            );
            let drawn = draw_row(
                &logits[r * v..(r + 1) * v],
                &row,
                &state[seen.clone()],
                &state[allowed],
            );
            state[r] = match drawn {
                Ok(id) => {
                    state[seen.start + id as usize / 32] |= 1 << (id % 32);
                    state[h + 2] = row.draw.wrapping_add(1);
                    id
                }
                Err(DrawFailure::NoToken) => NO_TOKEN,
                Err(DrawFailure::NonFinite) => NON_FINITE,
            };
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        state: &mut candle_core::CudaStorage,
        l_state: &Layout,
        logits: &candle_core::CudaStorage,
        l_logits: &Layout,
    ) -> candle_core::Result<()> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        self.check(l_state, l_logits)?;
        let (sa, sb) = l_state
            .contiguous_offsets()
            .ok_or_else(|| op_error("the state is not contiguous"))?;
        let (la, lb) = l_logits
            .contiguous_offsets()
            .ok_or_else(|| op_error("the logits are not contiguous"))?;
        let dev = logits.device().clone();
        let func = dev.get_or_load_custom_func(
            "versifier_device_draw",
            "versifier_device_draw",
            crate::model::cuda_kernels::DEVICE_DRAW,
        )?;
        let logits = logits.as_cuda_slice::<f32>()?.slice(la..lb);
        let mut state = state.as_cuda_slice_mut::<u32>()?.slice_mut(sa..sb);
        let batch = u32::try_from(self.layout.batch).map_err(op_error)?;
        let vocab = u32::try_from(self.vocab).map_err(op_error)?;
        let cfg = LaunchConfig {
            grid_dim: (batch.max(1), 1, 1),
            block_dim: (DRAW_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = func.builder();
        builder.arg(&mut state).arg(&logits).arg(&batch).arg(&vocab);
        // SAFETY: the arguments match the kernel's signature; the state holds
        // the layout of `batch` rows of `vocab` (checked above) and the logits
        // `batch * vocab` values.
        unsafe { builder.launch(cfg) }.map_err(|e| op_error(format!("{e:?}")))?;
        Ok(())
    }
}

/// The device draw of a static decode: its state buffer on the model's
/// device and the op its steps capture after their logits. Shared (`Arc`)
/// between the decoder that runs it and the decode loop that writes its rows
/// and reads their ids.
#[derive(Debug)]
pub struct DeviceSampler {
    state: Tensor,
    layout: StateLayout,
    vocab: usize,
    /// What the device's headers hold now (`None`: not known), so that a
    /// step whose rows only drew once more uploads nothing: the kernel counts
    /// each row's draws itself.
    headers: std::sync::Mutex<Option<Vec<DrawRow>>>,
}

impl DeviceSampler {
    /// A state buffer for `batch` rows over `vocab` tokens on `device`.
    pub fn new(device: &Device, batch: usize, vocab: usize) -> candle_core::Result<Self> {
        let layout = StateLayout::new(batch, vocab);
        Ok(Self {
            state: Tensor::zeros(layout.len(), DType::U32, device)?,
            layout,
            vocab,
            headers: std::sync::Mutex::new(None),
        })
    }

    pub fn batch(&self) -> usize {
        self.layout.batch
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    fn headers(&self) -> std::sync::MutexGuard<'_, Option<Vec<DrawRow>>> {
        // A panic while holding it left a stale copy at worst: forget it.
        self.headers.lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            *guard = None;
            guard
        })
    }

    fn write(&self, offset: usize, values: Vec<u32>) -> candle_core::Result<()> {
        let n = values.len();
        let src = Tensor::from_vec(values, n, self.state.device())?;
        self.state.slice_set(&src, 0, offset)
    }

    /// Starts (or restarts) a decode: every row's header, the tokens it has
    /// seen (`contexts`, prompt included) and every token allowed.
    pub fn start(&self, rows: &[DrawRow], contexts: &[&[u32]]) -> candle_core::Result<()> {
        if rows.len() != self.batch() || contexts.len() != self.batch() {
            return Err(op_error(format!(
                "{} rows and {} contexts for a batch of {}",
                rows.len(),
                contexts.len(),
                self.batch()
            )));
        }
        let seen: Vec<u32> = contexts
            .iter()
            .flat_map(|c| bits_of(c.iter().copied(), self.vocab))
            .collect();
        let allowed: Vec<u32> = (0..self.batch())
            .flat_map(|_| all_allowed(self.vocab))
            .collect();
        self.write(self.layout.seen(), seen)?;
        self.write(self.layout.allowed(), allowed)?;
        *self.headers() = None;
        self.prepare(rows, None)
    }

    /// Before a step: every row's header (draw number, whether it is active;
    /// uploaded only when it is not what the device already holds) and, when
    /// a form masks tokens, every row's allowed bits (`B` sets of
    /// [`bit_words`] words, one after the other).
    pub fn prepare(&self, rows: &[DrawRow], allowed: Option<Vec<u32>>) -> candle_core::Result<()> {
        if rows.len() != self.batch() {
            return Err(op_error(format!(
                "{} rows for a batch of {}",
                rows.len(),
                self.batch()
            )));
        }
        let mut held = self.headers();
        if held.as_deref() != Some(rows) {
            *held = None;
            let headers: Vec<u32> = rows.iter().flat_map(|r| r.header()).collect();
            self.write(self.layout.headers(), headers)?;
            *held = Some(rows.to_vec());
        }
        drop(held);
        if let Some(bits) = allowed {
            if bits.len() != self.batch() * self.layout.words {
                return Err(op_error(format!(
                    "{} words of allowed tokens, want {}",
                    bits.len(),
                    self.batch() * self.layout.words
                )));
            }
            self.write(self.layout.allowed(), bits)?;
        }
        Ok(())
    }

    /// After each step, once: what each row drew (an id, or a failure for
    /// [`drawn`]; an ended row's is stale). Counts the draw of every active
    /// row that drew, as the kernel did.
    pub fn take_ids(&self) -> candle_core::Result<Vec<u32>> {
        let ids = self.state.narrow(0, 0, self.batch())?.to_vec1::<u32>()?;
        if let Some(rows) = self.headers().as_mut() {
            for (row, &id) in rows.iter_mut().zip(&ids) {
                if row.active && drawn(id).is_ok() {
                    row.draw = row.draw.wrapping_add(1);
                }
            }
        }
        Ok(ids)
    }
}

/// A row's entry from [`DeviceSampler::take_ids`]: the id, or why it could not draw.
pub fn drawn(entry: u32) -> Result<u32, DrawFailure> {
    match entry {
        NO_TOKEN => Err(DrawFailure::NoToken),
        NON_FINITE => Err(DrawFailure::NonFinite),
        id => Ok(id),
    }
}

impl StepTail for DeviceSampler {
    fn run(&self, logits: &Tensor) -> candle_core::Result<()> {
        let op = DrawOp {
            layout: self.layout,
            vocab: self.vocab,
        };
        self.state.inplace_op2(logits, &op)
    }
}

/// The device's draws against [`draw_row`] on the host, on one device: what
/// `versifier selftest` reports, so a GPU machine without Rust checks the
/// kernel. Rows mix the settings (the app's defaults, greedy, every token, a
/// top k of [`MAX_DEVICE_TOP_K`] with a nucleus, a top k of 1), masks, seen
/// tokens and tied logits, over a small and a GPT-2-sized vocabulary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceDrawCheck {
    pub device: String,
    /// Rows drawn, and how many drew the reference's token.
    pub draws: usize,
    pub agreeing: usize,
    /// Of those, the greedy rows (which must all agree).
    pub greedy_draws: usize,
    pub greedy_agreeing: usize,
    /// The first disagreement, when there is one: vocabulary, row, draw, ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_disagreement: Option<String>,
    /// Microseconds of one draw of 8 rows over 50,257 tokens on the device
    /// (launch and the ids' copy back included).
    pub draw_us_batch8_vocab50257: f64,
    pub passed: bool,
}

/// Fewest agreeing draws, as a share, that pass: a sampled draw may differ
/// where the device's `expf`/`logf` round a near-tie the other way.
pub const DEVICE_DRAW_AGREEMENT: f64 = 0.99;

/// The check's inputs for `batch` rows over `vocab` tokens: each row's draw
/// settings (defaults, greedy, plain, wide top-k, top-k 1), logits of a
/// spread like a model's with ties, two rows masked to about half, and
/// contexts for the repetition penalty. Seeded by `vocab`.
#[allow(clippy::type_complexity)] // four parallel inputs, named at the call
fn check_inputs(
    batch: usize,
    vocab: usize,
) -> candle_core::Result<(Vec<DrawSettings>, Vec<f32>, Vec<Vec<u32>>, Vec<Vec<u32>>)> {
    let defaults = SamplingParams::default();
    let params = [
        defaults.clone(),
        SamplingParams::greedy(),
        SamplingParams {
            top_k: 0,
            top_p: 1.0,
            temperature: 1.0,
            ..defaults.clone()
        },
        SamplingParams {
            top_k: MAX_DEVICE_TOP_K,
            top_p: 0.9,
            temperature: 1.3,
            ..defaults.clone()
        },
        SamplingParams {
            top_k: 1,
            ..defaults.clone()
        },
    ];
    let settings: Vec<DrawSettings> = (0..batch)
        .map(|r| DrawSettings::of(&params[r % params.len()], vocab))
        .collect::<Result<_, _>>()
        .map_err(op_error)?;
    let mut state = vocab as u64;
    let mut next = || {
        state = mix64(state.wrapping_add(0x9e37_79b9_7f4a_7c15));
        state
    };
    // Logits of a spread like a model's, a fifth of them rounded to
    // quarters so that ties happen; rows 3 and 6 masked to about half.
    let logits: Vec<f32> = (0..batch * vocab)
        .map(|_| {
            let h = next();
            let v = (h >> 40) as f32 / (1u64 << 24) as f32 * 16.0 - 8.0;
            if h % 5 == 0 {
                (v * 4.0).round() / 4.0
            } else {
                v
            }
        })
        .collect();
    let allowed: Vec<Vec<u32>> = (0..batch)
        .map(|r| match r {
            3 | 6 => (0..bit_words(vocab))
                .map(|w| {
                    let bits = next() as u32;
                    if (w + 1) * 32 > vocab {
                        bits & ((1u64 << (vocab - w * 32)) - 1) as u32
                    } else {
                        bits
                    }
                })
                .collect(),
            _ => all_allowed(vocab),
        })
        .collect();
    let contexts: Vec<Vec<u32>> = (0..batch)
        .map(|_| (0..24).map(|_| (next() % vocab as u64) as u32).collect())
        .collect();
    Ok((settings, logits, allowed, contexts))
}

/// Runs the check (see [`DeviceDrawCheck`]).
pub fn check_device_draws(device: &Device) -> candle_core::Result<DeviceDrawCheck> {
    let batch = 8;
    let mut check = DeviceDrawCheck {
        device: format!("{device:?}"),
        draws: 0,
        agreeing: 0,
        greedy_draws: 0,
        greedy_agreeing: 0,
        first_disagreement: None,
        draw_us_batch8_vocab50257: 0.0,
        passed: false,
    };
    for vocab in [6000usize, 50_257] {
        let (settings, logits, allowed, contexts) = check_inputs(batch, vocab)?;
        let context_refs: Vec<&[u32]> = contexts.iter().map(Vec::as_slice).collect();
        let sampler = DeviceSampler::new(device, batch, vocab)?;
        let on_device = Tensor::from_vec(logits.clone(), (batch, vocab), device)?;
        for draw in 0..16u32 {
            let rows: Vec<DrawRow> = (0..batch)
                .map(|r| DrawRow {
                    settings: settings[r],
                    seed: 1000 + r as u64,
                    draw,
                    active: true,
                })
                .collect();
            sampler.start(&rows, &context_refs)?;
            sampler.prepare(&rows, Some(allowed.concat()))?;
            sampler.run(&on_device)?;
            let ids = sampler.take_ids()?;
            for (r, &id) in ids.iter().enumerate() {
                let seen = bits_of(contexts[r].iter().copied(), vocab);
                let want = draw_row(
                    &logits[r * vocab..(r + 1) * vocab],
                    &rows[r],
                    &seen,
                    &allowed[r],
                );
                let agrees = drawn(id) == want;
                check.draws += 1;
                check.agreeing += usize::from(agrees);
                if settings[r].greedy {
                    check.greedy_draws += 1;
                    check.greedy_agreeing += usize::from(agrees);
                }
                if !agrees && check.first_disagreement.is_none() {
                    check.first_disagreement = Some(format!(
                        "vocabulary {vocab}, row {r}, draw {draw}: device {:?}, reference {want:?}",
                        drawn(id)
                    ));
                }
            }
        }
        if vocab == 50_257 {
            let rows: Vec<DrawRow> = (0..batch)
                .map(|r| DrawRow {
                    settings: settings[0],
                    seed: r as u64,
                    draw: 0,
                    active: true,
                })
                .collect();
            sampler.prepare(&rows, None)?;
            sampler.take_ids()?;
            let started = std::time::Instant::now();
            let runs = 20;
            for _ in 0..runs {
                sampler.run(&on_device)?;
                sampler.take_ids()?;
            }
            check.draw_us_batch8_vocab50257 =
                started.elapsed().as_secs_f64() * 1e6 / f64::from(runs);
        }
    }
    check.passed = check.greedy_agreeing == check.greedy_draws
        && check.agreeing as f64 >= DEVICE_DRAW_AGREEMENT * check.draws as f64;
    Ok(check)
}

#[cfg(test)]
mod tests;
