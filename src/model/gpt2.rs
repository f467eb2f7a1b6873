//! GPT-2 on candle: pre-LN transformer blocks, Conv1D weights stored `[in, out]`,
//! a tied LM head, and a KV cache that lives outside the weights so one loaded
//! model can serve many batched generations.
//!
//! On the CPU the weight matrices are repacked at load into panels that stream
//! through one kernel (in f32, or in f16/bf16: half the bytes to read per
//! token), while activations, norms, attention and the KV cache are f32: see
//! [`super::packed_matrix`]. GPUs and training keep candle's tensors.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Init, VarBuilder};

use super::config::{Activation, Gpt2Config};
pub use super::forward_error::ForwardError;
use super::fused_decode::StepKernels;
use super::kv_cache::LayerKv;
pub use super::kv_cache::{KvCache, StaticKvCache};
use super::packed_matrix::{Epilogue, PackedMatrix, SourceLayout};
use super::StaticDecoder;

/// Value added to attention scores that must not be attended to. Finite, so that a
/// row with every key masked (a padding query) gives a uniform softmax, not NaN.
const MASKED: f32 = -1.0e30;

/// One step's input: `batch` rows of `len` tokens each, plus which of them are real
/// (false marks padding, left or right).
#[derive(Debug, Clone)]
pub struct TokenBatch {
    pub ids: Vec<u32>,
    pub valid: Vec<bool>,
    pub batch: usize,
    pub len: usize,
}

impl TokenBatch {
    /// Rows of different lengths, left-padded with `pad` so all end at the same column.
    pub fn left_padded(rows: &[Vec<u32>], pad: u32) -> Self {
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut valid = Vec::with_capacity(rows.len() * len);
        for row in rows {
            let padding = len - row.len();
            ids.extend(std::iter::repeat_n(pad, padding).chain(row.iter().copied()));
            valid.extend(
                std::iter::repeat_n(false, padding).chain(std::iter::repeat_n(true, row.len())),
            );
        }
        Self {
            ids,
            valid,
            batch: rows.len(),
            len,
        }
    }

    /// Rows of different lengths, right-padded with `pad`.
    pub fn right_padded(rows: &[Vec<u32>], pad: u32) -> Self {
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut valid = Vec::with_capacity(rows.len() * len);
        for row in rows {
            let padding = len - row.len();
            ids.extend(row.iter().copied().chain(std::iter::repeat_n(pad, padding)));
            valid.extend(
                std::iter::repeat_n(true, row.len()).chain(std::iter::repeat_n(false, padding)),
            );
        }
        Self {
            ids,
            valid,
            batch: rows.len(),
            len,
        }
    }

    /// One new token per row (a decode step); `valid[r]` false for rows that have finished.
    pub fn step(ids: Vec<u32>, valid: Vec<bool>) -> Self {
        let batch = ids.len();
        Self {
            ids,
            valid,
            batch,
            len: 1,
        }
    }
}

/// The value added to a masked attention score in `dtype`: large and finite
/// (f16 cannot hold [`MASKED`]), so a softmax over it gives exactly 0.
pub fn masked_value(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => -65504.0,
        _ => MASKED,
    }
}

/// Layer norm with GPT-2's `weight`/`bias`: candle's fused kernel for inference,
/// the composite (differentiable) form for training.
#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl Norm {
    fn load(vb: VarBuilder, size: usize, eps: f64, plan: WeightPlan) -> candle_core::Result<Self> {
        Ok(Self {
            weight: plan.small(vb.get_with_hints(size, "weight", Init::Const(1.0))?)?,
            bias: plan.small(vb.get_with_hints(size, "bias", Init::Const(0.0))?)?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if train || !x.is_contiguous() {
            super::train_ops::layer_norm(x, &self.weight, &self.bias, self.eps)
        } else {
            candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
        }
    }
}

/// How the weights are held: all in one dtype (GPUs, and training, which needs
/// candle's differentiable ops), or packed matrices with f32 for everything
/// else (inference on the CPU, in any precision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightPlan {
    /// Every tensor and activation in the checkpoint's load dtype.
    Uniform,
    /// Weight matrices in the load dtype (f32, f16 or bf16), repacked into
    /// [`PackedMatrix`] panels for the CPU kernel; biases, norms, positions,
    /// activations and the KV cache f32.
    PackedOnCpu,
}

