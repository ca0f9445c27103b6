//! The decoder-only transformer shared by Llama, Qwen2, Qwen3 and Qwen3-MoE (HF
//! `modeling_llama.py`, `modeling_qwen2.py`, `modeling_qwen3.py`, `modeling_qwen3_moe.py`). They
//! differ only in switches read from the config: q/k/v bias (Qwen2), q/k RMSNorm over the head
//! dimension (Qwen3), tied embeddings, RoPE scaling (Llama 3), and sparse MLPs (Qwen3-MoE). Struct fields follow the Hugging Face module names; the tensor names and
//! shapes come from the parameter spec ([`crate::spec`]), which load, export and `params_mut`
//! walk in the same order.

use burn::module::{Module, Param, ParamId};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::TensorData;
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::config::ModelConfig;
use crate::error::Result;
use crate::rope::{self, Rope};
use crate::spec::{Cursor, Dims, Kind, ParamSpec};
use crate::weights::{WeightSink, WeightSource};

/// `y = x Wᵀ + b`. HF stores `W` as `[out, in]`; it is kept here transposed, `[in, out]`, so
/// that `x W` reads it contiguously (3× faster for the few-row matmuls of decoding on CPU).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[in, out]`: the transpose of HF's `weight`.
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    fn load(src: &mut dyn WeightSource, at: &mut Cursor, device: &B::Device) -> Result<Self> {
        let spec = at.next(Kind::Weight);
        let (d_out, d_in) = (spec.shape[0], spec.shape[1]);
        let w = src.read(&spec.name, &spec.shape)?;
        let mut t = vec![0f32; w.len()];
        for o in 0..d_out {
            for i in 0..d_in {
                t[i * d_out + o] = w[o * d_in + i];
            }
        }
        Ok(Linear {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(t, [d_in, d_out]),
                device,
            )),
            bias: match at.next_if(Kind::Bias) {
                Some(b) => Some(Param::from_tensor(src.take(&b.name, &[b.shape[0]], device)?)),
                None => None,
            },
        })
    }

    /// From flat tensors in spec order (the weight flattened `[in, out]`, as the trainer's flat
    /// layout holds it), e.g. gathered from shards just before use. The tensors become the
    /// parameters as they are (tracked or not).
    fn from_flat(at: &mut Cursor, next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>) -> Self {
        let spec = at.next(Kind::Weight);
        let weight = next(spec).reshape([spec.shape[1], spec.shape[0]]);
        Linear {
            weight: Param::initialized(ParamId::new(), weight),
            bias: at.next_if(Kind::Bias).map(|b| Param::initialized(ParamId::new(), next(b))),
        }
    }

    fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        sink.put(&at.next(Kind::Weight).name, self.weight.val().transpose());
        if let Some(b) = &self.bias {
            sink.put(&at.next(Kind::Bias).name, b.val());
        }
    }

    /// `[.., in]` → `[.., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = matmul_2d(x, self.weight.val());
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }
}

/// `x W` for `x` `[.., in]` and `W` `[in, out]` as one 2-D matmul (burn's `linear` reshapes the
/// weight to 3-D, which copies a transposed view on some backends).
pub fn matmul_2d<B: Backend, const D: usize>(x: Tensor<B, D>, w: Tensor<B, 2>) -> Tensor<B, D> {
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let mut out_dims = dims;
    out_dims[D - 1] = w.dims()[1];
    x.reshape([rows, dims[D - 1]]).matmul(w).reshape(out_dims)
}

