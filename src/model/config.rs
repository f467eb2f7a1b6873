//! `config.json` of a Hugging Face `GPT2LMHeadModel`, read field by field so that
//! every problem names the field, what was expected and what was found.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::LoadError;

/// Upper bounds that keep a hostile or mistyped config from asking for absurd
/// allocations before a single tensor is read.
const MAX_LAYERS: usize = 256;
const MAX_HEADS: usize = 256;
const MAX_EMBD: usize = 32_768;
const MAX_POSITIONS: usize = 1 << 20;
const MAX_VOCAB: usize = 4_000_000;

/// The non-linearity of the MLP block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`: the tanh approximation GPT-2 was trained with.
    GeluTanh,
    /// `gelu`: the exact erf form.
    GeluErf,
    /// `relu`.
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "gelu" => Some(Self::GeluErf),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }

    /// The name `config.json` uses for this activation.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::GeluTanh => "gelu_new",
            Self::GeluErf => "gelu",
            Self::Relu => "relu",
        }
    }
}

/// A validated GPT-2 configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Width of the MLP's hidden layer (`n_inner`, `4 * n_embd` when null).
    pub n_inner: usize,
    pub activation: Activation,
    pub layer_norm_epsilon: f64,
    pub scale_attn_by_inverse_layer_idx: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl Gpt2Config {
    /// The shape of the original GPT-2 small (124M parameters).
    pub fn gpt2_124m() -> Self {
        Self::small(50_257, 1024, 768, 12, 12)
    }

    /// A config with default GPT-2 choices for everything but the sizes.
    pub fn small(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: 4 * n_embd,
            activation: Activation::GeluTanh,
            layer_norm_epsilon: 1e-5,
            scale_attn_by_inverse_layer_idx: false,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Number of parameters (tied LM head counted once).
    pub fn param_count(&self) -> usize {
        let c = self.n_embd;
        let per_layer = 2 * c // ln_1
            + c * 3 * c + 3 * c // c_attn
            + c * c + c // attn.c_proj
            + 2 * c // ln_2
            + c * self.n_inner + self.n_inner // c_fc
            + self.n_inner * c + c; // mlp.c_proj
        self.vocab_size * c + self.n_positions * c + self.n_layer * per_layer + 2 * c
    }

    /// Bytes of KV cache for `batch` sequences of `context` tokens at `dtype_bytes` per value.
    pub fn kv_cache_bytes(&self, batch: usize, context: usize, dtype_bytes: usize) -> usize {
        2 * self.n_layer * batch * context * self.n_embd * dtype_bytes
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses and validates the text of a `config.json`; `path` is only used in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, LoadError> {
        let value: Value = serde_json::from_str(text).map_err(|e| LoadError::Config {
            path: path.to_path_buf(),
            field: None,
            problem: format!("is not valid JSON: {e}"),
        })?;
        let obj = value.as_object().ok_or_else(|| LoadError::Config {
            path: path.to_path_buf(),
            field: None,
            problem: "must be a JSON object".into(),
        })?;
        let fields = ConfigFields {
            path: path.to_path_buf(),
            obj,
        };

        if let Some(model_type) = obj.get("model_type").and_then(Value::as_str) {
            if model_type != "gpt2" {
                return Err(fields.err(
                    "model_type",
                    format!("expected \"gpt2\", found \"{model_type}\" (only GPT-2 checkpoints are supported)"),
                ));
            }
        }
        if fields.bool_or("add_cross_attention", false)? {
            return Err(fields.err(
                "add_cross_attention",
                "cross-attention (encoder-decoder) GPT-2 is not supported".into(),
            ));
        }
        if fields.bool_or("reorder_and_upcast_attn", false)? {
            tracing::warn!(
                "{}: reorder_and_upcast_attn is set; attention is computed in f32 anyway",
                path.display()
            );
        }

        let n_embd = fields.count("n_embd", 768, MAX_EMBD)?;
        let n_head = fields.count("n_head", 12, MAX_HEADS)?;
        let n_layer = fields.count("n_layer", 12, MAX_LAYERS)?;
        // Old configs call it n_ctx; n_positions wins when both are present.
        let n_positions = if obj.contains_key("n_positions") {
            fields.count("n_positions", 1024, MAX_POSITIONS)?
        } else {
            fields.count("n_ctx", 1024, MAX_POSITIONS)?
        };
        let vocab_size = fields.count("vocab_size", 50_257, MAX_VOCAB)?;
        if n_embd % n_head != 0 {
            return Err(fields.err(
                "n_embd",
                format!("n_embd ({n_embd}) must be divisible by n_head ({n_head})"),
            ));
        }
        let n_inner = match obj.get("n_inner") {
            None | Some(Value::Null) => 4 * n_embd,
            Some(_) => fields.count("n_inner", 4 * n_embd, 4 * MAX_EMBD)?,
        };
        let activation = match obj.get("activation_function") {
            None | Some(Value::Null) => Activation::GeluTanh,
            Some(Value::String(s)) => Activation::parse(s).ok_or_else(|| {
                fields.err(
                    "activation_function",
                    format!("unsupported activation \"{s}\" (expected gelu_new, gelu_pytorch_tanh, gelu_fast, gelu or relu)"),
                )
            })?,
            Some(other) => {
                return Err(fields.err(
                    "activation_function",
                    format!("expected a string, found {}", kind_of(other)),
                ))
            }
        };
        let layer_norm_epsilon = match obj.get("layer_norm_epsilon") {
            None | Some(Value::Null) => 1e-5,
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 && x < 1.0 => x,
                _ => {
                    return Err(fields.err(
                        "layer_norm_epsilon",
                        format!("expected a small positive number, found {v}"),
                    ))
                }
            },
        };
        let scale_attn_by_inverse_layer_idx =
            fields.bool_or("scale_attn_by_inverse_layer_idx", false)?;
        if !fields.bool_or("scale_attn_weights", true)? {
            return Err(fields.err("scale_attn_weights", "false is not supported".into()));
        }
        let bos_token_id = fields.token_id("bos_token_id")?;
        let eos_token_id = fields.token_id("eos_token_id")?;
        Ok(Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner,
            activation,
            layer_norm_epsilon,
            scale_attn_by_inverse_layer_idx,
            bos_token_id,
            eos_token_id,
        })
    }

    /// The `config.json` text that describes this model (as `save_pretrained` writes it).
    pub fn to_hf_json(&self) -> Value {
        serde_json::json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": if self.n_inner == 4 * self.n_embd { Value::Null } else { self.n_inner.into() },
            "activation_function": self.activation.hf_name(),
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": true,
        })
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to the fields of one config object, with errors naming the field.
struct ConfigFields<'a> {
    path: PathBuf,
    obj: &'a serde_json::Map<String, Value>,
}