impl WeightPlan {
    fn for_load(vb: &VarBuilder) -> Self {
        if vb.device().is_cpu() {
            Self::PackedOnCpu
        } else {
            Self::Uniform
        }
    }

    /// A bias, norm or position table: f32 under the packed plan.
    fn small(self, t: Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Uniform => Ok(t),
            Self::PackedOnCpu => t.to_dtype(DType::F32),
        }
    }

    /// A weight matrix stored as `layout`, held as this plan holds matrices.
    fn matrix(self, w: Tensor, layout: SourceLayout) -> candle_core::Result<Matrix> {
        Ok(match self {
            Self::Uniform => Matrix::Tensor(w, layout),
            Self::PackedOnCpu => Matrix::Packed(PackedMatrix::from_tensor(&w, layout)?),
        })
    }
}

/// A weight matrix and how to multiply by it.
#[derive(Debug, Clone)]
enum Matrix {
    /// A candle tensor laid out as it says, multiplied in the weights' dtype.
    Tensor(Tensor, SourceLayout),
    /// Packed panels on the CPU, multiplied with f32 activations.
    Packed(PackedMatrix),
}

impl Matrix {
    /// `x (M, in)` to `(M, out)`.
    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Tensor(w, SourceLayout::InOut) => x.matmul(w),
            Self::Tensor(w, SourceLayout::OutIn) => x.matmul(&w.t()?),
            Self::Packed(w) => w.matmul(x),
        }
    }

    /// The dtype the weights are stored in.
    fn dtype(&self) -> DType {
        match self {
            Self::Tensor(w, _) => w.dtype(),
            Self::Packed(w) => w.dtype(),
        }
    }
}

/// The token embedding table: its own tensor, or the rows of a packed LM head
/// it is tied to (so the CPU keeps one copy of the matrix, not two).
#[derive(Debug, Clone)]
enum TokenTable {
    Tensor(Embedding),
    TiedToHead(PackedMatrix),
}

impl TokenTable {
    /// `ids (B, T)` to `(B, T, C)` in `dtype`.
    fn forward(&self, ids: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        match self {
            Self::Tensor(e) => e.forward(ids)?.to_dtype(dtype),
            Self::TiedToHead(head) => head.embed(ids)?.to_dtype(dtype),
        }
    }
}

/// Conv1D as GPT-2 stores it: `y = x @ W + b` with `W` of shape `[in, out]`.
#[derive(Debug, Clone)]
struct Conv1D {
    weight: Matrix,
    bias: Tensor, // (out)
    /// The bias on the host for a packed weight's fused epilogue.
    bias_host: Option<Arc<Vec<f32>>>,
}