/// RMSNorm as HF computes it: `weight * x / sqrt(mean(x²) + eps)`, in f32.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    fn load(
        src: &mut dyn WeightSource,
        spec: &crate::spec::ParamSpec,
        eps: f64,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(RmsNorm {
            weight: Param::from_tensor(src.take(&spec.name, &[spec.shape[0]], device)?),
            eps,
        })
    }

    fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        sink.put(&at.next(Kind::Norm).name, self.weight.val());
    }

    /// See [`Linear::from_flat`].
    pub fn from_flat(
        at: &mut Cursor,
        eps: f64,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        let spec = at.next(Kind::Norm);
        RmsNorm { weight: Param::initialized(ParamId::new(), next(spec)), eps }
    }

    /// `[.., dim]` → `[.., dim]`, computed on a 2-D view (contiguous element-wise ops). Under bf16
    /// compute the normalisation runs in f32 and its result is cast back before the weight, as
    /// transformers does.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let d = dims[D - 1];
        let dtype = x.dtype();
        let x = x.reshape([dims.iter().product::<usize>() / d, d]).cast(DType::F32); // no-op in f32
        let var = x.clone().square().mean_dim(1);
        let x = (x * (var + self.eps).sqrt().recip()).cast(dtype);
        (x * self.weight.val().unsqueeze_dim(0)).reshape(dims)
    }
}

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
    len: usize,
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
fn cache_write<B: Backend>(
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
fn through_cache<B: Backend>(
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

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    /// Qwen3 only.
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl<B: Backend> Attention<B> {
    fn load(
        src: &mut dyn WeightSource,
        at: &mut Cursor,
        c: &ModelConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let norm = |at: &mut Cursor, src: &mut dyn WeightSource| -> Result<Option<RmsNorm<B>>> {
            match at.next_if(Kind::Norm).filter(|_| c.qk_norm) {
                Some(spec) => Ok(Some(RmsNorm::load(src, spec, c.rms_norm_eps, device)?)),
                None => Ok(None),
            }
        };
        Ok(Attention {
            q_proj: Linear::load(src, at, device)?,
            k_proj: Linear::load(src, at, device)?,
            v_proj: Linear::load(src, at, device)?,
            o_proj: Linear::load(src, at, device)?,
            q_norm: norm(at, src)?,
            k_norm: norm(at, src)?,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        })
    }

    fn from_flat(
        at: &mut Cursor,
        d: &Dims,
        eps: f64,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        let (q_proj, k_proj, v_proj, o_proj) = (
            Linear::from_flat(at, next),
            Linear::from_flat(at, next),
            Linear::from_flat(at, next),
            Linear::from_flat(at, next),
        );
        let (q_norm, k_norm) = if d.qk_norm {
            (Some(RmsNorm::from_flat(at, eps, next)), Some(RmsNorm::from_flat(at, eps, next)))
        } else {
            (None, None)
        };
        Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm,
            k_norm,
            n_heads: d.heads,
            n_kv_heads: d.kv_heads,
            head_dim: d.head_dim,
        }
    }

    fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        for l in [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj] {
            l.export(at, sink);
        }
        for n in [&self.q_norm, &self.k_norm].into_iter().flatten() {
            n.export(at, sink);
        }
    }

    /// `x` `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope_q: &(Tensor<B, 2>, Tensor<B, 2>),
        rope_k: &(Tensor<B, 2>, Tensor<B, 2>),
        mask: &AttnMask<B>,
        cache: Option<(&mut LayerKv<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let (h, kv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, hd]);
        let mut q = heads(self.q_proj.forward(x.clone()), h);
        let mut k = heads(self.k_proj.forward(x.clone()), kv);
        let v = heads(self.v_proj.forward(x), kv).swap_dims(1, 2); // [b, kv, t, hd]
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(q);
            k = kn.forward(k);
        }
        let q = rope::apply(q, &rope_q.0, &rope_q.1).swap_dims(1, 2); // [b, h, t, hd]
        let k = rope::apply(k, &rope_k.0, &rope_k.1).swap_dims(1, 2); // [b, kv, t, hd]
        let (k, v) = through_cache(cache, k, v);
        let s = k.dims()[2];
        let g = h / kv;
        let scale = AttentionModuleOptions { scale: None, softcap: None, is_causal: false };
        if t == 1 && g > 1 {
            // One query per row: the g query heads of a kv head become g query rows against
            // that kv head, so the cache is never repeated. q: [b, h, 1, hd] → [b, kv, g, hd].
            let q = q.reshape([b, kv, g, hd]);
            let mask = match mask {
                AttnMask::Custom(m) => Some(m.clone().expand([b, kv, g, s])),
                AttnMask::Causal | AttnMask::None => None,
            };
            let out = attention(q, k, v, mask, None, scale); // [b, kv, g, hd]
            return self.o_proj.forward(out.reshape([b, 1, h * hd]));
        }
        // Grouped-query attention: each kv head serves g query heads.
        let (k, v) = if g == 1 {
            (k, v)
        } else {
            // `repeat_dim` copies whole `[s, hd]` blocks; a reshaped `expand` would be made
            // contiguous one element at a time by flex.
            let rep =
                |y: Tensor<B, 4>| y.unsqueeze_dim::<5>(2).repeat_dim(2, g).reshape([b, h, s, hd]);
            (rep(k), rep(v))
        };
        let out = match mask {
            AttnMask::Causal if t > 1 => crate::attention::causal(q, k, v, None),
            AttnMask::Custom(m) => crate::attention::causal(q, k, v, Some(m.clone())),
            AttnMask::Causal | AttnMask::None => attention(q, k, v, None, None, scale),
        }; // [b, h, t, hd]
        self.o_proj.forward(out.swap_dims(1, 2).reshape([b, t, h * hd]))
    }
}

/// Multi-head Latent Attention (DeepSeek-V2/V3, HF `DeepseekV3Attention`). Queries go through a
/// low-rank bottleneck (`q_a_proj` → `q_a_layernorm` → `q_b_proj`) or one `q_proj`; each token's
/// keys and values come from one latent `c_kv` (`kv_a_proj_with_mqa` → `kv_a_layernorm`) expanded
/// per head by `kv_b_proj`, plus a rotary key `k_rot` shared by all heads. Only `c_kv` and the
/// rotated `k_rot` are cached: `kv_lora_rank + qk_rope_head_dim` values per token and layer
/// instead of `heads · (qk_head_dim + v_head_dim)`. The cached latent is expanded by `kv_b_proj`
/// at every step (the absorbed-projection decode path, which folds `kv_b_proj` into the query and
/// output, is not implemented).
#[derive(Module, Debug)]
pub struct MlaAttention<B: Backend> {
    pub q_a_proj: Option<Linear<B>>,
    pub q_a_layernorm: Option<RmsNorm<B>>,
    pub q_b_proj: Option<Linear<B>>,
    /// Without `q_lora_rank` (V2-Lite).
    pub q_proj: Option<Linear<B>>,
    pub kv_a_proj_with_mqa: Linear<B>,
    pub kv_a_layernorm: RmsNorm<B>,
    pub kv_b_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub n_heads: usize,
    #[module(skip)]
    pub dims: crate::config::MlaDims,
}

/// transformers builds MLA's two RMSNorms without the config's epsilon: always 1e-6.
const MLA_NORM_EPS: f64 = 1e-6;

impl<B: Backend> MlaAttention<B> {
    fn load(
        src: &mut dyn WeightSource,
        at: &mut Cursor,
        c: &ModelConfig,
        m: &crate::config::MlaDims,
        device: &B::Device,
    ) -> Result<Self> {
        let (q_a_proj, q_a_layernorm, q_b_proj, q_proj) = if m.q_lora_rank.is_some() {
            let a = Linear::load(src, at, device)?;
            let n = RmsNorm::load(src, at.next(Kind::Norm), MLA_NORM_EPS, device)?;
            (Some(a), Some(n), Some(Linear::load(src, at, device)?), None)
        } else {
            (None, None, None, Some(Linear::load(src, at, device)?))
        };
        Ok(MlaAttention {
            q_a_proj,
            q_a_layernorm,
            q_b_proj,
            q_proj,
            kv_a_proj_with_mqa: Linear::load(src, at, device)?,
            kv_a_layernorm: RmsNorm::load(src, at.next(Kind::Norm), MLA_NORM_EPS, device)?,
            kv_b_proj: Linear::load(src, at, device)?,
            o_proj: Linear::load(src, at, device)?,
            n_heads: c.num_attention_heads,
            dims: *m,
        })
    }

