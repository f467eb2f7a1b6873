//! A model swapped in beside the one serving must write a token before any
//! request is sent to it: loading proves the files are whole, not that the
//! weights compute (a checkpoint of NaNs loads, then fails every request).

use candle_core::{DType, Device};

use crate::model::{LoadedModel, TokenBatch};

/// Runs one token through `model` and checks that every logit is a number.
/// The error says what went wrong, for the swap's report.
pub(super) fn write_first_token(model: &LoadedModel) -> Result<(), String> {
    let m = &model.model;
    let mut cache = m.new_cache(1);
    let batch = TokenBatch::left_padded(&[vec![0u32]], 0); // (1, 1)
    let failed =
        |e: &dyn std::fmt::Display| format!("it loaded but could not write a first token: {e}");
    let logits = m
        .forward_last(&batch, &mut cache)
        .map_err(|e| failed(&e))?
        .to_dtype(DType::F32)
        .and_then(|l| l.to_device(&Device::Cpu))
        .and_then(|l| l.to_vec2::<f32>()) // (1, vocab)
        .map_err(|e| failed(&e))?;
    let row = logits.first().map_or(&[][..], Vec::as_slice);
    if row.is_empty() {
        return Err("it loaded but wrote no logits for a first token".into());
    }
    if let Some(bad) = row.iter().position(|x| !x.is_finite()) {
        return Err(format!(
            "it loaded but its first token's logits are not numbers (logit {bad} is {}): the weights are broken",
            row[bad]
        ));
    }
    Ok(())
}
