//! Decoding with static shapes: a KV cache of a fixed number of columns, input
//! buffers rewritten in place, and (on CUDA) each decode step replayed from one
//! captured CUDA graph.
//!
//! Owns: the host bookkeeping of a static decode (which cached columns are real,
//! each row's next position id, the attention mask), the step's device buffers,
//! and the choice between running a step eagerly and replaying its graph.
//! Must not: open or drop devices, sample tokens (`generate/`), or change the
//! numerics of [`Gpt2::forward_static`]: the graph replays exactly its kernels.

use candle_core::{DType, Tensor};

use super::fused_decode::StepKernels;
use super::gpt2::{masked_value, KvSlot, StaticKvCache};
use super::{ForwardError, Gpt2, TokenBatch};

/// Static decode buffers are sized in steps of this many columns, so requests
/// of similar length reuse one captured graph.
pub const COLUMN_BUCKET: usize = 64;

/// Whether decode steps may be captured and replayed as CUDA graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphMode {
    /// Capture once per (batch, columns, dtype), then replay (CUDA only; elsewhere eager).
    Capture,
    /// Run every step's kernels one by one.
    Eager,
}

impl GraphMode {
    /// `Capture` unless `VERSIFIER_CUDA_GRAPHS=0` (for side-by-side benchmarks
    /// and as an escape hatch).
    pub fn from_env() -> Self {
        match std::env::var("VERSIFIER_CUDA_GRAPHS").as_deref() {
            Ok("0") | Ok("off") | Ok("false") => Self::Eager,
            _ => Self::Capture,
        }
    }
}

/// How the decode steps of the last generation ran (reported by benchmarks).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum StepRunner {
    /// Every kernel launched from the host.
    Eager,
    /// Replayed from a captured CUDA graph.
    CudaGraph,
    /// Capture was tried and failed; steps ran eagerly. The text says why.
    CaptureFailed(String),
}

/// The columns a request needs, rounded up to [`COLUMN_BUCKET`] and capped at
/// the model's context.
pub fn static_columns(prompt_len: usize, max_new_tokens: usize, n_positions: usize) -> usize {
    let need = prompt_len + max_new_tokens;
    need.div_ceil(COLUMN_BUCKET)
        .saturating_mul(COLUMN_BUCKET)
        .min(n_positions)
        .max(1)
}

/// Work a decode step runs on its own logits, captured with the step in its
/// CUDA graph: the device draw of `generate/`, so that only the chosen ids
/// leave the device. Whatever it reads or writes must live as long as the
/// decoder holds it (the graph keeps the addresses).
pub trait StepTail: std::any::Any + Send + Sync + std::fmt::Debug {
    /// Launches the work on `logits` `(B, V)` f32; allocates nothing that
    /// outlives the call.
    fn run(&self, logits: &Tensor) -> candle_core::Result<()>;
}

/// Device buffers a decode step reads (rewritten in place before each step) and
/// the one it writes.
#[derive(Debug)]
struct StepBuffers {
    /// `[ids (B) | positions (B) | live (B) | column (1)]`, one upload per step.
    inputs: Tensor, // (3B + 1) u32
    /// Each row's attention mask for the step: written whole after the prompt
    /// pass, then one column per step by the step itself (from `live`).
    mask: Tensor, // (B, 1, 1, S) compute dtype
    logits: Tensor, // (B, V) f32
}

/// A batch being decoded with static shapes. Create with [`StaticDecoder::new`],
/// feed the prompt with [`StaticDecoder::prefill`], then one token per row with
/// [`StaticDecoder::step`]; [`StaticDecoder::reset`] makes it reusable for the
/// next request of the same batch and columns (keeping its captured graph).
pub struct StaticDecoder {
    cache: StaticKvCache,
    bufs: StepBuffers,
    dtype: DType,
    /// Columns written so far (the next write goes to this column).
    used: usize,
    /// `valid[row][col]`: whether cached column `col` of `row` holds a real token.
    valid: Vec<Vec<bool>>,
    /// Real tokens seen so far per row (the next token's position id).
    real_tokens: Vec<usize>,
    mode: GraphMode,
    /// The kernels a decode step runs (fused on CUDA by default).
    kernels: StepKernels,
    /// Why the fused kernels failed here, when they did (steps then run composed).
    fused_failure: Option<String>,
    graph: GraphState,
    /// Whether `bufs.mask` holds this request's mask (false until the first step).
    mask_synced: bool,
    /// Where the logits land on the host (page-locked on CUDA).
    host_logits: HostLogits,
    /// Work each step runs after its logits (captured with it), if any.
    tail: Option<std::sync::Arc<dyn StepTail>>,
}