    fn from_flat(
        at: &mut Cursor,
        d: &Dims,
        m: &crate::config::MlaDims,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        let (q_a_proj, q_a_layernorm, q_b_proj, q_proj) = if m.q_lora_rank.is_some() {
            let a = Linear::from_flat(at, next);
            let n = RmsNorm::from_flat(at, MLA_NORM_EPS, next);
            (Some(a), Some(n), Some(Linear::from_flat(at, next)), None)
        } else {
            (None, None, None, Some(Linear::from_flat(at, next)))
        };
        MlaAttention {
            q_a_proj,
            q_a_layernorm,
            q_b_proj,
            q_proj,
            kv_a_proj_with_mqa: Linear::from_flat(at, next),
            kv_a_layernorm: RmsNorm::from_flat(at, MLA_NORM_EPS, next),
            kv_b_proj: Linear::from_flat(at, next),
            o_proj: Linear::from_flat(at, next),
            n_heads: d.heads,
            dims: *m,
        }
    }

    fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        if let (Some(a), Some(n), Some(b)) = (&self.q_a_proj, &self.q_a_layernorm, &self.q_b_proj) {
            a.export(at, sink);
            n.export(at, sink);
            b.export(at, sink);
        }
        if let Some(q) = &self.q_proj {
            q.export(at, sink);
        }
        self.kv_a_proj_with_mqa.export(at, sink);
        self.kv_a_layernorm.export(at, sink);
        self.kv_b_proj.export(at, sink);
        self.o_proj.export(at, sink);
    }

    /// DeepSeek rotates adjacent pairs `(x0, x1), (x2, x3), …`: reordered evens-then-odds (in q
    /// and k alike, so q·k is unchanged) they become the halves `rotate_half` rotates.
    fn deinterleave(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if !self.dims.interleave {
            return x;
        }
        let r = self.dims.qk_rope;
        let perm: Vec<i64> = (0..r as i64).step_by(2).chain((1..r as i64).step_by(2)).collect();
        x.select(3, Tensor::from_data(TensorData::new(perm, [r]), &self.o_proj.weight.device()))
    }

    /// `x` `[batch, seq, hidden]` → `[batch, seq, hidden]`. The cache slot holds the latent
    /// `[batch, 1, capacity, kv_lora_rank]` and the rotated key `[batch, 1, capacity, qk_rope]`.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope_q: &(Tensor<B, 2>, Tensor<B, 2>),
        rope_k: &(Tensor<B, 2>, Tensor<B, 2>),
        mask: &AttnMask<B>,
        cache: Option<(&mut LayerKv<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let m = self.dims;
        let (h, nope, rope, vd, r) = (self.n_heads, m.qk_nope, m.qk_rope, m.v_head, m.kv_lora_rank);
        let q = match (&self.q_proj, &self.q_a_proj, &self.q_a_layernorm, &self.q_b_proj) {
            (Some(p), ..) => p.forward(x.clone()),
            (None, Some(a), Some(n), Some(bp)) => bp.forward(n.forward(a.forward(x.clone()))),
            _ => unreachable!("MLA has q_proj or the q_a/q_b pair"),
        }
        .reshape([b, t, h, nope + rope]);
        let q_pass = q.clone().narrow(3, 0, nope);
        let q_rot = self.deinterleave(q.narrow(3, nope, rope));
        let q_rot = rope::apply(q_rot, &rope_q.0, &rope_q.1);
        let ckv = self.kv_a_proj_with_mqa.forward(x); // [b, t, r + rope]
        let c = self.kv_a_layernorm.forward(ckv.clone().narrow(2, 0, r)).reshape([b, 1, t, r]);
        let k_rot = self.deinterleave(ckv.narrow(2, r, rope).reshape([b, t, 1, rope]));
        let k_rot = rope::apply(k_rot, &rope_k.0, &rope_k.1).reshape([b, 1, t, rope]);
        let (c, k_rot) = through_cache(cache, c, k_rot);
        let s = c.dims()[2];
        let kv = self.kv_b_proj.forward(c.reshape([b, s, r])).reshape([b, s, h, nope + vd]);
        let k_nope = kv.clone().narrow(3, 0, nope);
        let v = kv.narrow(3, nope, vd).swap_dims(1, 2); // [b, h, s, vd]
        let k_rot = k_rot.reshape([b, s, 1, rope]).expand([b, s, h, rope]);
        let k = Tensor::cat(vec![k_nope, k_rot], 3).swap_dims(1, 2); // [b, h, s, dq]
        let q = Tensor::cat(vec![q_pass, q_rot], 3).swap_dims(1, 2); // [b, h, t, dq]
        // The attention kernels scale by 1/sqrt(width) and take one width for q, k and v: pad
        // all three with zeros to the wider of qk and v (zeros change no score), fold the
        // softmax scale into q, and keep v's part of the output.
        let dq = nope + rope;
        let wide = dq.max(vd);
        let pad = |y: Tensor<B, 4>, from: usize| {
            if from == wide {
                return y;
            }
            let [a0, a1, a2, _] = y.dims();
            let z = Tensor::<B, 4>::zeros([a0, a1, a2, wide - from], &y.device()).cast(y.dtype());
            Tensor::cat(vec![y, z], 3)
        };
        let q = pad(q, dq).mul_scalar(m.softmax_scale * (wide as f64).sqrt());
        let (k, v) = (pad(k, dq), pad(v, vd));
        let opts = AttentionModuleOptions { scale: None, softcap: None, is_causal: false };
        let out = match mask {
            AttnMask::Causal if t > 1 => crate::attention::causal(q, k, v, None),
            AttnMask::Custom(mk) => crate::attention::causal(q, k, v, Some(mk.clone())),
            AttnMask::Causal | AttnMask::None => attention(q, k, v, None, None, opts),
        }; // [b, h, t, wide]
        let out = out.narrow(3, 0, vd).swap_dims(1, 2).reshape([b, t, h * vd]);
        self.o_proj.forward(out)
    }
}

