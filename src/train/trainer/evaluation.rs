//! Evaluation: the loss on held-out windows (on a frozen copy of the
//! weights), the bigram baseline, and the held-out perplexity.

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

pub(super) fn loss_on(
    model: &Gpt2,
    x: &Tensor,
    y: &Tensor,
    mask: &Tensor,
) -> candle_core::Result<Tensor> {
    let logits = model.forward_train(x, mask)?.to_dtype(DType::F32)?; // (B, T, V), loss in f32
    let (b, t, v) = logits.dims3()?;
    crate::model::train_ops::cross_entropy(&logits.reshape((b * t, v))?, &y.reshape(b * t)?)
}

/// Mean loss over non-overlapping windows of `stream` (at most `max_batches` batches; 0 = all).
pub(super) fn evaluate(
    model: &Gpt2,
    stream: &[u32],
    o: &TrainOptions,
    mask: &Tensor,
    max_batches: usize,
) -> candle_core::Result<f64> {
    let t = o.context;
    let starts: Vec<usize> = (0..stream.len().saturating_sub(t + 1) / t)
        .map(|i| i * t)
        .collect();
    let mut total = 0.0;
    let mut n = 0usize;
    for (i, chunk) in starts.chunks(o.batch_size).enumerate() {
        if max_batches > 0 && i >= max_batches {
            break;
        }
        let (x, y) = batch(stream, chunk, t, mask.device())?;
        total += loss_on(model, &x, &y, mask)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            * chunk.len() as f64;
        n += chunk.len();
    }
    Ok(if n == 0 { f64::NAN } else { total / n as f64 })
}

/// Cross-entropy of an add-one bigram model, fitted on `train`, over the same
/// eval positions the network is scored on.
pub(super) fn bigram_loss(train: &[u32], eval: &[u32], vocab: usize, t: usize) -> f64 {
    let mut counts: HashMap<(u32, u32), u32> = HashMap::new();
    let mut totals = vec![0u32; vocab];
    for w in train.windows(2) {
        *counts.entry((w[0], w[1])).or_insert(0) += 1;
        totals[w[0] as usize] += 1;
    }
    let windows = eval.len().saturating_sub(t + 1) / t;
    let (mut total, mut n) = (0.0, 0usize);
    for wi in 0..windows {
        for j in wi * t..wi * t + t {
            let (a, b) = (eval[j], eval[j + 1]);
            let c = counts.get(&(a, b)).copied().unwrap_or(0) as f64;
            let p = (c + 1.0) / (totals[a as usize] as f64 + vocab as f64);
            total -= p.ln();
            n += 1;
        }
    }
    if n == 0 {
        f64::NAN
    } else {
        total / n as f64
    }
}

/// The model on the current f32 weights without tracking gradients, for
/// evaluation: each layer's activations are freed as soon as the next is
/// computed, where the tracked model keeps them all alive until the loss is.
pub(super) fn frozen_model(
    params: &[(String, Var)],
    cfg: &Gpt2Config,
    device: &Device,
) -> candle_core::Result<Gpt2> {
    let weights = params
        .iter()
        .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
        .collect::<HashMap<String, Tensor>>();
    Gpt2::load_uniform(VarBuilder::from_tensors(weights, DType::F32, device), cfg)
}

/// Held-out perplexity of `model` on `corpus/eval.txt` (windows of `context`),
/// and of an add-one character bigram model fitted on `corpus/train.txt`, on the
/// same positions, both with the model's vocabulary (`vocab_path`). Tokens are
/// characters, the two marks, `[CLS]`/`[SEP]` and form tags.
pub fn held_out_perplexity(
    model: &Gpt2,
    vocab_path: &Path,
    corpus: &Path,
    context: usize,
) -> Result<(f64, f64), TrainError> {
    let vocab = CharVocab::from_tokens(read(vocab_path)?.lines().map(String::from).collect());
    let train_ids = encode_corpus(
        &vocab,
        &read(&corpus.join("train.txt"))?,
        UntaggedLines::EveryOther,
    );
    let eval_ids = encode_corpus(
        &vocab,
        &read(&corpus.join("eval.txt"))?,
        UntaggedLines::EveryOther,
    );
    let o = TrainOptions {
        context,
        batch_size: 16,
        ..TrainOptions::default()
    };
    let mask = Gpt2::causal_mask(context, model.device())
        .map_err(|source| TrainError::Step { step: 0, source })?;
    let loss = evaluate(model, &eval_ids, &o, &mask, 0)
        .map_err(|source| TrainError::Step { step: 0, source })?;
    let bigram = bigram_loss(&train_ids, &eval_ids, vocab.len(), context);
    Ok((loss.exp(), bigram.exp()))
}
