//! The attention mask and the KV cache every architecture's attention shares.

use burn::prelude::*;

/// Which keys each query may see.
#[derive(Debug, Clone)]
pub enum AttnMask<B: Backend> {
    /// Plain causal attention over the whole sequence (queries aligned to the last keys).
    Causal,
    /// No mask at all (a single query attending to every cached key).
    None,
    /// Explicit mask `[batch, 1, q, k]`, `true` = masked: block-diagonal documents, padding.
    Custom(Tensor<B, 4, Bool>),
}

/// Positions a [`KvCache`] grows by at a time.
pub const KV_BLOCK: usize = 128;

/// Keys and values of earlier positions, per layer, in buffers `[batch, kv_heads, capacity,
/// head_dim]` whose first `len` positions are filled. The capacity grows a block of
/// [`KV_BLOCK`] positions at a time, so decoding runs the same tensor shapes for a whole block:
/// a GPU compiles and autotunes its kernels once per block instead of once per token (on the
/// first H200 run, a cache that grew by one position per token spent the whole time compiling),
/// and the CPU writes one position in place instead of copying the cache every token. Positions
/// past `len` hold zeros and must be masked (see [`crate::masks::decode`]).
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<LayerKv<B>>,
    pub(crate) len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(layers: usize) -> Self {
        KvCache { layers: vec![None; layers], len: 0 }
    }

    /// Cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer length that holds `positions`: whole blocks.
    pub fn capacity_for(positions: usize) -> usize {
        positions.div_ceil(KV_BLOCK).max(1) * KV_BLOCK
    }

    /// Keep only the rows in `keep` (finished sequences dropped from a batch).
    pub fn select_rows(&mut self, keep: Tensor<B, 1, Int>) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, keep.clone());
            *v = v.clone().select(0, keep.clone());
        }
    }
}

/// One layer's cached keys and values, `[batch, kv_heads, capacity, head_dim]` each.
pub type LayerKv<B> = Option<(Tensor<B, 4>, Tensor<B, 4>)>;

/// Write `new` `[b, kv, t, hd]` at positions `start..start + t` of a layer's cache buffer, growing
/// it by whole blocks when full. Returns the buffer `[b, kv, capacity, hd]`.
pub(crate) fn cache_write<B: Backend>(
    buf: Option<Tensor<B, 4>>,
    new: Tensor<B, 4>,
    start: usize,
) -> Tensor<B, 4> {
    let [b, kv, t, hd] = new.dims();
    let need = start + t;
    let zeros = |n: usize| Tensor::<B, 4>::zeros([b, kv, n, hd], &new.device()).cast(new.dtype());
    let buf = match buf {
        Some(buf) if buf.dims()[2] >= need => buf,
        Some(buf) => {
            let grow = KvCache::<B>::capacity_for(need) - buf.dims()[2];
            Tensor::cat(vec![buf, zeros(grow)], 2)
        }
        None => zeros(KvCache::<B>::capacity_for(need)),
    };
    buf.slice_assign([0..b, 0..kv, start..need, 0..hd], new)
}

/// A layer's pair of cached tensors (keys and values; MLA's latent and rotary key), each
/// `[batch, heads, t, width]`, through its cache slot: with a cache, `start` positions precede
/// these `t`. The first call (the prefill) attends to its own pair; later calls attend to the
/// whole buffers, whose unfilled tail the caller's mask hides.
pub(crate) fn through_cache<B: Backend>(
    cache: Option<(&mut LayerKv<B>, usize)>,
    a: Tensor<B, 4>,
    b: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    match cache {
        Some((slot, start)) => {
            let (pa, pb) = slot.take().unzip();
            let (ca, cb) = (cache_write(pa, a.clone(), start), cache_write(pb, b.clone(), start));
            *slot = Some((ca.clone(), cb.clone()));
            if start == 0 { (a, b) } else { (ca, cb) }
        }
        None => (a, b),
    }
}
