//! Finding and reading checkpoint files: `model.safetensors` (with or without the
//! `transformer.` prefix, with or without `lm_head.weight`) and `pytorch_model.bin`
//! (zip-format torch pickle, read by candle's inert pickle interpreter: nothing in
//! the file is ever executed).
//!
//! Safetensors files are **not** memory-mapped: the header is validated first,
//! then each tensor is read with an ordinary positioned read into a buffer that
//! lives only until the tensor is built. A file truncated or replaced while it
//! is being read therefore gives an error that names the file and the tensor,
//! never a `SIGBUS`; the extra memory is one tensor at a time.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde_json::Value;

use super::{Gpt2, Gpt2Config, LoadError, TextTokenizer};

/// Safetensors headers larger than this are refused before being read.
const MAX_SAFETENSORS_HEADER: u64 = 100 * 1024 * 1024;

/// Which container the weights are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum WeightFormat {
    Safetensors,
    PytorchBin,
}

/// The files that make up one checkpoint.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The folder the checkpoint lives in.
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: PathBuf,
    pub format: WeightFormat,
    /// `tokenizer.json` or `vocab.txt`, when the folder has one.
    pub tokenizer: Option<PathBuf>,
}

impl ModelFiles {
    /// Resolves a folder, or a single weights file inside a folder, to its files.
    pub fn locate(path: &Path) -> Result<Self, LoadError> {
        let meta = std::fs::metadata(path).map_err(|_| LoadError::NotFound {
            path: path.to_path_buf(),
        })?;
        let (dir, weights) = if meta.is_file() {
            let dir = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            (dir, path.to_path_buf())
        } else {
            let weights = Self::find_weights(path)?;
            (path.to_path_buf(), weights)
        };
        let format = match weights.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => WeightFormat::Safetensors,
            Some("bin" | "pt" | "pth") => WeightFormat::PytorchBin,
            _ => return Err(LoadError::NoWeights {
                path: weights,
                problem:
                    "unknown weights file type: expected .safetensors or a PyTorch .bin/.pt/.pth"
                        .into(),
            }),
        };
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(LoadError::NotFound { path: config });
        }
        let tokenizer = ["tokenizer.json", "vocab.txt"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file());
        Ok(Self {
            dir,
            config,
            weights,
            format,
            tokenizer,
        })
    }

    fn find_weights(dir: &Path) -> Result<PathBuf, LoadError> {
        let entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| LoadError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        if entries.is_empty() {
            return Err(LoadError::NoWeights {
                path: dir.to_path_buf(),
                problem: "the folder is empty; a GPT-2 checkpoint needs config.json, model.safetensors (or pytorch_model.bin) and tokenizer.json (or vocab.txt)".into(),
            });
        }
        for preferred in ["model.safetensors", "pytorch_model.bin"] {
            let p = dir.join(preferred);
            if p.is_file() {
                return Ok(p);
            }
        }
        for index in [
            "model.safetensors.index.json",
            "pytorch_model.bin.index.json",
        ] {
            if dir.join(index).is_file() {
                return Err(LoadError::Sharded {
                    path: dir.to_path_buf(),
                    index: index.into(),
                });
            }
        }
        let candidates: Vec<&PathBuf> = entries
            .iter()
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("safetensors")))
            .collect();
        match candidates.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(LoadError::NoWeights {
                path: dir.to_path_buf(),
                problem: "no model.safetensors or pytorch_model.bin in this folder".into(),
            }),
            many => Err(LoadError::NoWeights {
                path: dir.to_path_buf(),
                problem: format!(
                    "{} .safetensors files and no model.safetensors; open the one you mean directly",
                    many.len()
                ),
            }),
        }
    }
}

/// One tensor as a safetensors header lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range of the tensor's data, counted from the start of the file.
    pub file_range: (u64, u64),
}

/// What a checked safetensors header says.
#[derive(Debug, Clone)]
pub struct SafetensorsSummary {
    pub tensors: Vec<TensorEntry>,
    pub file_len: u64,
}

fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Reads and checks a safetensors header against the file without mapping it:
/// header length within the file and under 100 MB, valid JSON, every tensor's
/// byte range inside the data section and consistent with its dtype and shape.
pub fn inspect_safetensors(path: &Path) -> Result<SafetensorsSummary, LoadError> {
    let bad = |problem: String| LoadError::Safetensors {
        path: path.to_path_buf(),
        problem,
    };
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    if file_len < 8 {
        return Err(bad(format!(
            "the file is {file_len} bytes; a safetensors file starts with an 8-byte header length"
        )));
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes).map_err(io)?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_SAFETENSORS_HEADER {
        return Err(bad(format!(
            "header length {header_len} bytes is over the {MAX_SAFETENSORS_HEADER}-byte limit"
        )));
    }
    if 8 + header_len > file_len {
        return Err(bad(format!(
            "header length {header_len} is larger than the file ({file_len} bytes): truncated, or not a safetensors file"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let value: Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_len = file_len - 8 - header_len;
    let mut tensors = Vec::with_capacity(obj.len());
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let field = |f: &str| {
            info.get(f)
                .ok_or_else(|| bad(format!("tensor `{name}` has no `{f}`")))
        };
        let dtype = field("dtype")?
            .as_str()
            .ok_or_else(|| bad(format!("tensor `{name}`: dtype is not a string")))?
            .to_string();
        let elem = dtype_size(&dtype)
            .ok_or_else(|| bad(format!("tensor `{name}`: unknown dtype {dtype}")))?;
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| bad(format!("tensor `{name}`: shape is not a list of sizes")))?;
        let offsets: Vec<u64> = field("data_offsets")?
            .as_array()
            .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad(format!("tensor `{name}`: data_offsets is not [begin, end]")))?;
        let (begin, end) = (offsets[0], offsets[1]);
        if begin > end || end > data_len {
            return Err(bad(format!(
                "tensor `{name}` claims bytes {begin}..{end} but the data section has {data_len} bytes (truncated file?)"
            )));
        }
        let expected = shape
            .iter()
            .try_fold(elem as u128, |acc, &d| acc.checked_mul(d as u128))
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {shape:?} overflows")))?;
        if expected != (end - begin) as u128 {
            return Err(bad(format!(
                "tensor `{name}`: {dtype} {shape:?} needs {expected} bytes but its range holds {}",
                end - begin
            )));
        }
        let data_start = 8 + header_len;
        tensors.push(TensorEntry {
            name: name.clone(),
            dtype,
            shape,
            file_range: (data_start + begin, data_start + end),
        });
    }
    Ok(SafetensorsSummary { tensors, file_len })
}

/// The tensors of one weights file, read on demand.
enum TensorSource {
    Safetensors(SafetensorsReader),
    Pth(candle_core::pickle::PthTensors),
}

/// A validated safetensors file read tensor by tensor with positioned reads.
struct SafetensorsReader {
    file: Mutex<File>,
    entries: std::collections::HashMap<String, TensorEntry>,
}

impl SafetensorsReader {
    fn open(path: &Path) -> Result<Self, LoadError> {
        let summary = inspect_safetensors(path)?;
        let file = File::open(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let entries = summary
            .tensors
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        Ok(Self {
            file: Mutex::new(file),
            entries,
        })
    }

    fn names(&self) -> HashSet<String> {
        self.entries.keys().cloned().collect()
    }

    /// Reads one tensor; a short read (the file shrank since it was checked)
    /// is an error naming the tensor, not a crash.
    fn load(&self, path: &Path, key: &str, dev: &Device) -> Result<Tensor, LoadError> {
        let bad = |problem: String| LoadError::Safetensors {
            path: path.to_path_buf(),
            problem,
        };
        let entry = self
            .entries
            .get(key)
            .ok_or_else(|| bad(format!("tensor `{key}` is not in the header")))?;
        let dtype = candle_dtype(&entry.dtype).ok_or_else(|| {
            bad(format!(
                "tensor `{key}` is {}, which Versifier cannot load (use F32, F16 or BF16)",
                entry.dtype
            ))
        })?;
        let (begin, end) = entry.file_range;
        let mut buf = vec![0u8; (end - begin) as usize];
        {
            let mut file = self
                .file
                .lock()
                .map_err(|_| bad("an earlier read of this file panicked".into()))?;
            file.seek(SeekFrom::Start(begin))
                .and_then(|_| file.read_exact(&mut buf))
                .map_err(|e| {
                    bad(format!(
                        "reading tensor `{key}` (bytes {begin}..{end}) failed: {e}; \
                         the file changed or was truncated while loading"
                    ))
                })?;
        }
        Tensor::from_raw_buffer(&buf, dtype, &entry.shape, dev)
            .map_err(|e| bad(format!("tensor `{key}` could not be built: {e}")))
    }
}

/// The candle dtype for a safetensors dtype name, where candle has one.
fn candle_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I16" => DType::I16,
        "I32" => DType::I32,
        "I64" => DType::I64,
        "BF16" => DType::BF16,
        "F16" => DType::F16,
        "F32" => DType::F32,
        "F64" => DType::F64,
        _ => return None,
    })
}

