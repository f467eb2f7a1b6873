//! Where training starts: fresh weights, or a model fine-tuned (its
//! vocabulary grown by the characters the corpus adds).

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

/// The model a fine-tuning run (`init_from`) starts from.
pub(super) struct InitModel {
    pub(super) files: ModelFiles,
    pub(super) cfg: Gpt2Config,
    pub(super) vocab: CharVocab,
}

impl InitModel {
    /// Opens and checks `dir` before anything is written: a GPT-2 folder whose
    /// tokenizer is a character `vocab.txt` of `vocab_size` tokens with the
    /// tokens a poem line is written with.
    pub(super) fn open(dir: &Path) -> Result<Self, TrainError> {
        let files = ModelFiles::locate(dir).map_err(|e| match e {
            LoadError::NotFound { path } if path == dir => TrainError::InitFrom {
                path,
                problem: "no such folder; --init-from takes a model folder, such as the \
                          bundled models/tang-poems"
                    .into(),
            },
            other => other.into(),
        })?;
        let cfg = Gpt2Config::from_file(&files.config)?;
        let vocab_path = files.dir.join("vocab.txt");
        if !vocab_path.is_file() {
            return Err(TrainError::InitFrom {
                path: files.dir.clone(),
                problem: "it has no vocab.txt; the trainer continues character models (a \
                          folder made by `versifier train`, or a GPT-2 with a BERT-style \
                          vocab.txt), not byte-level BPE ones (tokenizer.json)"
                    .into(),
            });
        }
        let vocab = CharVocab::from_tokens(read(&vocab_path)?.lines().map(String::from).collect());
        if vocab.len() != cfg.vocab_size {
            return Err(TrainError::InitFrom {
                path: vocab_path,
                problem: format!(
                    "{} tokens, but config.json says vocab_size = {}; use the vocab.txt the \
                     model was trained with",
                    vocab.len(),
                    cfg.vocab_size
                ),
            });
        }
        if let Some(missing) = ["[CLS]", "[SEP]", "[UNK]"]
            .into_iter()
            .find(|t| vocab.id(t).is_none())
        {
            return Err(TrainError::InitFrom {
                path: vocab_path,
                problem: format!(
                    "has no {missing} token; the trainer writes each poem as [CLS] poem \
                     [SEP], with [UNK] for a character the vocabulary lacks"
                ),
            });
        }
        Ok(Self { files, cfg, vocab })
    }

    /// Its weights, f32 on the CPU, with `added` embedding rows appended for
    /// the tokens the corpus brought.
    pub(super) fn tensors(&self, added: usize) -> Result<HashMap<String, Tensor>, TrainError> {
        let mut tensors = load_named_tensors(&self.files, &self.cfg, &Device::Cpu, DType::F32)?;
        if let Some(wte) = tensors.remove("wte.weight") {
            let grown = grow_embedding(&wte, added)
                .map_err(|source| TrainError::Step { step: 0, source })?;
            tensors.insert("wte.weight".into(), grown);
        }
        Ok(tensors)
    }
}

/// `(V, C)` -> `(V + added, C)`, each new row the mean of the old ones: a new
/// token starts as an average one (with the tied LM head, its logit is a
/// typical token's), not at random.
pub(super) fn grow_embedding(wte: &Tensor, added: usize) -> candle_core::Result<Tensor> {
    if added == 0 {
        return Ok(wte.clone());
    }
    let (_, c) = wte.dims2()?;
    let mean = wte.mean_keepdim(0)?; // (1, C)
    Tensor::cat(&[wte, &mean.broadcast_as((added, c))?.contiguous()?], 0)
}

/// Where a run's parameters come from.
pub(super) enum Start<'a> {
    /// A deterministic random initialisation.
    Scratch,
    /// The `init_from` model, with this many tokens added to its vocabulary.
    Model(&'a InitModel, usize),
    /// `ckpt_dir`'s checkpoint.
    Resume,
}

/// The parameters a run starts from, f32 on `device`: a deterministic
/// initialisation, the `init_from` model's, or the checkpoint's when resuming.
pub(super) fn initial_parameters(
    start: Start<'_>,
    o: &TrainOptions,
    cfg: &Gpt2Config,
    ckpt_dir: &Path,
    device: &Device,
) -> Result<VarMap, TrainError> {
    let step_err =
        |step: usize| move |source: candle_core::Error| TrainError::Step { step, source };
    let varmap = VarMap::new();
    let init = match start {
        Start::Resume => {
            let p = ckpt_dir.join("model.safetensors");
            let loaded = candle_core::safetensors::load(&p, &Device::Cpu).map_err(|e| {
                TrainError::Resume {
                    path: p.clone(),
                    problem: e.to_string(),
                }
            })?;
            loaded
                .into_iter()
                .map(|(k, v)| (k.strip_prefix("transformer.").unwrap_or(&k).to_string(), v))
                .collect()
        }
        Start::Model(model, added) => model.tensors(added)?,
        Start::Scratch => synthetic::gpt2_init_tensors(cfg, o.seed).map_err(step_err(0))?,
    };
    {
        let mut data = varmap.data().lock().map_err(|_| TrainError::Invalid {
            field: "varmap",
            problem: "poisoned".into(),
        })?;
        for (name, t) in init {
            let t = t
                .to_dtype(DType::F32)
                .and_then(|t| t.to_device(device))
                .map_err(step_err(0))?;
            data.insert(name, Var::from_tensor(&t).map_err(step_err(0))?);
        }
    }
    Ok(varmap)
}