/// A layer's attention: grouped-query (Llama, Qwen) or latent (DeepSeek).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum SelfAttention<B: Backend> {
    Gqa(Attention<B>),
    Mla(MlaAttention<B>),
}

impl<B: Backend> SelfAttention<B> {
    /// Query heads, and the heads the rotary key has (kv heads; MLA's one shared key).
    pub fn rope_heads(&self) -> (usize, usize) {
        match self {
            SelfAttention::Gqa(a) => (a.n_heads, a.n_kv_heads),
            SelfAttention::Mla(a) => (a.n_heads, 1),
        }
    }

    /// The grouped-query attention, if this layer has it.
    pub fn gqa(&self) -> Option<&Attention<B>> {
        match self {
            SelfAttention::Gqa(a) => Some(a),
            SelfAttention::Mla(_) => None,
        }
    }

    fn load(
        src: &mut dyn WeightSource,
        at: &mut Cursor,
        c: &ModelConfig,
        device: &B::Device,
    ) -> Result<Self> {
        match &c.mla {
            Some(m) => Ok(SelfAttention::Mla(MlaAttention::load(src, at, c, m, device)?)),
            None => Ok(SelfAttention::Gqa(Attention::load(src, at, c, device)?)),
        }
    }

    fn from_flat(
        at: &mut Cursor,
        d: &Dims,
        eps: f64,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        match &d.mla {
            Some(m) => SelfAttention::Mla(MlaAttention::from_flat(at, d, m, next)),
            None => SelfAttention::Gqa(Attention::from_flat(at, d, eps, next)),
        }
    }

    fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        match self {
            SelfAttention::Gqa(a) => a.export(at, sink),
            SelfAttention::Mla(a) => a.export(at, sink),
        }
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope_q: &(Tensor<B, 2>, Tensor<B, 2>),
        rope_k: &(Tensor<B, 2>, Tensor<B, 2>),
        mask: &AttnMask<B>,
        cache: Option<(&mut LayerKv<B>, usize)>,
    ) -> Tensor<B, 3> {
        match self {
            SelfAttention::Gqa(a) => a.forward(x, rope_q, rope_k, mask, cache),
            SelfAttention::Mla(a) => a.forward(x, rope_q, rope_k, mask, cache),
        }
    }
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    fn load(src: &mut dyn WeightSource, at: &mut Cursor, device: &B::Device) -> Result<Self> {
        Ok(Mlp {
            gate_proj: Linear::load(src, at, device)?,
            up_proj: Linear::load(src, at, device)?,
            down_proj: Linear::load(src, at, device)?,
        })
    }

    fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        for l in [&self.gate_proj, &self.up_proj, &self.down_proj] {
            l.export(at, sink);
        }
    }

    fn from_flat(at: &mut Cursor, next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>) -> Self {
        Mlp {
            gate_proj: Linear::from_flat(at, next),
            up_proj: Linear::from_flat(at, next),
            down_proj: Linear::from_flat(at, next),
        }
    }

    /// SwiGLU: `down(silu(gate(x)) * up(x))`, `[.., hidden]` → `[.., hidden]`.
    fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.down_proj.forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

/// A sparse MLP: Qwen3-MoE's `Qwen3MoeSparseMoeBlock`, DeepSeek-V2/V3's `DeepseekV{2,3}MoE`.
/// The router `gate` scores the experts in f32 (softmax, or V3's sigmoid), each token goes to its
/// `top_k` best (V3: chosen by score + `e_score_correction_bias`, within its best `topk_group`
/// groups), the chosen scores are optionally renormalised and scaled by `routed_scaling_factor`,
/// the experts' outputs are summed with those weights, and the shared experts (DeepSeek) are added.
///
/// Experts run batched: the routing is read back to the host once per layer, the tokens are
/// grouped per expert, and each expert with tokens runs one SwiGLU over its rows (a gather, three
/// matmuls, a weighted scatter-add), so the work is `top_k` experts' worth per token whatever
/// the expert count, at the cost of one device→host read per layer (the `[tokens, top_k]` ids;
/// with group-limited routing the `[tokens, experts]` scores, grouped on the host) and a loop over
/// the experts that have tokens. Gradients reach the router through the gathered weights and the
/// experts through their rows; unrouted experts get none.
#[derive(Module, Debug)]
pub struct SparseMoe<B: Backend> {
    /// The router: `[hidden, experts]` (HF `mlp.gate.weight` `[experts, hidden]`).
    pub gate: Linear<B>,
    /// V3's `mlp.gate.e_score_correction_bias` `[experts]`: for choosing only, never trained.
    pub e_score_correction_bias: Option<Param<Tensor<B, 1>>>,
    pub experts: Vec<Mlp<B>>,
    /// DeepSeek's `mlp.shared_experts`: one SwiGLU every token runs.
    pub shared_experts: Option<Mlp<B>>,
    #[module(skip)]
    pub routing: crate::config::MoeDims,
    /// The decoder layer this block belongs to (for [`routing_load`]).
    pub layer: usize,
}