/// Every tensor a GPT-2 of `cfg` reads, by its canonical `GPT2Model` name,
/// with its shape; `lm_head.weight` is not listed (optional: tied to `wte`).
pub fn expected_tensor_shapes(cfg: &Gpt2Config) -> Vec<(String, Vec<usize>)> {
    let c = cfg.n_embd;
    let mut out = vec![
        ("wte.weight".to_string(), vec![cfg.vocab_size, c]),
        ("wpe.weight".to_string(), vec![cfg.n_positions, c]),
    ];
    for i in 0..cfg.n_layer {
        let layer: [(&str, Vec<usize>); 12] = [
            ("ln_1.weight", vec![c]),
            ("ln_1.bias", vec![c]),
            ("attn.c_attn.weight", vec![c, 3 * c]), // Conv1D: (in, out)
            ("attn.c_attn.bias", vec![3 * c]),
            ("attn.c_proj.weight", vec![c, c]),
            ("attn.c_proj.bias", vec![c]),
            ("ln_2.weight", vec![c]),
            ("ln_2.bias", vec![c]),
            ("mlp.c_fc.weight", vec![c, cfg.n_inner]),
            ("mlp.c_fc.bias", vec![cfg.n_inner]),
            ("mlp.c_proj.weight", vec![cfg.n_inner, c]),
            ("mlp.c_proj.bias", vec![c]),
        ];
        out.extend(
            layer
                .into_iter()
                .map(|(name, shape)| (format!("h.{i}.{name}"), shape)),
        );
    }
    out.push(("ln_f.weight".to_string(), vec![c]));
    out.push(("ln_f.bias".to_string(), vec![c]));
    out
}

/// Checks a safetensors header against the tensors `cfg` needs, as a load
/// would (either key layout; `lm_head.weight` optional), without reading any
/// weights. Each problem is the error a load would give for that tensor.
pub fn check_tensor_shapes(
    path: &Path,
    cfg: &Gpt2Config,
    summary: &SafetensorsSummary,
) -> Vec<LoadError> {
    let stored: HashMap<&str, &[usize]> = summary
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    // (the key as stored, its shape): the load names a tensor the same way.
    let find = |name: &str| {
        let prefixed = format!("transformer.{name}");
        if let Some(shape) = stored.get(name) {
            return Some((name.to_string(), *shape));
        }
        stored
            .get(prefixed.as_str())
            .map(|shape| (prefixed, *shape))
    };
    let mut needed = expected_tensor_shapes(cfg);
    if find("lm_head.weight").is_some() {
        needed.push(("lm_head.weight".into(), vec![cfg.vocab_size, cfg.n_embd]));
    }
    let mut problems = Vec::new();
    for (name, expected) in needed {
        match find(&name) {
            None => problems.push(LoadError::MissingTensor {
                path: path.to_path_buf(),
                name,
                expected,
                inventory: format!("the file has {} tensors", summary.tensors.len()),
            }),
            Some((key, found)) if found != expected.as_slice() => {
                problems.push(LoadError::TensorShape {
                    path: path.to_path_buf(),
                    name: key,
                    found: found.to_vec(),
                    expected,
                });
            }
            Some(_) => {}
        }
    }
    problems
}

/// A `VarBuilder` backend over one checkpoint file that accepts both key layouts
/// (`transformer.h.0...` from `save_pretrained`, `h.0...` from the original hub
/// files), checks shapes, and records the first problem as a typed error.
struct CheckpointBackend {
    path: PathBuf,
    source: TensorSource,
    names: HashSet<String>,
    problem: Arc<Mutex<Option<LoadError>>>,
    /// Tensors read so far and how many the model needs, for progress.
    read: std::sync::atomic::AtomicUsize,
    expected: usize,
    on_progress: Option<LoadProgress>,
}

/// Called with the share of tensors read (0..=1) while a model loads.
pub type LoadProgress = Box<dyn Fn(f32) + Send + Sync>;

impl CheckpointBackend {
    fn open(files: &ModelFiles) -> Result<Self, LoadError> {
        let path = files.weights.clone();
        let (source, names) = match files.format {
            WeightFormat::Safetensors => {
                let reader = SafetensorsReader::open(&path)?;
                let names = reader.names();
                (TensorSource::Safetensors(reader), names)
            }
            WeightFormat::PytorchBin => {
                let pth = candle_core::pickle::PthTensors::new(&path, None).map_err(|e| {
                    LoadError::Pickle {
                        path: path.clone(),
                        problem: e.to_string(),
                    }
                })?;
                let names = pth.tensor_infos().keys().cloned().collect();
                (TensorSource::Pth(pth), names)
            }
        };
        Ok(Self {
            path,
            source,
            names,
            problem: Arc::new(Mutex::new(None)),
            read: std::sync::atomic::AtomicUsize::new(0),
            expected: 1,
            on_progress: None,
        })
    }

    /// The stored key for a canonical `GPT2Model` name, trying the `transformer.` prefix.
    fn resolve(&self, name: &str) -> Option<String> {
        if self.names.contains(name) {
            return Some(name.to_string());
        }
        let prefixed = format!("transformer.{name}");
        self.names.contains(&prefixed).then_some(prefixed)
    }

