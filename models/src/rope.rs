//! Rotary position embeddings in Hugging Face's convention: the head dimension is split in two
//! halves and rotated with `rotate_half` (not burn's interleaved pairs). Frequency scaling
//! follows transformers' `modeling_rope_utils` (default, linear, llama3, yarn).

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::config::{ModelConfig, RopeScaling};

/// Inverse frequencies `[head_dim / 2]` and the factor cos/sin are scaled by (YaRN's mscale).
pub fn inv_freq(cfg: &ModelConfig) -> (Vec<f32>, f32) {
    let dim = cfg.head_dim;
    let base = cfg.rope_theta;
    // As transformers: base ** (arange(0, dim, 2) / dim), in f32.
    let pos_freqs: Vec<f64> =
        (0..dim / 2).map(|i| (base as f32).powf((2 * i) as f32 / dim as f32) as f64).collect();
    let plain: Vec<f64> = pos_freqs.iter().map(|p| 1.0 / p).collect();
    let (freqs, scale) = match &cfg.rope_scaling {
        RopeScaling::None => (plain, 1.0),
        RopeScaling::Linear { factor } => (plain.iter().map(|f| f / factor).collect(), 1.0),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let f = plain
                .iter()
                .map(|&inv| {
                    let wavelen = 2.0 * std::f64::consts::PI / inv;
                    if wavelen < high_wavelen {
                        inv
                    } else if wavelen > low_wavelen {
                        inv / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * inv / factor + smooth * inv
                    }
                })
                .collect();
            (f, 1.0)
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: old,
            beta_fast,
            beta_slow,
            attention_factor,
            ..
        } => {
            let correction = |rot: f64| {
                (dim as f64 * (old / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
            };
            let low = correction(*beta_fast).floor().max(0.0);
            let high = correction(*beta_slow).ceil().min(dim as f64 - 1.0);
            let high = if low == high { high + 0.001 } else { high };
            let f = (0..dim / 2)
                .map(|i| {
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation = 1.0 - ramp;
                    let interp = 1.0 / (factor * pos_freqs[i]);
                    let extrap = 1.0 / pos_freqs[i];
                    interp * (1.0 - extrapolation) + extrap * extrapolation
                })
                .collect();
            let mscale = attention_factor.unwrap_or(if *factor <= 1.0 {
                1.0
            } else {
                0.1 * factor.ln() + 1.0
            });
            (f, mscale)
        }
    };
    (freqs.into_iter().map(|f| f as f32).collect(), scale as f32)
}

/// Precomputed inverse frequencies on a device.
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    inv_freq: Tensor<B, 2>,
    scale: f32,
}

impl<B: Backend> Rope<B> {
    pub fn new(cfg: &ModelConfig, device: &B::Device) -> Self {
        let (f, scale) = inv_freq(cfg);
        let n = f.len();
        Rope { inv_freq: Tensor::from_data(TensorData::new(f, [1, n]), device), scale }
    }

    /// Tables for `positions` `[batch, seq]`, laid out for heads of width `head_dim`.
    pub fn tables(&self, positions: &Tensor<B, 2, Int>) -> RopeTables<B> {
        let [b, t] = positions.dims();
        let pos = positions.clone().float().reshape([b * t, 1]);
        let freqs = pos.matmul(self.inv_freq.clone()); // [b*t, half]
        let (mut cos, mut sin) = (freqs.clone().cos(), freqs.sin());
        if self.scale != 1.0 {
            cos = cos.mul_scalar(self.scale);
            sin = sin.mul_scalar(self.scale);
        }
        // rotate_half(x) * sin == swap_halves(x) * [-sin, sin]
        RopeTables {
            cos: Tensor::cat(vec![cos.clone(), cos], 1),
            sin_signed: Tensor::cat(vec![sin.clone().neg(), sin], 1),
            rows: b * t,
        }
    }
}

/// cos and sign-folded sin per (batch, position), `[batch*seq, head_dim]`.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 2>,
    sin_signed: Tensor<B, 2>,
    rows: usize,
}

impl<B: Backend> RopeTables<B> {
    /// The tables repeated for `n` heads: `[batch*seq*n, head_dim]`, rows in (batch, seq, head) order.
    pub fn for_heads(&self, n: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let d = self.cos.dims()[1];
        let rep = |x: &Tensor<B, 2>| {
            x.clone()
                .reshape([self.rows, 1, d])
                .expand([self.rows, n, d])
                .reshape([self.rows * n, d])
        };
        (rep(&self.cos), rep(&self.sin_signed))
    }
}

/// Rotate `x` `[batch, seq, heads, head_dim]` (HF's rotate_half convention) with tables from
/// [`RopeTables::for_heads`]. Works on 2-D views so every element-wise op is a contiguous one.
pub fn apply<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 2>,
    sin_signed: &Tensor<B, 2>,
) -> Tensor<B, 4> {
    let dims = x.dims();
    let d = dims[3];
    let x2 = x.reshape([dims[0] * dims[1] * dims[2], d]);
    let swapped =
        Tensor::cat(vec![x2.clone().narrow(1, d / 2, d / 2), x2.clone().narrow(1, 0, d / 2)], 1);
    // The tables are f32; under bf16 compute they are cast to the activations' dtype.
    let dt = x2.dtype();
    (x2 * cos.clone().cast(dt) + swapped * sin_signed.clone().cast(dt)).reshape(dims)
}