impl std::fmt::Debug for StaticDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticDecoder")
            .field("batch", &self.cache.batch())
            .field("columns", &self.cache.columns())
            .field("dtype", &self.dtype)
            .field("used", &self.used)
            .field("runner", &self.runner())
            .finish()
    }
}

/// Where graph capture stands for this decoder.
enum GraphState {
    /// No step has run yet: the next one runs eagerly with candle's parameter
    /// cache on, so that a capture finds every kernel parameter on the device.
    Cold,
    /// One warm-up step ran; the next step is captured.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Warm,
    #[cfg(feature = "cuda")]
    Ready(super::step_graph::StepGraph),
    /// Not captured: eager mode, a CPU device, or a failed capture (the reason).
    Off(Option<String>),
}

impl StaticDecoder {
    /// Buffers for `batch` rows of `columns` positions on the model's device.
    pub fn new(
        model: &Gpt2,
        batch: usize,
        columns: usize,
        mode: GraphMode,
    ) -> Result<Self, ForwardError> {
        let dev = model.device();
        let dtype = model.compute_dtype();
        let vocab = model.config().vocab_size;
        let bufs = StepBuffers {
            inputs: Tensor::zeros(3 * batch + 1, DType::U32, dev)?,
            mask: Tensor::zeros((batch, 1, 1, columns), dtype, dev)?,
            logits: Tensor::zeros((batch, vocab), DType::F32, dev)?,
        };
        let graph = if mode == GraphMode::Capture && dev.is_cuda() {
            GraphState::Cold
        } else {
            GraphState::Off(None)
        };
        Ok(Self {
            cache: StaticKvCache::new(
                model.config(),
                model.compute_dtype(),
                model.device(),
                batch,
                columns,
            )?,
            bufs,
            dtype,
            used: 0,
            valid: vec![Vec::with_capacity(columns); batch],
            real_tokens: vec![0; batch],
            mode,
            kernels: StepKernels::for_device(dev),
            fused_failure: None,
            graph,
            mask_synced: false,
            host_logits: HostLogits::new(dev, batch * vocab)?,
            tail: None,
        })
    }

    pub fn batch(&self) -> usize {
        self.cache.batch()
    }

    pub fn columns(&self) -> usize {
        self.cache.columns()
    }

    pub fn graph_mode(&self) -> GraphMode {
        self.mode
    }

    /// The kernels decode steps run.
    pub fn kernels(&self) -> StepKernels {
        self.kernels
    }

    /// Chooses the kernels of the decode steps; before the first step only
    /// (a captured graph keeps the kernels it was captured with).
    pub fn set_kernels(&mut self, kernels: StepKernels) -> Result<(), ForwardError> {
        if !matches!(self.graph, GraphState::Cold | GraphState::Off(None))
            && kernels != self.kernels
        {
            return Err(ForwardError::Shape(
                "the step kernels cannot change once a step has run".into(),
            ));
        }
        self.kernels = kernels;
        Ok(())
    }

    /// Makes every later step run `tail` on its logits (`None`: none). A
    /// different tail than before drops the captured graph, which would keep
    /// running the old one.
    pub fn set_tail<T: StepTail>(&mut self, tail: Option<std::sync::Arc<T>>) {
        let same = match (&self.tail, &tail) {
            (None, None) => true,
            (Some(old), Some(new)) => {
                std::ptr::addr_eq(std::sync::Arc::as_ptr(old), std::sync::Arc::as_ptr(new))
            }
            _ => false,
        };
        if same {
            return;
        }
        self.tail = tail.map(|t| t as std::sync::Arc<dyn StepTail>);
        if !matches!(self.graph, GraphState::Off(_)) {
            self.graph = GraphState::Cold;
        }
    }

    /// The tail installed with [`StaticDecoder::set_tail`], if it is a `T`.
    pub fn tail<T: StepTail>(&self) -> Option<std::sync::Arc<T>> {
        let any: std::sync::Arc<dyn std::any::Any + Send + Sync> = self.tail.clone()?;
        any.downcast::<T>().ok()
    }

    /// Bytes of the KV cache buffers.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Forgets the tokens decoded so far; buffers and any captured graph stay.
    pub fn reset(&mut self) {
        self.used = 0;
        for row in &mut self.valid {
            row.clear();
        }
        self.real_tokens.iter_mut().for_each(|n| *n = 0);
        self.mask_synced = false;
    }