    fn record(&self, problem: LoadError) -> candle_core::Error {
        let msg = problem.to_string();
        if let Ok(mut slot) = self.problem.lock() {
            slot.get_or_insert(problem);
        }
        candle_core::Error::Msg(msg)
    }

    fn read(&self, key: &str, dev: &Device) -> candle_core::Result<Tensor> {
        match &self.source {
            TensorSource::Safetensors(st) => st
                .load(&self.path, key, dev)
                .map_err(|problem| self.record(problem)),
            TensorSource::Pth(pth) => match pth.get(key)? {
                Some(t) => t.to_device(dev),
                None => Err(candle_core::Error::Msg(format!(
                    "{}: tensor `{key}` vanished",
                    self.path.display()
                ))),
            },
        }
    }
}

impl SimpleBackend for CheckpointBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(key) = self.resolve(name) else {
            let mut sample: Vec<&String> = self.names.iter().collect();
            sample.sort();
            let inventory = if sample.is_empty() {
                "the file holds no tensors at all".to_string()
            } else {
                let some = sample
                    .iter()
                    .take(3)
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("the file has {} tensors, e.g. {some}", sample.len())
            };
            return Err(self.record(LoadError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
                expected: s.dims().to_vec(),
                inventory,
            }));
        };
        let t = self.read(&key, dev)?;
        if t.shape() != &s {
            return Err(self.record(LoadError::TensorShape {
                path: self.path.clone(),
                name: key,
                expected: s.dims().to_vec(),
                found: t.dims().to_vec(),
            }));
        }
        if let Some(report) = &self.on_progress {
            let n = self.read.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            report((n as f32 / self.expected.max(1) as f32).min(1.0));
        }
        super::half_weights::to_dtype_fast(&t, dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.resolve(name) {
            Some(key) => super::half_weights::to_dtype_fast(&self.read(&key, dev)?, dtype),
            None => Err(candle_core::Error::Msg(format!(
                "{}: tensor `{name}` is missing",
                self.path.display()
            ))),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }
}

/// The weights of a checkpoint by their canonical `GPT2Model` names, in
/// `dtype` on `device`, each checked against the shape `cfg` gives it as a load
/// would (the trainer starts a fine-tuning run from them).
pub fn load_named_tensors(
    files: &ModelFiles,
    cfg: &Gpt2Config,
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>, LoadError> {
    let backend = CheckpointBackend::open(files)?;
    expected_tensor_shapes(cfg)
        .into_iter()
        .map(|(name, shape)| {
            match backend.get(
                Shape::from(shape),
                &name,
                candle_nn::Init::Const(0.0),
                dtype,
                device,
            ) {
                Ok(t) => Ok((name, t)),
                Err(source) => {
                    let recorded = backend.problem.lock().ok().and_then(|mut p| p.take());
                    Err(recorded.unwrap_or(LoadError::Candle {
                        path: files.weights.clone(),
                        source,
                    }))
                }
            }
        })
        .collect()
}

/// A checkpoint turned into a model (and its tokenizer, when the folder has one).
pub struct LoadedModel {
    pub files: ModelFiles,
    pub config: Gpt2Config,
    pub model: Gpt2,
    pub tokenizer: Option<TextTokenizer>,
}

/// Loads config, weights and tokenizer from `path` onto `device` in `dtype`.
pub fn load_model(path: &Path, device: &Device, dtype: DType) -> Result<LoadedModel, LoadError> {
    load_model_with_progress(path, device, dtype, None)
}

/// [`load_model`], reporting the share of tensors read as it goes.
pub fn load_model_with_progress(
    path: &Path,
    device: &Device,
    dtype: DType,
    on_progress: Option<LoadProgress>,
) -> Result<LoadedModel, LoadError> {
    let files = ModelFiles::locate(path)?;
    let config = Gpt2Config::from_file(&files.config)?;
    let tokenizer = match &files.tokenizer {
        Some(p) => Some(TextTokenizer::from_file(p, &config)?),
        None => None,
    };
    let mut backend = CheckpointBackend::open(&files)?;
    // wte, wpe, 12 per block, ln_f (2).
    backend.expected = 2 + 12 * config.n_layer + 2;
    backend.on_progress = on_progress;
    let problem = Arc::clone(&backend.problem);
    let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
    match Gpt2::load(vb, &config) {
        Ok(model) => Ok(LoadedModel {
            files,
            config,
            model,
            tokenizer,
        }),
        Err(source) => {
            let recorded = problem.lock().ok().and_then(|mut p| p.take());
            Err(recorded.unwrap_or(LoadError::Candle {
                path: files.weights,
                source,
            }))
        }
    }
}