impl Conv1D {
    fn load(
        vb: VarBuilder,
        n_in: usize,
        n_out: usize,
        plan: WeightPlan,
    ) -> candle_core::Result<Self> {
        let w = vb.get_with_hints(
            (n_in, n_out),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?; // (in, out)
        let weight = plan.matrix(w, SourceLayout::InOut)?;
        let bias = plan.small(vb.get_with_hints(n_out, "bias", Init::Const(0.0))?)?;
        let bias_host = match weight {
            Matrix::Packed(_) => Some(Arc::new(bias.to_vec1::<f32>()?)),
            Matrix::Tensor(..) => None,
        };
        Ok(Self {
            weight,
            bias,
            bias_host,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_then(x, false)
    }

    /// `x @ W + b`, then GPT-2's tanh GELU when `gelu_tanh`: fused into the
    /// packed kernel's tasks on the CPU, candle's ops elsewhere.
    fn forward_then(&self, x: &Tensor, gelu_tanh: bool) -> candle_core::Result<Tensor> {
        let (b, t, c) = x.dims3()?; // (B, T, in)
        let x = x.reshape((b * t, c))?;
        let y = match (&self.weight, &self.bias_host) {
            (Matrix::Packed(w), Some(bias)) => w.matmul_fused(
                &x,
                Epilogue {
                    bias: Some(bias),
                    gelu_tanh,
                },
            )?, // (B*T, out)
            _ => {
                let y = self.weight.apply(&x)?.broadcast_add(&self.bias)?;
                if gelu_tanh {
                    super::train_ops::gelu_tanh(&y)?
                } else {
                    y
                }
            }
        };
        y.reshape((b, t, ()))
    }
}

#[derive(Debug, Clone)]
struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: usize,
    scale: f64,
}

impl Attention {
    fn load(
        vb: VarBuilder,
        cfg: &Gpt2Config,
        layer: usize,
        plan: WeightPlan,
    ) -> candle_core::Result<Self> {
        let c = cfg.n_embd;
        let mut scale = 1.0 / (cfg.head_dim() as f64).sqrt();
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        Ok(Self {
            c_attn: Conv1D::load(vb.pp("c_attn"), c, 3 * c, plan)?,
            c_proj: Conv1D::load(vb.pp("c_proj"), c, c, plan)?,
            n_head: cfg.n_head,
            scale,
        })
    }

    fn forward(
        &self,
        x: &Tensor,            // (B, T, C)
        mask: Option<&Tensor>, // (B or 1, 1, T, S) f32
        cache: Option<&mut LayerKv>,
    ) -> candle_core::Result<Tensor> {
        let train = cache.is_none();
        let (b, t, c) = x.dims3()?;
        let hd = c / self.n_head;
        let qkv = self.c_attn.forward(x)?; // (B, T, 3C)
        let heads = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(D::Minus1, i * c, c)?
                .reshape((b, t, self.n_head, hd))?
                .transpose(1, 2)? // (B, H, T, hd)
                .contiguous()
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?, // (B, H, S, hd)
            None => (k, v),
        };

        if !train && t == 1 && q.dtype() == DType::F32 && q.device().is_cpu() {
            // Decoding on the CPU: one fused pass per (row, head).
            let y = super::cpu_attention::attend_one_query(&q, &k, &v, mask, self.scale as f32)?; // (B, 1, C)
            return self.c_proj.forward(&y);
        }
        let dtype = q.dtype();
        let att = (q.matmul(&k.t()?)? * self.scale)?; // (B, H, T, S)
                                                      // Softmax in f32 whatever the weights' dtype: cheap at these sizes and exact enough.
        let att = att.to_dtype(DType::F32)?;
        let att = match mask {
            Some(m) => att.broadcast_add(m)?,
            None => att,
        };
        let att = if train {
            super::train_ops::softmax_last_dim(&att)? // differentiable
        } else {
            candle_nn::ops::softmax_last_dim(&att)?
        };
        let att = att.to_dtype(dtype)?;
        let y = att.matmul(&v)?; // (B, H, T, hd)
        let y = y.transpose(1, 2)?.reshape((b, t, c))?; // (B, T, C)
        self.c_proj.forward(&y)
    }
}

impl Attention {
    /// The static-shape attention of [`Gpt2::forward_static`]: the new keys and
    /// values are written into `(B, H, S, hd)` buffers in place, and every query
    /// attends over all `S` columns, with `mask` hiding the ones not written yet.
    /// One copy splits Q, K and V; no tensor changes shape from step to step.
    fn forward_static(
        &self,
        x: &Tensor,    // (B, T, C)
        mask: &Tensor, // (B, 1, T, S), compute dtype
        slot: KvSlot,
        k_cache: &Tensor, // (B, H, S, hd)
        v_cache: &Tensor, // (B, H, S, hd)
    ) -> candle_core::Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let hd = c / self.n_head;
        let qkv = self
            .c_attn
            .forward(x)? // (B, T, 3C)
            .reshape((b, t, 3, self.n_head, hd))?
            .permute((2, 0, 3, 1, 4))? // (3, B, H, T, hd)
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?); // (B, H, T, hd) each
        match slot {
            KvSlot::Columns(start) => {
                k_cache.slice_set(&k, 2, start)?;
                v_cache.slice_set(&v, 2, start)?;
            }
            KvSlot::Indexed(columns) => {
                k_cache.scatter_set(columns, &k, 2)?;
                v_cache.scatter_set(columns, &v, 2)?;
            }
        }
        let att = (q.matmul(&k_cache.t()?)? * self.scale)?; // (B, H, T, S)
        let att = att.broadcast_add(mask)?;
        // candle's softmax kernel accumulates in f32 for f16/bf16 inputs, so no casts.
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(v_cache)?; // (B, H, T, hd)
        let y = y.transpose(1, 2)?.reshape((b, t, c))?; // (B, T, C)
        self.c_proj.forward(&y)
    }
}

