//! The KV caches, outside the weights: [`KvCache`] grows by a column per
//! step (the CPU's path; rows join and leave, and leading padding is dropped
//! as they do), [`StaticKvCache`] has a fixed number of columns written in
//! place (the GPU's static path).
//!
//! Owns: the cached keys and values and which positions are real. Must not:
//! compute attention (the model's layers do).

use candle_core::{DType, Device, Tensor};

use super::config::Gpt2Config;
use super::forward_error::ForwardError;

/// Keys and values of every layer for a batch of sequences, plus which cached
/// positions are real tokens. Owned by the caller, not by the weights.
#[derive(Debug)]
pub struct KvCache {
    pub(super) layers: Vec<LayerKv>,
    /// `valid[row][pos]`: whether cached position `pos` of `row` holds a real token.
    pub(super) valid: Vec<Vec<bool>>,
    /// Real tokens seen so far per row (the next token's position id).
    pub(super) real_tokens: Vec<usize>,
}

impl KvCache {
    pub fn new(n_layer: usize, batch: usize) -> Self {
        Self {
            layers: (0..n_layer).map(|_| LayerKv::default()).collect(),
            valid: vec![Vec::new(); batch],
            real_tokens: vec![0; batch],
        }
    }

    /// Cached positions (including padding).
    pub fn len(&self) -> usize {
        self.valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn batch(&self) -> usize {
        self.valid.len()
    }

    /// Bytes held by the cached keys and values (their buffers, spare
    /// columns included).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerKv::bytes).sum()
    }

    /// Appends the rows of `newcomers` (prefilled on their own, at most as many
    /// columns as this cache) after this cache's rows, right-aligned: their
    /// columns end where this cache's do and the columns before them are
    /// padding, so the next step's token is each row's next position. What a
    /// decode already running does to let requests join it.
    pub fn admit(&mut self, newcomers: KvCache) -> Result<(), ForwardError> {
        let (t, p) = (self.len(), newcomers.len());
        if p > t || newcomers.layers.len() != self.layers.len() || self.is_empty() {
            return Err(ForwardError::Shape(format!(
                "cannot admit {} rows of {p} columns ({} layers) into a cache of {t} columns ({} layers)",
                newcomers.batch(),
                newcomers.layers.len(),
                self.layers.len()
            )));
        }
        for (mine, theirs) in self.layers.iter_mut().zip(&newcomers.layers) {
            mine.admit(theirs, t - p)?;
        }
        for (valid, real) in newcomers.valid.into_iter().zip(newcomers.real_tokens) {
            self.valid
                .push(std::iter::repeat_n(false, t - p).chain(valid).collect());
            self.real_tokens.push(real);
        }
        Ok(())
    }

    /// Keeps only the rows whose `keep` is true, in order (rows that finished
    /// leave the batch instead of being computed and masked to the end), and
    /// drops the leading columns that are padding in every row left. A decode
    /// that rows keep joining therefore holds as many columns as its longest
    /// live row, not every column since it began: its step time and memory
    /// stay bounded under a steady stream of requests.
    pub fn retain_rows(&mut self, keep: &[bool]) -> Result<(), ForwardError> {
        if keep.len() != self.batch() {
            return Err(ForwardError::Shape(format!(
                "{} flags for a cache of {} rows",
                keep.len(),
                self.batch()
            )));
        }
        if keep.iter().all(|k| *k) {
            return Ok(());
        }
        let rows: Vec<usize> = (0..keep.len()).filter(|r| keep[*r]).collect();
        // Columns before every kept row's first real token (rows are
        // right-aligned, so padding only leads).
        let lead = rows
            .iter()
            .map(|&r| {
                self.valid[r]
                    .iter()
                    .position(|v| *v)
                    .unwrap_or(self.valid[r].len())
            })
            .min()
            .unwrap_or(0);
        let index: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        for layer in &mut self.layers {
            layer.keep(&index, lead)?;
        }
        self.valid = rows
            .iter()
            .map(|&r| self.valid[r][lead..].to_vec())
            .collect();
        self.real_tokens = rows.iter().map(|&r| self.real_tokens[r]).collect();
        Ok(())
    }

    /// Makes row `i` a copy of row `rows[i]` (rows may repeat: a prompt
    /// computed once becomes the start of several variations).
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<(), ForwardError> {
        if let Some(&r) = rows.iter().find(|&&r| r >= self.batch()) {
            return Err(ForwardError::Shape(format!(
                "row {r} of a cache of {} rows",
                self.batch()
            )));
        }
        let index: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        for layer in &mut self.layers {
            layer.select_rows(&index)?;
        }
        self.valid = rows.iter().map(|&r| self.valid[r].clone()).collect();
        self.real_tokens = rows.iter().map(|&r| self.real_tokens[r]).collect();
        Ok(())
    }
}

/// One layer's keys and values, `(B, H, capacity, hd)` each, of which the
/// first `len` columns are written. A step writes its columns in place; when
/// the buffers are full they are reallocated at twice the size, so a
/// generation copies its cache a logarithmic number of times, not once per
/// token.
#[derive(Debug, Default)]
pub(super) struct LayerKv {
    pub(super) buffers: Option<(Tensor, Tensor)>,
    pub(super) len: usize,
}