/// The layer index in a parameter name `model.layers.{i}.…`.
fn layer_of(name: &str) -> usize {
    name.strip_prefix("model.layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse().ok())
        .unwrap_or(0)
}

/// Tokens routed to each expert, per sparse layer, while recording on this thread
/// ([`routing_load::start`]): training reads it to report expert load balance and to update
/// DeepSeek-V3's score-correction bias.
pub mod routing_load {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    thread_local! {
        static LOAD: RefCell<Option<BTreeMap<usize, Vec<u64>>>> = const { RefCell::new(None) };
    }

    /// Start recording (and forget anything recorded before).
    pub fn start() {
        LOAD.with(|l| *l.borrow_mut() = Some(BTreeMap::new()));
    }

    /// Stop recording; the counts per layer since [`start`] (`None` if not recording).
    pub fn take() -> Option<BTreeMap<usize, Vec<u64>>> {
        LOAD.with(|l| l.borrow_mut().take())
    }

    pub(crate) fn record(layer: usize, counts: &[u64]) {
        LOAD.with(|l| {
            if let Some(m) = l.borrow_mut().as_mut() {
                let v = m.entry(layer).or_insert_with(|| vec![0; counts.len()]);
                v.iter_mut().zip(counts).for_each(|(a, b)| *a += b);
            }
        });
    }
}

impl<B: Backend> SparseMoe<B> {
    fn load(
        src: &mut dyn WeightSource,
        at: &mut Cursor,
        m: &crate::config::MoeDims,
        device: &B::Device,
    ) -> Result<Self> {
        let layer = at.peek().map_or(0, |p| layer_of(&p.name));
        let gate = Linear::load(src, at, device)?;
        let bias = match at.next_if(Kind::Buffer) {
            Some(b) => Some(Param::from_tensor(src.take(&b.name, &[b.shape[0]], device)?)),
            None => None,
        };
        let experts = (0..m.experts).map(|_| Mlp::load(src, at, device)).collect::<Result<_>>()?;
        let shared_experts =
            if m.shared_intermediate > 0 { Some(Mlp::load(src, at, device)?) } else { None };
        Ok(SparseMoe {
            gate,
            e_score_correction_bias: bias,
            experts,
            shared_experts,
            routing: *m,
            layer,
        })
    }

    fn from_flat(
        at: &mut Cursor,
        m: &crate::config::MoeDims,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        let layer = at.peek().map_or(0, |p| layer_of(&p.name));
        let gate = Linear::from_flat(at, next);
        let bias = at.next_if(Kind::Buffer).map(|b| Param::initialized(ParamId::new(), next(b)));
        SparseMoe {
            layer,
            gate,
            e_score_correction_bias: bias,
            experts: (0..m.experts).map(|_| Mlp::from_flat(at, next)).collect(),
            shared_experts: (m.shared_intermediate > 0).then(|| Mlp::from_flat(at, next)),
            routing: *m,
        }
    }

    fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        self.gate.export(at, sink);
        if let Some(b) = &self.e_score_correction_bias {
            sink.put(&at.next(Kind::Buffer).name, b.val());
        }
        for e in self.experts.iter().chain(&self.shared_experts) {
            e.export(at, sink);
        }
    }

    /// The routing of `x` `[tokens, hidden]`: each token's experts `[tokens · top_k]` (host,
    /// token-major) and their weights `[tokens, top_k]` (on the device, in `x`'s dtype,
    /// differentiable).
    pub fn route(&self, x: Tensor<B, 2>) -> (Vec<usize>, Tensor<B, 2>) {
        use crate::config::{GroupScore, Scoring};
        let r = &self.routing;
        let dtype = x.dtype();
        let device = x.device();
        let n = x.dims()[0];
        let logits = self.gate.forward(x).cast(DType::F32); // [n, E]
        let scores = match r.scoring {
            Scoring::Softmax => burn::tensor::activation::softmax(logits, 1),
            Scoring::Sigmoid => burn::tensor::activation::sigmoid(logits),
        };
        // What chooses the experts: the scores, plus V3's correction bias.
        let choice = match &self.e_score_correction_bias {
            Some(b) => scores.clone() + b.val().cast(DType::F32).unsqueeze_dim(0),
            None => scores.clone(),
        };
        let ids: Vec<usize> = if r.groups <= 1 {
            let (_, idx) = choice.topk_with_indices(r.top_k, 1); // [n, k]
            idx.into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .expect("ids")
                .into_iter()
                .map(|e| e as usize)
                .collect()
        } else {
            // Group-limited: each token keeps its `topk_groups` best groups, then its top_k
            // experts among them (on the host: the choice is not differentiable).
            let c: Vec<f32> = choice.into_data().convert::<f32>().to_vec().expect("scores");
            let (e, g) = (r.experts, r.groups);
            let per = e / g;
            let desc = |v: &[f32], i: usize, j: usize| v[j].total_cmp(&v[i]).then(i.cmp(&j));
            let mut out = Vec::with_capacity(n * r.top_k);
            for row in c.chunks_exact(e) {
                let group_score: Vec<f32> = row
                    .chunks_exact(per)
                    .map(|grp| match r.group_score {
                        GroupScore::Max => grp.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                        GroupScore::Top2Sum => {
                            let mut v = grp.to_vec();
                            v.sort_by(|a, b| b.total_cmp(a));
                            v[0] + v[1]
                        }
                    })
                    .collect();
                let mut groups: Vec<usize> = (0..g).collect();
                groups.sort_by(|&a, &b| desc(&group_score, a, b));
                let mut allowed: Vec<usize> = groups[..r.topk_groups]
                    .iter()
                    .flat_map(|&gi| gi * per..(gi + 1) * per)
                    .collect();
                allowed.sort_by(|&a, &b| desc(row, a, b));
                out.extend_from_slice(&allowed[..r.top_k]);
            }
            out
        };
        let idx = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids.iter().map(|&e| e as i64).collect::<Vec<_>>(), [n, r.top_k]),
            &device,
        );
        // The weights come from the unbiased scores.
        let mut w = scores.gather(1, idx);
        if r.norm_topk_prob {
            w = w.clone() / (w.sum_dim(1) + 1e-20);
        }
        if r.routed_scaling != 1.0 {
            w = w.mul_scalar(r.routed_scaling);
        }
        (ids, w.cast(dtype))
    }

    /// DeepSeek-V3's auxiliary-loss-free balancing: each expert's score-correction bias moves by
    /// `rate` toward balance, `b_e += rate · sign(mean load − load_e)`. No-op without a bias.
    pub fn update_bias(&mut self, load: &[f64], rate: f64) {
        let Some(b) = self.e_score_correction_bias.as_mut() else { return };
        let mean = load.iter().sum::<f64>() / load.len().max(1) as f64;
        let step: Vec<f32> = load
            .iter()
            .map(|&l| (rate * (mean - l).signum() * f64::from(u8::from(l != mean))) as f32)
            .collect();
        let device = b.val().device();
        let delta = Tensor::<B, 1>::from_data(TensorData::new(step, [load.len()]), &device);
        let new = (b.val() + delta.cast(b.val().dtype())).detach();
        *b = Param::initialized(b.id, new);
    }

    /// `[.., hidden]` → `[.., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let d = dims[D - 1];
        let n = dims[..D - 1].iter().product::<usize>();
        let device = x.device();
        let x = x.reshape([n, d]);
        let (ids, w) = self.route(x.clone());
        let k = self.routing.top_k;
        // Per expert: the tokens routed to it and the (token, slot) of each routing weight.
        let mut rows: Vec<(Vec<i64>, Vec<i64>)> = vec![(vec![], vec![]); self.experts.len()];
        for (j, &e) in ids.iter().enumerate() {
            rows[e].0.push((j / k) as i64);
            rows[e].1.push(j as i64);
        }
        routing_load::record(
            self.layer,
            &rows.iter().map(|r| r.0.len() as u64).collect::<Vec<_>>(),
        );
        let w = w.reshape([n * k, 1]);
        let int = |v: &[i64]| {
            Tensor::<B, 1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device)
        };
        let mut out = Tensor::<B, 2>::zeros([n, d], &device).cast(x.dtype());
        for (expert, (tokens, slots)) in self.experts.iter().zip(&rows) {
            if tokens.is_empty() {
                continue;
            }
            let tok = int(tokens);
            let y = expert.forward(x.clone().select(0, tok.clone())); // [m, d]
            let y = y * w.clone().select(0, int(slots)); // weighted by its routing weight
            out = out.select_assign(0, tok, y, burn::tensor::IndexingUpdateOp::Add);
        }
        if let Some(s) = &self.shared_experts {
            out = out + s.forward(x);
        }
        out.reshape(dims)
    }
}