/// Where [`Gpt2::forward_static`] writes the keys and values of its input.
#[derive(Debug, Clone, Copy)]
pub enum KvSlot<'a> {
    /// Columns `start..start + T`, known on the host (a prompt pass; never captured).
    Columns(usize),
    /// A `(B, H, T, hd)` u32 device tensor of column indices, read when the step
    /// runs, so a captured CUDA graph writes wherever the decode has reached.
    Indexed(&'a Tensor),
}

#[derive(Debug, Clone)]
struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    activation: Activation,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &Gpt2Config, plan: WeightPlan) -> candle_core::Result<Self> {
        Ok(Self {
            c_fc: Conv1D::load(vb.pp("c_fc"), cfg.n_embd, cfg.n_inner, plan)?,
            c_proj: Conv1D::load(vb.pp("c_proj"), cfg.n_inner, cfg.n_embd, plan)?,
            activation: cfg.activation,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = match self.activation {
            Activation::GeluTanh => self.c_fc.forward_then(x, true)?, // (B, T, n_inner)
            Activation::GeluErf => self.c_fc.forward(x)?.gelu_erf()?,
            Activation::Relu => self.c_fc.forward(x)?.relu()?,
        };
        self.c_proj.forward(&h) // (B, T, C)
    }
}

#[derive(Debug, Clone)]
struct Block {
    ln_1: Norm,
    attn: Attention,
    ln_2: Norm,
    mlp: Mlp,
}

impl Block {
    fn load(
        vb: VarBuilder,
        cfg: &Gpt2Config,
        layer: usize,
        plan: WeightPlan,
    ) -> candle_core::Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        Ok(Self {
            ln_1: Norm::load(vb.pp("ln_1"), cfg.n_embd, eps, plan)?,
            attn: Attention::load(vb.pp("attn"), cfg, layer, plan)?,
            ln_2: Norm::load(vb.pp("ln_2"), cfg.n_embd, eps, plan)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg, plan)?,
        })
    }

    /// `cache: None` is the training path (no cache, differentiable ops).
    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerKv>,
    ) -> candle_core::Result<Tensor> {
        let train = cache.is_none();
        let x = (x + self
            .attn
            .forward(&self.ln_1.forward(x, train)?, mask, cache)?)?;
        &x + self.mlp.forward(&self.ln_2.forward(&x, train)?)?
    }
}