/// Columns a layer's first buffers hold (more if the first input is longer).
const KV_FIRST_COLUMNS: usize = 64;

impl LayerKv {
    /// Writes `k` and `v` `(B, H, T, hd)` after the cached columns and returns
    /// all of them, `(B, H, len + T, hd)` views of the buffers.
    pub(super) fn append(
        &mut self,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, h, t, hd) = k.dims4()?;
        let needed = self.len + t;
        let capacity = match &self.buffers {
            Some((k, _)) => k.dim(2)?,
            None => 0,
        };
        if needed > capacity {
            let columns = needed.max(2 * capacity).max(KV_FIRST_COLUMNS);
            let grown_k = Tensor::zeros((b, h, columns, hd), k.dtype(), k.device())?;
            let grown_v = Tensor::zeros((b, h, columns, hd), v.dtype(), v.device())?;
            if let Some((old_k, old_v)) = &self.buffers {
                grown_k.slice_set(&old_k.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                grown_v.slice_set(&old_v.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            self.buffers = Some((grown_k, grown_v));
        }
        let Some((bk, bv)) = &self.buffers else {
            return Err(candle_core::Error::Msg(
                "kv cache: no buffers after growing".into(),
            ));
        };
        bk.slice_set(&k.contiguous()?, 2, self.len)?;
        bv.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok((bk.narrow(2, 0, needed)?, bv.narrow(2, 0, needed)?))
    }

    /// Appends `other`'s rows (its first `other.len` columns written at column
    /// `offset`, zeros before them) after this layer's rows.
    pub(super) fn admit(&mut self, other: &LayerKv, offset: usize) -> candle_core::Result<()> {
        let (Some((k, v)), Some((ok, ov))) = (&self.buffers, &other.buffers) else {
            return Err(candle_core::Error::Msg(
                "kv cache: admitting into or from a layer without buffers".into(),
            ));
        };
        let place = |mine: &Tensor, theirs: &Tensor| -> candle_core::Result<Tensor> {
            let (_, h, columns, hd) = mine.dims4()?;
            let n = theirs.dim(0)?;
            let rows = Tensor::zeros((n, h, columns, hd), mine.dtype(), mine.device())?;
            rows.slice_set(&theirs.narrow(2, 0, other.len)?.contiguous()?, 2, offset)?;
            Tensor::cat(&[mine, &rows], 0) // (B + n, H, columns, hd)
        };
        self.buffers = Some((place(k, ok)?, place(v, ov)?));
        Ok(())
    }

    /// Keeps `rows` (in that order) and drops the first `lead` columns, in
    /// one copy.
    pub(super) fn keep(&mut self, rows: &[u32], lead: usize) -> candle_core::Result<()> {
        let Some((k, v)) = &self.buffers else {
            return Ok(());
        };
        let lead = lead.min(self.len);
        let capacity = k.dim(2)?;
        let index = Tensor::new(rows, k.device())?;
        let cut = |t: &Tensor| -> candle_core::Result<Tensor> {
            if lead == 0 {
                return t.index_select(&index, 0); // (B', H, capacity, hd)
            }
            // index_select reads a contiguous source.
            t.narrow(2, lead, capacity - lead)?
                .contiguous()?
                .index_select(&index, 0) // (B', H, capacity - lead, hd)
        };
        self.buffers = Some((cut(k)?, cut(v)?));
        self.len -= lead;
        Ok(())
    }

    /// Row `i` becomes row `rows[i]` (in any order, repeats allowed).
    pub(super) fn select_rows(&mut self, rows: &[u32]) -> candle_core::Result<()> {
        let Some((k, v)) = &self.buffers else {
            return Ok(());
        };
        let index = Tensor::new(rows, k.device())?;
        self.buffers = Some((k.index_select(&index, 0)?, v.index_select(&index, 0)?));
        Ok(())
    }

    pub(super) fn bytes(&self) -> usize {
        self.buffers.as_ref().map_or(0, |(k, v)| {
            (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes()
        })
    }
}

/// Keys and values of every layer in buffers of a fixed number of columns,
/// allocated once and written in place (see `Gpt2::forward_static`).
#[derive(Debug)]
pub struct StaticKvCache {
    /// Per layer `(2, B, H, S, hd)`: the keys, then the values, in one buffer
    /// so one fused kernel writes both and one reads both.
    pub(super) kv: Vec<Tensor>,
    pub(super) batch: usize,
    pub(super) columns: usize,
}

impl StaticKvCache {
    /// Zeroed buffers for `batch` rows of `columns` positions in the model's compute dtype.
    pub fn new(
        cfg: &Gpt2Config,
        dtype: DType,
        device: &Device,
        batch: usize,
        columns: usize,
    ) -> candle_core::Result<Self> {
        let shape = (2, batch, cfg.n_head, columns, cfg.head_dim());
        let kv = (0..cfg.n_layer)
            .map(|_| Tensor::zeros(shape, dtype, device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { kv, batch, columns })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions each row can hold (`S`).
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// Bytes held by the buffers.
    pub fn bytes(&self) -> usize {
        self.kv
            .iter()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}