/// A layer's feed-forward: dense SwiGLU, or a sparse Mixture of Experts. (The dense MLP is held
/// inline: layers are few and boxing it would cost every dense model an indirection.)
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum FeedForward<B: Backend> {
    Dense(Mlp<B>),
    Sparse(SparseMoe<B>),
}

impl<B: Backend> FeedForward<B> {
    /// The dense MLP, if this layer has one.
    pub fn dense(&self) -> Option<&Mlp<B>> {
        match self {
            FeedForward::Dense(m) => Some(m),
            FeedForward::Sparse(_) => None,
        }
    }

    fn load(
        src: &mut dyn WeightSource,
        at: &mut Cursor,
        c: &ModelConfig,
        device: &B::Device,
    ) -> Result<Self> {
        match c.moe.filter(|_| at.at_router()) {
            Some(m) => Ok(FeedForward::Sparse(SparseMoe::load(src, at, &m, device)?)),
            None => Ok(FeedForward::Dense(Mlp::load(src, at, device)?)),
        }
    }

    fn from_flat(
        at: &mut Cursor,
        d: &Dims,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        match d.moe.filter(|_| at.at_router()) {
            Some(m) => FeedForward::Sparse(SparseMoe::from_flat(at, &m, next)),
            None => FeedForward::Dense(Mlp::from_flat(at, next)),
        }
    }

    fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        match self {
            FeedForward::Dense(m) => m.export(at, sink),
            FeedForward::Sparse(m) => m.export(at, sink),
        }
    }

    /// `[.., hidden]` → `[.., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            FeedForward::Dense(m) => m.forward(x),
            FeedForward::Sparse(m) => m.forward(x),
        }
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub self_attn: SelfAttention<B>,
    /// HF `mlp`: dense, or sparse in a Qwen3-MoE layer.
    pub mlp: FeedForward<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
}

impl<B: Backend> DecoderLayer<B> {
    fn load(
        src: &mut dyn WeightSource,
        at: &mut Cursor,
        c: &ModelConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let eps = c.rms_norm_eps;
        Ok(DecoderLayer {
            self_attn: SelfAttention::load(src, at, c, device)?,
            mlp: FeedForward::load(src, at, c, device)?,
            input_layernorm: RmsNorm::load(src, at.next(Kind::Norm), eps, device)?,
            post_attention_layernorm: RmsNorm::load(src, at.next(Kind::Norm), eps, device)?,
        })
    }

    fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        self.self_attn.export(at, sink);
        self.mlp.export(at, sink);
        self.input_layernorm.export(at, sink);
        self.post_attention_layernorm.export(at, sink);
    }

    /// One layer from flat tensors in spec order (see [`Linear::from_flat`]): parameter sharding
    /// builds a layer this way from weights gathered just before its forward.
    pub fn from_flat(
        at: &mut Cursor,
        d: &Dims,
        eps: f64,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        DecoderLayer {
            self_attn: SelfAttention::from_flat(at, d, eps, next),
            mlp: FeedForward::from_flat(at, d, next),
            input_layernorm: RmsNorm::from_flat(at, eps, next),
            post_attention_layernorm: RmsNorm::from_flat(at, eps, next),
        }
    }

    /// `x` `[batch, seq, hidden]` → `[batch, seq, hidden]`: attention and MLP, each pre-normed
    /// and added to its residual. With a cache slot, this layer's keys and values go into it.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &LayerCtx<'_, B>,
        cache: Option<(&mut LayerKv<B>, usize)>,
    ) -> Tensor<B, 3> {
        let a = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            &ctx.rope_q,
            &ctx.rope_k,
            ctx.mask,
            cache,
        );
        let x = x + a;
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}

/// What every layer of one forward pass shares: the rotary tables for the query and key heads at
/// the batch's positions, and the attention mask.
pub struct LayerCtx<'a, B: Backend> {
    pub rope_q: (Tensor<B, 2>, Tensor<B, 2>),
    pub rope_k: (Tensor<B, 2>, Tensor<B, 2>),
    pub mask: &'a AttnMask<B>,
}

impl<'a, B: Backend> LayerCtx<'a, B> {
    /// For `positions` `[batch, seq]` and layers of `heads` query and `kv_heads` key heads.
    pub fn new(
        rope: &Rope<B>,
        positions: &Tensor<B, 2, Int>,
        heads: usize,
        kv_heads: usize,
        mask: &'a AttnMask<B>,
    ) -> Self {
        let tables = rope.tables(positions);
        let rope_q = tables.for_heads(heads);
        let rope_k = if kv_heads == heads { rope_q.clone() } else { tables.for_heads(kv_heads) };
        LayerCtx { rope_q, rope_k, mask }
    }
}

/// Token embeddings: `ids` `[batch, seq]` → `[batch, seq, hidden]` rows of `table` `[vocab, hidden]`.
pub fn embed<B: Backend>(table: Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    let [b, t] = ids.dims();
    let d = table.dims()[1];
    table.select(0, ids.reshape([b * t])).reshape([b, t, d])
}

/// HF's `LlamaModel`: embeddings, layers, final norm (the `model.` prefix).
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// `[vocab, hidden]`.
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
}

/// `LlamaForCausalLM` / `Qwen2ForCausalLM` / `Qwen3ForCausalLM`.
#[derive(Module, Debug)]
pub struct CausalLm<B: Backend> {
    pub model: Decoder<B>,
    /// `None` when the embeddings are tied (`lm_head.weight` = `model.embed_tokens.weight`).
    pub lm_head: Option<Linear<B>>,
}

impl<B: Backend> CausalLm<B> {
    /// Build the model by pulling every tensor of its parameter spec ([`crate::spec`]) from `src`.
    pub fn load(cfg: &ModelConfig, src: &mut dyn WeightSource, device: &B::Device) -> Result<Self> {
        let specs = crate::spec::param_specs(cfg);
        let mut at = Cursor::new(&specs);
        let e = at.next(Kind::Embedding);
        let embed = src.take(&e.name, &[e.shape[0], e.shape[1]], device)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| DecoderLayer::load(src, &mut at, cfg, device))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(src, at.next(Kind::Norm), cfg.rms_norm_eps, device)?;
        let lm_head =
            if cfg.tie_word_embeddings { None } else { Some(Linear::load(src, &mut at, device)?) };
        at.finish();
        Ok(CausalLm {
            model: Decoder { embed_tokens: Param::from_tensor(embed), layers, norm },
            lm_head,
        })
    }

    /// The dimensions that decide this model's parameters (its spec).
    pub fn dims(&self) -> Dims {
        let [vocab, hidden] = self.model.embed_tokens.dims();
        let first = self.model.layers.first().map(|l| &l.self_attn);
        let attn = first.and_then(SelfAttention::gqa);
        let mla = match first {
            Some(SelfAttention::Mla(a)) => Some(a),
            _ => None,
        };
        let mlp = self.model.layers.iter().find_map(|l| l.mlp.dense());
        let moe = self.model.layers.iter().enumerate().fold(None, |acc, (i, l)| match &l.mlp {
            FeedForward::Sparse(m) => {
                let mut d = acc.unwrap_or(crate::config::MoeDims { sparse: 0, ..m.routing });
                d.sparse |= 1 << i;
                Some(d)
            }
            FeedForward::Dense(_) => acc,
        });
        Dims {
            vocab,
            hidden,
            intermediate: mlp.map_or(0, |m| m.gate_proj.weight.dims()[1]),
            layers: self.model.layers.len(),
            heads: attn.map_or(mla.map_or(0, |a| a.n_heads), |a| a.n_heads),
            kv_heads: attn.map_or(mla.map_or(0, |a| a.n_heads), |a| a.n_kv_heads),
            head_dim: attn.map_or(mla.map_or(0, |a| a.dims.qk_rope), |a| a.head_dim),
            qkv_bias: attn.is_some_and(|a| a.q_proj.bias.is_some()),
            o_bias: attn.is_some_and(|a| a.o_proj.bias.is_some()),
            mlp_bias: mlp.is_some_and(|m| m.gate_proj.bias.is_some()),
            qk_norm: attn.is_some_and(|a| a.q_norm.is_some()),
            tied: self.lm_head.is_none(),
            moe,
            mla: mla.map(|a| a.dims),
        }
    }

    /// Hand every tensor to `sink` under its HF name, in checkpoint order (the spec's).
    pub fn export(&self, sink: &mut dyn WeightSink) {
        let specs = crate::spec::specs(&self.dims());
        let mut at = Cursor::new(&specs);
        sink.put(&at.next(Kind::Embedding).name, self.model.embed_tokens.val());
        for l in &self.model.layers {
            l.export(&mut at, sink);
        }
        self.model.norm.export(&mut at, sink);
        if let Some(h) = &self.lm_head {
            h.export(&mut at, sink);
        }
        at.finish();
    }

    /// Final hidden states `[batch, seq, hidden]` for `input_ids` `[batch, seq]` at `positions`
    /// `[batch, seq]`. With a cache, keys/values are appended to it; after the first call the mask
    /// must cover the cache's whole capacity (see [`crate::masks::decode`]).
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        rope: &Rope<B>,
        mask: &AttnMask<B>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let t = input_ids.dims()[1];
        let mut x = embed(self.model.embed_tokens.val(), input_ids);
        let (h, kv) = self.model.layers.first().map_or((1, 1), |l| l.self_attn.rope_heads());
        let ctx = LayerCtx::new(rope, &positions, h, kv, mask);
        let start = cache.as_deref().map_or(0, KvCache::len);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| (&mut c.layers[i], start));
            x = layer.forward(x, &ctx, slot);
        }
        if let Some(c) = cache {
            c.len += t;
        }
        self.model.norm.forward(x)
    }

    /// Logits `[.., vocab]` from hidden states `[.., hidden]`.
    pub fn logits<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        match &self.lm_head {
            Some(h) => h.forward(hidden),
            // Tied: the embedding `[vocab, hidden]` read through a transposed view.
            None => matmul_2d(hidden, self.model.embed_tokens.val().transpose()),
        }
    }

    /// The LM head as one `[hidden, vocab]` matrix (a transposed view of the embedding when
    /// tied), or `None` when it has a bias.
    pub fn lm_head_weight(&self) -> Option<Tensor<B, 2>> {
        match &self.lm_head {
            Some(h) if h.bias.is_none() => Some(h.weight.val()),
            Some(_) => None,
            None => Some(self.model.embed_tokens.val().transpose()),
        }
    }

    /// Logits `[batch, seq, vocab]` for every position (no cache).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        rope: &Rope<B>,
        mask: &AttnMask<B>,
    ) -> Tensor<B, 3> {
        self.logits(self.forward_hidden(input_ids, positions, rope, mask, None))
    }
}