    /// How steps run now.
    pub fn runner(&self) -> StepRunner {
        match &self.graph {
            #[cfg(feature = "cuda")]
            GraphState::Ready(_) => StepRunner::CudaGraph,
            GraphState::Off(Some(why)) => StepRunner::CaptureFailed(why.clone()),
            _ => StepRunner::Eager,
        }
    }

    /// Position ids of `input` and the bookkeeping it adds; checks ids and room.
    fn admit(&mut self, model: &Gpt2, input: &TokenBatch) -> Result<Vec<u32>, ForwardError> {
        let (b, t) = (input.batch, input.len);
        if input.ids.len() != b * t || input.valid.len() != b * t || t == 0 {
            return Err(ForwardError::Shape(format!(
                "{} ids and {} validity flags for a {b}x{t} batch",
                input.ids.len(),
                input.valid.len()
            )));
        }
        if b != self.batch() {
            return Err(ForwardError::Shape(format!(
                "static cache holds {} rows, input has {b}",
                self.batch()
            )));
        }
        let cfg = model.config();
        if let Some((i, &id)) = input
            .ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= cfg.vocab_size)
        {
            return Err(ForwardError::TokenOutOfRange {
                id,
                row: i / t,
                vocab: cfg.vocab_size,
            });
        }
        let mut positions = Vec::with_capacity(b * t);
        for row in 0..b {
            let mut next = self.real_tokens[row];
            for col in 0..t {
                if input.valid[row * t + col] {
                    if next >= cfg.n_positions || self.used + col >= self.columns() {
                        return Err(ForwardError::ContextFull {
                            row,
                            position: next,
                            max: cfg.n_positions.min(self.columns()),
                        });
                    }
                    positions.push(next as u32);
                    next += 1;
                } else {
                    positions.push(0);
                }
            }
        }
        if self.used + t > self.columns() {
            return Err(ForwardError::ContextFull {
                row: 0,
                position: self.used + t,
                max: self.columns(),
            });
        }
        for row in 0..b {
            let flags = &input.valid[row * t..(row + 1) * t];
            self.valid[row].extend_from_slice(flags);
            self.real_tokens[row] += flags.iter().filter(|v| **v).count();
        }
        Ok(positions)
    }

    /// `(B, 1, T, S)` mask for the `t` columns just admitted: causal, real keys only,
    /// and nothing past them.
    fn mask(&self, t: usize) -> Vec<f32> {
        let s = self.columns();
        let past = self.used;
        let masked = masked_value(self.dtype);
        let mut m = Vec::with_capacity(self.batch() * t * s);
        for row in &self.valid {
            for i in 0..t {
                m.extend((0..s).map(|j| {
                    let visible = j <= past + i && row.get(j).copied().unwrap_or(false);
                    if visible {
                        0.0
                    } else {
                        masked
                    }
                }));
            }
        }
        m
    }

    /// Runs the prompt (any length, rows padded with `valid` false) through the
    /// model and returns the f32 logits of each row's last position.
    pub fn prefill(
        &mut self,
        model: &Gpt2,
        input: &TokenBatch,
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        let (b, t) = (input.batch, input.len);
        let positions = self.admit(model, input)?;
        let dev = model.device();
        let mask =
            Tensor::from_vec(self.mask(t), (b, 1, t, self.columns()), dev)?.to_dtype(self.dtype)?;
        let ids = Tensor::from_vec(input.ids.clone(), (b, t), dev)?;
        let pos = Tensor::from_vec(positions, (b, t), dev)?;
        let logits = model.forward_static(
            &ids,
            &pos,
            &mask,
            KvSlot::Columns(self.used),
            &self.cache,
            self.kernels,
        )?;
        self.used += t;
        Ok(logits.to_vec2()?)
    }

    /// One token per row (`valid` false for rows that have finished); returns the
    /// f32 logits of each row on the host. On CUDA the second step is captured
    /// and later steps replay the graph.
    pub fn step(
        &mut self,
        model: &Gpt2,
        input: &TokenBatch,
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        self.advance(model, input)?;
        Ok(self.host_logits.read(&self.bufs.logits)?)
    }

    /// One token per row, as [`StaticDecoder::step`], leaving the logits on
    /// the device for the tail (which must be installed) to read.
    pub fn step_on_device(&mut self, model: &Gpt2, input: &TokenBatch) -> Result<(), ForwardError> {
        if self.tail.is_none() {
            return Err(ForwardError::Shape(
                "a step that keeps its logits on the device needs a tail to read them".into(),
            ));
        }
        self.advance(model, input)
    }

    fn advance(&mut self, model: &Gpt2, input: &TokenBatch) -> Result<(), ForwardError> {
        if input.len != 1 {
            return Err(ForwardError::Shape(format!(
                "a decode step takes one token per row, found {}",
                input.len
            )));
        }
        let positions = self.admit(model, input)?;
        let (b, s) = (self.batch(), self.columns());
        let dev = model.device();
        // Rewrite the step's inputs in place: the graph reads these buffers.
        if !self.mask_synced {
            let mask = Tensor::from_vec(self.mask(1), (b, 1, 1, s), dev)?.to_dtype(self.dtype)?;
            self.bufs.mask.slice_set(&mask, 0, 0)?;
            self.mask_synced = true;
        }
        let mut packed = Vec::with_capacity(3 * b + 1);
        packed.extend_from_slice(&input.ids);
        packed.extend_from_slice(&positions);
        packed.extend(input.valid.iter().map(|&v| u32::from(v)));
        packed.push(self.used as u32);
        self.bufs
            .inputs
            .slice_set(&Tensor::from_vec(packed, 3 * b + 1, dev)?, 0, 0)?;
        self.used += 1;
        self.run_step(model)
    }

    /// The step body, the same kernels whether eager or captured.
    fn step_kernels(
        model: &Gpt2,
        cache: &StaticKvCache,
        bufs: &StepBuffers,
        dtype: DType,
        kernels: StepKernels,
        tail: Option<&dyn StepTail>,
    ) -> candle_core::Result<()> {
        #[cfg(test)]
        if kernels == StepKernels::Fused && tests::FAIL_FUSED.with(std::cell::Cell::get) {
            candle_core::bail!("simulated failure of a fused kernel");
        }
        let cfg = model.config();
        let (b, h, hd) = (cache.batch(), cfg.n_head, cfg.head_dim());
        let ids = bufs.inputs.narrow(0, 0, b)?.reshape((b, 1))?;
        let positions = bufs.inputs.narrow(0, b, b)?.reshape((b, 1))?;
        let live = bufs.inputs.narrow(0, 2 * b, b)?.reshape((b, 1, 1, 1))?;
        let column = bufs.inputs.narrow(0, 3 * b, 1)?.reshape((1, 1, 1, 1))?;
        // This step's column of the mask: visible for live rows, masked for finished ones.
        let masked = f64::from(masked_value(dtype));
        let visible = live.to_dtype(dtype)?.affine(-masked, masked)?; // (B, 1, 1, 1)
        let mask_column = column.broadcast_as((b, 1, 1, 1))?.contiguous()?;
        bufs.mask.scatter_set(&mask_column, &visible, 3)?;
        let kv_columns = column.broadcast_as((b, h, 1, hd))?.contiguous()?; // (B, H, 1, hd)
        let logits = model.forward_static(
            &ids,
            &positions,
            &bufs.mask,
            KvSlot::Indexed(&kv_columns),
            cache,
            kernels,
        )?; // (B, V)
        bufs.logits.slice_set(&logits, 0, 0)?;
        match tail {
            Some(t) => t.run(&bufs.logits),
            None => Ok(()),
        }
    }

    /// Runs the step; if the fused kernels fail (a kernel that does not
    /// compile or launch on this device), says so once in the log and runs it
    /// again, and every later step, with candle's composed kernels (a step
    /// writes only this step's column, so running it again is safe).
    fn run_step(&mut self, model: &Gpt2) -> Result<(), ForwardError> {
        match self.run_step_once(model) {
            Err(e) if self.kernels == StepKernels::Fused => {
                let why = e.to_string();
                tracing::warn!("fused decode kernels failed, using candle's composed ones: {why}");
                self.kernels = StepKernels::Composed;
                self.fused_failure = Some(why);
                // Whatever was captured or warmed up used the fused kernels.
                self.graph = if self.mode == GraphMode::Capture && model.device().is_cuda() {
                    GraphState::Cold
                } else {
                    GraphState::Off(None)
                };
                self.run_step_once(model)
            }
            done => done,
        }
    }

    /// Why the fused kernels were given up for this decoder, if they were.
    pub fn fused_failure(&self) -> Option<&str> {
        self.fused_failure.as_deref()
    }

    fn run_step_once(&mut self, model: &Gpt2) -> Result<(), ForwardError> {
        let (cache, bufs, dtype, kernels) = (&self.cache, &self.bufs, self.dtype, self.kernels);
        let tail = self.tail.as_deref();
        let body = || Self::step_kernels(model, cache, bufs, dtype, kernels, tail);
        match std::mem::replace(&mut self.graph, GraphState::Off(None)) {
            GraphState::Off(why) => {
                self.graph = GraphState::Off(why);
                body()?;
            }
            GraphState::Cold => {
                #[cfg(feature = "cuda")]
                {
                    super::step_graph::warm_up(model.device(), body)?;
                    self.graph = GraphState::Warm;
                }
                #[cfg(not(feature = "cuda"))]
                body()?;
            }
            GraphState::Warm => {
                #[cfg(feature = "cuda")]
                match super::step_graph::StepGraph::capture(model.device(), body) {
                    Ok(graph) => {
                        graph.launch()?;
                        self.graph = GraphState::Ready(graph);
                    }
                    Err(e) => {
                        let why = e.to_string();
                        tracing::warn!("CUDA graph capture failed, decoding eagerly: {why}");
                        self.graph = GraphState::Off(Some(why));
                        body()?;
                    }
                }
                #[cfg(not(feature = "cuda"))]
                body()?;
            }
            #[cfg(feature = "cuda")]
            GraphState::Ready(graph) => {
                let launched = graph.launch();
                self.graph = GraphState::Ready(graph);
                launched?;
            }
        }
        Ok(())
    }
}

