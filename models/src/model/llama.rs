//! The dense architectures: Llama, Qwen2 and Qwen3 (HF `modeling_llama.py`, `modeling_qwen2.py`,
//! `modeling_qwen3.py`): grouped-query attention with the switches that tell them apart (q/k/v
//! bias, q/k RMSNorm over the head dimension) and the SwiGLU MLP (also each expert of a sparse
//! layer).

use super::cache::{AttnMask, LayerKv, through_cache};
use super::linear::Linear;
use super::norm::RmsNorm;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::rope;
use crate::spec::{Cursor, Dims, Kind, ParamSpec};
use crate::weights::{WeightSink, WeightSource};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

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
    pub(crate) fn load(
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

    pub(crate) fn from_flat(
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

    pub(crate) fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        for l in [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj] {
            l.export(at, sink);
        }
        for n in [&self.q_norm, &self.k_norm].into_iter().flatten() {
            n.export(at, sink);
        }
    }

    /// `x` `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub(crate) fn forward(
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

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        at: &mut Cursor,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(Mlp {
            gate_proj: Linear::load(src, at, device)?,
            up_proj: Linear::load(src, at, device)?,
            down_proj: Linear::load(src, at, device)?,
        })
    }

    pub(crate) fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        for l in [&self.gate_proj, &self.up_proj, &self.down_proj] {
            l.export(at, sink);
        }
    }

    pub(crate) fn from_flat(
        at: &mut Cursor,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        Mlp {
            gate_proj: Linear::from_flat(at, next),
            up_proj: Linear::from_flat(at, next),
            down_proj: Linear::from_flat(at, next),
        }
    }

    /// SwiGLU: `down(silu(gate(x)) * up(x))`, `[.., hidden]` → `[.., hidden]`.
    pub(crate) fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.down_proj.forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}