impl ConfigFields<'_> {
    fn err(&self, field: &str, problem: String) -> LoadError {
        LoadError::Config {
            path: self.path.clone(),
            field: Some(field.to_string()),
            problem,
        }
    }

    /// A positive integer in `1..=max`, `default` when absent.
    fn count(&self, field: &str, default: usize, max: usize) -> Result<usize, LoadError> {
        match self.obj.get(field) {
            None => Ok(default),
            Some(v) => match v.as_u64() {
                Some(0) => Err(self.err(field, "must be at least 1, found 0".into())),
                Some(n) if n as u128 > max as u128 => Err(self.err(
                    field,
                    format!("{n} is larger than the supported maximum {max}"),
                )),
                Some(n) => Ok(n as usize),
                None => Err(self.err(
                    field,
                    format!("expected a positive integer, found {} ({v})", kind_of(v)),
                )),
            },
        }
    }

    fn bool_or(&self, field: &str, default: bool) -> Result<bool, LoadError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(
                field,
                format!("expected true or false, found {}", kind_of(v)),
            )),
        }
    }

    fn token_id(&self, field: &str) -> Result<Option<u32>, LoadError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= u32::MAX as u64 => Ok(Some(n as u32)),
                _ => Err(self.err(field, format!("expected a token id, found {v}"))),
            },
        }
    }
}