/// A mutable model parameter, for optimizers.
pub enum ParamMut<'a, B: Backend> {
    Vector(&'a mut Param<Tensor<B, 1>>),
    Matrix(&'a mut Param<Tensor<B, 2>>),
}

impl<B: Backend> CausalLm<B> {
    /// Every parameter with its HF name, in checkpoint order. (Linear weights are held `[in, out]`;
    /// the name is the HF one.)
    pub fn params_mut(&mut self) -> Vec<(String, ParamMut<'_, B>)> {
        let specs = crate::spec::specs(&self.dims());
        let mut at = Cursor::new(&specs);
        let mut out: Vec<(String, ParamMut<'_, B>)> = Vec::new();
        fn lin<'a, B: Backend>(
            out: &mut Vec<(String, ParamMut<'a, B>)>,
            at: &mut Cursor,
            l: &'a mut Linear<B>,
        ) {
            out.push((at.next(Kind::Weight).name.clone(), ParamMut::Matrix(&mut l.weight)));
            if let Some(b) = l.bias.as_mut() {
                out.push((at.next(Kind::Bias).name.clone(), ParamMut::Vector(b)));
            }
        }
        fn norm<'a, B: Backend>(
            out: &mut Vec<(String, ParamMut<'a, B>)>,
            at: &mut Cursor,
            n: &'a mut RmsNorm<B>,
        ) {
            out.push((at.next(Kind::Norm).name.clone(), ParamMut::Vector(&mut n.weight)));
        }
        out.push((
            at.next(Kind::Embedding).name.clone(),
            ParamMut::Matrix(&mut self.model.embed_tokens),
        ));
        for l in self.model.layers.iter_mut() {
            match &mut l.self_attn {
                SelfAttention::Gqa(a) => {
                    for p in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj] {
                        lin(&mut out, &mut at, p);
                    }
                    for n in [a.q_norm.as_mut(), a.k_norm.as_mut()].into_iter().flatten() {
                        norm(&mut out, &mut at, n);
                    }
                }
                SelfAttention::Mla(a) => {
                    if let (Some(qa), Some(n), Some(qb)) =
                        (a.q_a_proj.as_mut(), a.q_a_layernorm.as_mut(), a.q_b_proj.as_mut())
                    {
                        lin(&mut out, &mut at, qa);
                        norm(&mut out, &mut at, n);
                        lin(&mut out, &mut at, qb);
                    }
                    if let Some(q) = a.q_proj.as_mut() {
                        lin(&mut out, &mut at, q);
                    }
                    lin(&mut out, &mut at, &mut a.kv_a_proj_with_mqa);
                    norm(&mut out, &mut at, &mut a.kv_a_layernorm);
                    lin(&mut out, &mut at, &mut a.kv_b_proj);
                    lin(&mut out, &mut at, &mut a.o_proj);
                }
            }
            let mlps: Vec<&mut Mlp<B>> = match &mut l.mlp {
                FeedForward::Dense(m) => vec![m],
                FeedForward::Sparse(m) => {
                    lin(&mut out, &mut at, &mut m.gate);
                    if m.e_score_correction_bias.is_some() {
                        // A buffer: exported, never trained.
                        at.next(Kind::Buffer);
                    }
                    m.experts.iter_mut().chain(m.shared_experts.as_mut()).collect()
                }
            };
            for m in mlps {
                for p in [&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj] {
                    lin(&mut out, &mut at, p);
                }
            }
            norm(&mut out, &mut at, &mut l.input_layernorm);
            norm(&mut out, &mut at, &mut l.post_attention_layernorm);
        }
        norm(&mut out, &mut at, &mut self.model.norm);
        if let Some(h) = self.lm_head.as_mut() {
            lin(&mut out, &mut at, h);
        }
        at.finish();
        out
    }
}
