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
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } => {
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
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * inv / factor + smooth * inv
                    }
                })
                .collect();
            (f, 1.0)
        }
        RopeScaling::Yarn { factor, original_max_position_embeddings: old, beta_fast, beta_slow, attention_factor } => {
            let correction = |rot: f64| (dim as f64 * (old / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln());
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
            let mscale = attention_factor.unwrap_or(if *factor <= 1.0 { 1.0 } else { 0.1 * factor.ln() + 1.0 });
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

    /// cos and sin for `positions` `[batch, seq]`, each `[batch, 1, seq, head_dim]`.
    pub fn cos_sin(&self, positions: &Tensor<B, 2, Int>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, t] = positions.dims();
        let half = self.inv_freq.dims()[1];
        let pos = positions.clone().float().reshape([b * t, 1]);
        let freqs = pos.matmul(self.inv_freq.clone()); // [b*t, half]
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 1).reshape([b, 1, t, 2 * half]);
        let (mut cos, mut sin) = (emb.clone().cos(), emb.sin());
        if self.scale != 1.0 {
            cos = cos.mul_scalar(self.scale);
            sin = sin.mul_scalar(self.scale);
        }
        (cos, sin)
    }
}

/// `x * cos + rotate_half(x) * sin` for `x` `[batch, heads, seq, head_dim]`.
pub fn apply<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}