impl Block {
    fn forward_static(
        &self,
        x: &Tensor, // (B, T, C)
        mask: &Tensor,
        slot: KvSlot,
        kv: &Tensor, // (2, B, H, S, hd)
    ) -> candle_core::Result<Tensor> {
        let a = self.attn.forward_static(
            &self.ln_1.forward(x, false)?,
            mask,
            slot,
            &kv.get(0)?,
            &kv.get(1)?,
        )?;
        let x = (x + a)?;
        &x + self.mlp.forward(&self.ln_2.forward(&x, false)?)?
    }

    /// One decode step through the fused kernels of [`super::fused_decode`]:
    /// takes the stream `x` and its `ln_1` norm `h`, returns the stream after
    /// the block and the next norm of it (`norms[1]`: the next block's `ln_1`
    /// or `ln_f`), in 10 kernels.
    fn forward_fused_step(
        &self,
        x: &Tensor,          // (B, C)
        h: &Tensor,          // (B, C)
        norms: &[Tensor; 2], // (3, C) each
        mask: &Tensor,       // (B, 1, 1, S)
        index: &Tensor,      // (B, H, 1, hd) u32
        kv: &Tensor,         // (2, B, H, S, hd)
    ) -> candle_core::Result<(Tensor, Tensor)> {
        use super::fused_decode::{BiasGelu, BiasResidualNorm, CacheWrite, OneTokenAttention};
        let (b, c) = x.dims2()?;
        let norm = BiasResidualNorm { eps: self.ln_2.eps };
        let qkv = self.attn.c_attn.forward(&h.unsqueeze(1)?)?; // (B, 1, 3C)
        kv.inplace_op3(&qkv, index, &CacheWrite)?;
        let attention = OneTokenAttention {
            n_head: self.attn.n_head,
            scale: self.attn.scale as f32,
        };
        let y = qkv
            .apply_op3_no_bwd(kv, mask, &attention)?
            .reshape((b, c))?; // (B, C)
        let both = self
            .attn
            .c_proj
            .weight
            .apply(&y)?
            .apply_op3_no_bwd(&norms[0], x, &norm)?; // (2, B, C)
        let (x, h) = (both.get(0)?, both.get(1)?);
        let mlp = &self.mlp;
        let f = match mlp.activation {
            Activation::GeluTanh => mlp
                .c_fc
                .weight
                .apply(&h)?
                .apply_op2_no_bwd(&mlp.c_fc.bias, &BiasGelu)?,
            Activation::GeluErf => mlp.c_fc.forward(&h.unsqueeze(1)?)?.gelu_erf()?.squeeze(1)?,
            Activation::Relu => mlp.c_fc.forward(&h.unsqueeze(1)?)?.relu()?.squeeze(1)?,
        }; // (B, n_inner)
        let both = mlp
            .c_proj
            .weight
            .apply(&f)?
            .apply_op3_no_bwd(&norms[1], &x, &norm)?; // (2, B, C)
        Ok((both.get(0)?, both.get(1)?))
    }
}

/// A loaded GPT-2 language model.
#[derive(Debug, Clone)]
pub struct Gpt2 {
    wte: TokenTable,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: Norm,
    /// `(V, C)`: `lm_head.weight` when the checkpoint has one, else `wte` (tied).
    lm_head: Matrix,
    device: Device,
    /// The dtype of activations and the KV cache (f32 under the half-matrix plan).
    compute_dtype: DType,
    cfg: Gpt2Config,
    /// The static decode buffers (and captured CUDA graph) of the last request
    /// that used them, kept for the next request of the same shape. Not weights:
    /// held here so they are dropped with the model, before Release resets the
    /// CUDA context.
    static_decoder: Arc<Mutex<Option<StaticDecoder>>>,
    /// Per block, for the fused decode step: `(3, C)` stacks of (the attention
    /// projection's bias, `ln_2`'s weight and bias) and of (the MLP
    /// projection's bias, the next norm's weight and bias), the next norm
    /// being the next block's `ln_1` or `ln_f`. Copies taken at load: a model
    /// whose weights then change (the trainer's) must not decode through the
    /// fused path (the trainer never decodes with the model it trains).
    fused_norms: Vec<[Tensor; 2]>,
}