/// The host side of the logits: a page-locked buffer on CUDA (the copy runs at
/// full PCIe speed and needs no staging), a plain copy elsewhere.
enum HostLogits {
    #[cfg(feature = "cuda")]
    Pinned(super::step_graph::PinnedLogits),
    Plain,
}

impl HostLogits {
    fn new(device: &candle_core::Device, len: usize) -> candle_core::Result<Self> {
        #[cfg(feature = "cuda")]
        if let candle_core::Device::Cuda(d) = device {
            return Ok(Self::Pinned(super::step_graph::PinnedLogits::new(d, len)?));
        }
        let _ = (device, len);
        Ok(Self::Plain)
    }

    /// `logits` `(B, V)` f32 as rows.
    fn read(&mut self, logits: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
        match self {
            #[cfg(feature = "cuda")]
            Self::Pinned(p) => p.read(logits),
            Self::Plain => logits.to_vec2(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Makes every fused step on this thread fail (a kernel that does not compile).
        pub(super) static FAIL_FUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn a_failing_fused_step_falls_back_to_the_composed_kernels_simulated() {
        use crate::model::{synthetic::synthetic_tensors, Gpt2Config};
        let cfg = Gpt2Config::small(50, 32, 16, 2, 2);
        let tensors = synthetic_tensors(&cfg, 3).unwrap();
        let vb =
            candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &candle_core::Device::Cpu);
        let model = Gpt2::load_uniform(vb, &cfg).unwrap();
        let prompt = TokenBatch::left_padded(&[vec![1, 2, 3], vec![4]], 0);
        let open = |kernels| {
            let mut d = StaticDecoder::new(&model, 2, 32, GraphMode::Eager).unwrap();
            d.set_kernels(kernels).unwrap();
            d.prefill(&model, &prompt).unwrap();
            d
        };
        let (mut composed, mut fused) = (open(StepKernels::Composed), open(StepKernels::Fused));
        FAIL_FUSED.with(|f| f.set(true));
        for ids in [vec![5, 6], vec![7, 8], vec![9, 10]] {
            let input = TokenBatch::step(ids, vec![true, true]);
            assert_eq!(
                fused.step(&model, &input).unwrap(),
                composed.step(&model, &input).unwrap()
            );
        }
        FAIL_FUSED.with(|f| f.set(false));
        assert_eq!(fused.kernels(), StepKernels::Composed);
        assert!(fused
            .fused_failure()
            .is_some_and(|w| w.contains("simulated")));
        assert_eq!(composed.fused_failure(), None);
    }

    #[test]
    fn columns_round_up_to_the_bucket_and_stop_at_the_context() {
        assert_eq!(static_columns(16, 128, 1024), 192);
        assert_eq!(static_columns(3, 1, 1024), 64);
        assert_eq!(static_columns(64, 0, 1024), 64);
        assert_eq!(static_columns(1000, 200, 1024), 1024);
        assert_eq!(static_columns(3, 10, 8), 8);
    }
}
