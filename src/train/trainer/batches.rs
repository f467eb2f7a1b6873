//! The training batches: windows drawn from the encoded corpus by a seeded
//! generator, prefetched on a thread of their own.

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

/// A deterministic xorshift generator for batch positions.
pub(super) struct BatchRng(pub(super) u64);

impl BatchRng {
    pub(super) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// `(x, y)` for sequences starting at `starts`: inputs and next-token targets.
pub(super) fn batch(
    stream: &[u32],
    starts: &[usize],
    t: usize,
    dev: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(starts.len() * t);
    let mut y = Vec::with_capacity(starts.len() * t);
    for &s in starts {
        x.extend_from_slice(&stream[s..s + t]);
        y.extend_from_slice(&stream[s + 1..s + t + 1]);
    }
    Ok((
        Tensor::from_vec(x, (starts.len(), t), dev)?,
        Tensor::from_vec(y, (starts.len(), t), dev)?,
    ))
}

/// One micro-batch's positions, drawn off the training loop, and the batch
/// generator's state once they were drawn (what a checkpoint saves).
pub(super) struct DrawnBatch {
    pub(super) x: Vec<u32>,
    pub(super) y: Vec<u32>,
    pub(super) rng_after: u64,
}

/// Draws micro-batches on a named thread, a few ahead of the training loop,
/// in exactly the order the loop would have drawn them itself.
pub(super) struct BatchPrefetch {
    pub(super) batches: std::sync::mpsc::Receiver<DrawnBatch>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl BatchPrefetch {
    const AHEAD: usize = 4;

    pub(super) fn spawn(
        stream: std::sync::Arc<Vec<u32>>,
        rng: BatchRng,
        batch: usize,
        t: usize,
    ) -> Result<Self, TrainError> {
        let (tx, batches) = std::sync::mpsc::sync_channel(Self::AHEAD);
        let span = stream.len() - t - 1;
        let mut rng = rng;
        let thread = std::thread::Builder::new()
            .name("train-batches".into())
            .spawn(move || loop {
                let (mut x, mut y) = (Vec::with_capacity(batch * t), Vec::with_capacity(batch * t));
                for _ in 0..batch {
                    let s = rng.below(span);
                    x.extend_from_slice(&stream[s..s + t]);
                    y.extend_from_slice(&stream[s + 1..s + t + 1]);
                }
                if tx
                    .send(DrawnBatch {
                        x,
                        y,
                        rng_after: rng.0,
                    })
                    .is_err()
                {
                    return; // the run ended
                }
            })
            .map_err(|e| TrainError::Invalid {
                field: "batch thread",
                problem: format!("could not start it: {e}"),
            })?;
        Ok(Self {
            batches,
            thread: Some(thread),
        })
    }

    pub(super) fn next(&self) -> Result<DrawnBatch, TrainError> {
        self.batches.recv().map_err(|_| TrainError::Invalid {
            field: "batch thread",
            problem: "it stopped before the run ended".into(),
        })
    }
}

impl Drop for BatchPrefetch {
    fn drop(&mut self) {
        // Close the channel first so the thread's next send fails and it ends.
        let (_, closed) = std::sync::mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.batches, closed));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Which lines of a corpus text lose their form tag when it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UntaggedLines {
    /// Every other line, 詩 and 詞 alike: the stream held-out text is scored on,
    /// so that every run's figures (and the bundled model's) stay comparable.
    EveryOther,
    /// Every other 詩; a 詞 always keeps its tune tag, so the untagged (free)
    /// start is trained on 詩 alone: untagged 詞 taught it to drift into 詞
    /// shapes (models/tang-poems/MODEL_CARD.md, "Fine-tuning on 詞", run 2).
    /// On a corpus without 詞 this is the same stream as `EveryOther`.
    EveryOtherShi,
}

/// The token stream of a corpus text: a tagged poem teaches the
/// form-conditioned start, an untagged one the free start.
pub(super) fn encode_corpus(vocab: &CharVocab, text: &str, untagged: UntaggedLines) -> Vec<u32> {
    let mut counted = 0_usize;
    text.lines()
        .filter(|l| !l.is_empty())
        .flat_map(|l| {
            let (tag, body) = super::super::vocab::strip_tag(l);
            let is_ci = tag.is_some_and(super::super::vocab::is_tune_tag);
            let may_lose_tag = untagged == UntaggedLines::EveryOther || !is_ci;
            let loses_tag = may_lose_tag && {
                counted += 1;
                counted % 2 == 0
            };
            vocab.encode_line(if loses_tag { body } else { l })
        })
        .collect()
}