impl Gpt2 {
    /// Builds the model from checkpoint tensors named as in Hugging Face's
    /// `GPT2Model` (`wte`, `wpe`, `h.N.*`, `ln_f`); `lm_head.weight` is used when present.
    pub fn load(vb: VarBuilder, cfg: &Gpt2Config) -> candle_core::Result<Self> {
        let plan = WeightPlan::for_load(&vb);
        Self::load_with(vb, cfg, plan)
    }

    /// As [`Gpt2::load`], with every tensor and activation in the builder's
    /// dtype on any device and candle's differentiable ops throughout (training:
    /// the CPU's packed matrices have no backward pass).
    pub fn load_uniform(vb: VarBuilder, cfg: &Gpt2Config) -> candle_core::Result<Self> {
        Self::load_with(vb, cfg, WeightPlan::Uniform)
    }

    fn load_with(vb: VarBuilder, cfg: &Gpt2Config, plan: WeightPlan) -> candle_core::Result<Self> {
        let emb = |name: &str, rows: usize, stdev: f64| -> candle_core::Result<Tensor> {
            vb.pp(name).get_with_hints(
                (rows, cfg.n_embd),
                "weight",
                Init::Randn { mean: 0.0, stdev },
            )
        };
        // wte stays in the load dtype: it is also the (tied) LM head matrix.
        let wte = emb("wte", cfg.vocab_size, 0.02)?; // (V, C)
        let wpe = Embedding::new(plan.small(emb("wpe", cfg.n_positions, 0.01)?)?, cfg.n_embd);
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::load(vb.pp("h").pp(i), cfg, i, plan))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let ln_f = Norm::load(vb.pp("ln_f"), cfg.n_embd, cfg.layer_norm_epsilon, plan)?;
        let (wte, lm_head) = if vb.contains_tensor("lm_head.weight") {
            let head = vb.get((cfg.vocab_size, cfg.n_embd), "lm_head.weight")?;
            let table = TokenTable::Tensor(Embedding::new(wte, cfg.n_embd));
            (table, plan.matrix(head, SourceLayout::OutIn)?)
        } else {
            let head = plan.matrix(wte.clone(), SourceLayout::OutIn)?;
            let table = match &head {
                Matrix::Packed(p) => TokenTable::TiedToHead(p.clone()),
                Matrix::Tensor(..) => TokenTable::Tensor(Embedding::new(wte, cfg.n_embd)),
            };
            (table, head)
        };
        let compute_dtype = match plan {
            WeightPlan::Uniform => vb.dtype(),
            WeightPlan::PackedOnCpu => DType::F32,
        };
        let stack =
            |bias: &Tensor, norm: &Norm| Tensor::stack(&[bias, &norm.weight, &norm.bias], 0);
        let fused_norms = (0..blocks.len())
            .map(|i| {
                let next = blocks.get(i + 1).map_or(&ln_f, |b| &b.ln_1);
                Ok([
                    stack(&blocks[i].attn.c_proj.bias, &blocks[i].ln_2)?,
                    stack(&blocks[i].mlp.c_proj.bias, next)?,
                ])
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            fused_norms,
            device: vb.device().clone(),
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            compute_dtype,
            cfg: cfg.clone(),
            static_decoder: Arc::default(),
        })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype the weight matrices are held in.
    pub fn dtype(&self) -> DType {
        self.lm_head.dtype()
    }

    /// The dtype of activations and the KV cache: the weights' dtype, except f32
    /// on the CPU, where the matrices are packed.
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// The slot holding the static decoder kept between requests (see
    /// [`StaticDecoder`]); lock it for the whole of a generation.
    pub fn static_decoder(&self) -> &Mutex<Option<StaticDecoder>> {
        &self.static_decoder
    }

