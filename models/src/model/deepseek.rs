//! DeepSeek-V2/V3's Multi-head Latent Attention (HF `modeling_deepseek_v3.py`).

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
use burn::tensor::TensorData;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

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
    pub(crate) fn load(
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

    pub(crate) fn from_flat(
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

    pub(crate) fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
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
    pub(crate) fn deinterleave(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if !self.dims.interleave {
            return x;
        }
        let r = self.dims.qk_rope;
        let perm: Vec<i64> = (0..r as i64).step_by(2).chain((1..r as i64).step_by(2)).collect();
        x.select(3, Tensor::from_data(TensorData::new(perm, [r]), &self.o_proj.weight.device()))
    }

    /// `x` `[batch, seq, hidden]` → `[batch, seq, hidden]`. The cache slot holds the latent
    /// `[batch, 1, capacity, kv_lora_rank]` and the rotated key `[batch, 1, capacity, qk_rope]`.
    pub(crate) fn forward(
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