    /// A fresh, empty cache for `batch` sequences.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(self.cfg.n_layer, batch)
    }

    /// Runs `input` after what `cache` holds and returns the final hidden states
    /// `(B, T, C)` (after `ln_f`). Token ids are checked on the host first.
    pub fn forward_hidden(
        &self,
        input: &TokenBatch,
        cache: &mut KvCache,
    ) -> Result<Tensor, ForwardError> {
        let (b, t) = (input.batch, input.len);
        if input.ids.len() != b * t || input.valid.len() != b * t {
            return Err(ForwardError::Shape(format!(
                "{} ids and {} validity flags for a {b}x{t} batch",
                input.ids.len(),
                input.valid.len()
            )));
        }
        if cache.batch() != b {
            return Err(ForwardError::Shape(format!(
                "cache holds {} rows, input has {b}",
                cache.batch()
            )));
        }
        if t == 0 {
            return Err(ForwardError::Shape("empty input".into()));
        }
        for (i, &id) in input.ids.iter().enumerate() {
            if id as usize >= self.cfg.vocab_size {
                return Err(ForwardError::TokenOutOfRange {
                    id,
                    row: i / t.max(1),
                    vocab: self.cfg.vocab_size,
                });
            }
        }

        // Position ids: each real token gets the count of real tokens before it in its row.
        let mut positions = Vec::with_capacity(b * t);
        for row in 0..b {
            let mut next = cache.real_tokens[row];
            for col in 0..t {
                if input.valid[row * t + col] {
                    if next >= self.cfg.n_positions {
                        return Err(ForwardError::ContextFull {
                            row,
                            position: next,
                            max: self.cfg.n_positions,
                        });
                    }
                    positions.push(next as u32);
                    next += 1;
                } else {
                    positions.push(0);
                }
            }
        }
        let past = cache.len();
        for row in 0..b {
            let flags = &input.valid[row * t..(row + 1) * t];
            cache.valid[row].extend_from_slice(flags);
            cache.real_tokens[row] += flags.iter().filter(|v| **v).count();
        }
        let total = past + t;

        let mask = if t == 1
            && input.valid.iter().all(|v| *v)
            && cache.valid.iter().all(|r| r.iter().all(|v| *v))
        {
            None
        } else {
            // (B, 1, T, S): causal, and only real keys.
            let mut m = Vec::with_capacity(b * t * total);
            for row in 0..b {
                for i in 0..t {
                    for j in 0..total {
                        let visible = j <= past + i && cache.valid[row][j];
                        m.push(if visible { 0.0 } else { MASKED });
                    }
                }
            }
            Some(Tensor::from_vec(m, (b, 1, t, total), self.device())?)
        };

        let dev = self.device();
        let ids = Tensor::from_vec(input.ids.clone(), (b, t), dev)?;
        let pos = Tensor::from_vec(positions, (b, t), dev)?;
        let tok = self.wte.forward(&ids, self.compute_dtype)?; // (B, T, C)
        let mut x = (tok + self.wpe.forward(&pos)?)?; // (B, T, C)
        for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = block.forward(&x, mask.as_ref(), Some(layer_cache))?;
        }
        Ok(self.ln_f.forward(&x, false)?)
    }

    /// Logits `(B, T, V)` for every input position.
    pub fn forward(&self, input: &TokenBatch, cache: &mut KvCache) -> Result<Tensor, ForwardError> {
        let h = self.forward_hidden(input, cache)?;
        Ok(self.project(&h)?)
    }

    /// Logits `(B, V)` of each row's last input position only (what sampling needs).
    pub fn forward_last(
        &self,
        input: &TokenBatch,
        cache: &mut KvCache,
    ) -> Result<Tensor, ForwardError> {
        let h = self.forward_hidden(input, cache)?;
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?; // (B, 1, C)
        Ok(self.project(&last)?.squeeze(1)?)
    }

    /// The static-shape forward pass used for decoding on the GPU (and, in tests,
    /// on the CPU): `ids` and `positions` `(B, T)` u32, `mask` `(B, 1, T, S)` in
    /// [`Gpt2::compute_dtype`] (0 where visible, [`masked_value`] elsewhere), keys
    /// and values written into `cache` at `slot`. Returns the f32 logits `(B, V)`
    /// of each row's last input position.
    ///
    /// Every tensor it allocates is freed before it returns and none of its
    /// kernels take host data that changes from step to step, so with `T = 1` and
    /// [`KvSlot::Indexed`] one call can be captured as a CUDA graph and replayed
    /// after the caller rewrites the input buffers in place. No host checks
    /// happen here: [`super::StaticDecoder`] checks ids and positions first.
    pub fn forward_static(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        slot: KvSlot,
        cache: &StaticKvCache,
        kernels: StepKernels,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let tok = self.wte.forward(ids, self.compute_dtype)?; // (B, T, C)
        let mut x = (tok + self.wpe.forward(positions)?)?; // (B, T, C)
        if let (StepKernels::Fused, KvSlot::Indexed(index), 1) = (kernels, slot, t) {
            let mut x = x.reshape((b, self.cfg.n_embd))?; // (B, C)
            let first_norm = self.blocks.first().map_or(&self.ln_f, |b| &b.ln_1);
            let mut h = first_norm.forward(&x, false)?; // (B, C)
            for ((block, kv), norms) in self.blocks.iter().zip(&cache.kv).zip(&self.fused_norms) {
                (x, h) = block.forward_fused_step(&x, &h, norms, mask, index, kv)?;
            }
            // `h` is `ln_f` of the last block's stream.
            return self
                .project(&h.unsqueeze(1)?)?
                .squeeze(1)?
                .to_dtype(DType::F32); // (B, V)
        }
        for (block, kv) in self.blocks.iter().zip(&cache.kv) {
            x = block.forward_static(&x, mask, slot, kv)?;
        }
        let last = x.narrow(1, t - 1, 1)?.contiguous()?; // (B, 1, C)
        let h = self.ln_f.forward(&last, false)?;
        self.project(&h)?.squeeze(1)?.to_dtype(DType::F32) // (B, V)
    }

    /// The training forward pass: full sequences `(B, T)` of token ids, no cache,
    /// differentiable ops only; `causal` is a `(T, T)` f32 mask (0 or a large
    /// negative). Returns logits `(B, T, V)`.
    pub fn forward_train(&self, ids: &Tensor, causal: &Tensor) -> candle_core::Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        let pos = Tensor::arange(0u32, t as u32, ids.device())?;
        let mut x = self
            .wte
            .forward(ids, self.compute_dtype)?
            .broadcast_add(&self.wpe.forward(&pos)?.to_dtype(self.compute_dtype)?)?; // (B, T, C)
        let mask = causal.unsqueeze(0)?.unsqueeze(0)?; // (1, 1, T, T), f32: softmax runs in f32
        for block in &self.blocks {
            x = block.forward(&x, Some(&mask), None)?;
        }
        let h = self.ln_f.forward(&x, true)?;
        self.project(&h)
    }

    /// A `(T, T)` causal mask for [`Gpt2::forward_train`].
    pub fn causal_mask(t: usize, device: &Device) -> candle_core::Result<Tensor> {
        let m: Vec<f32> = (0..t * t)
            .map(|i| if i % t <= i / t { 0.0 } else { MASKED })
            .collect();
        Tensor::from_vec(m, (t, t), device)
    }

    /// Hidden `(B, T, C)` to logits `(B, T, V)` through the tied head.
    fn project(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, c) = h.dims3()?;
        let h = h.reshape((b * t, c))?; // (B*T, C)
        let logits = self.lm_head.apply(&h)?; // (B*T, V)
        logits.reshape((b, t, ()))
    }
}
