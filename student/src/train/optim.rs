//! AdamW with torch's semantics, the warmup + cosine-to-min-lr schedule, and global-norm clipping
//! — written out rather than taken from burn, whose clipping is per tensor and whose AdamW defaults
//! differ. State is plain tensors keyed by HF parameter name, so it checkpoints as safetensors.

use std::collections::BTreeMap;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// `[train.optim]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate. Open-R1's distills use 4e-5 (1e-5 … 5e-5 for full fine-tunes).
    pub lr: f64,
    pub beta1: f64,
    /// 0.95 is steadier on long-sequence SFT than torch's 0.999.
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, not applied to norms and biases.
    pub weight_decay: f64,
    /// Warmup as a fraction of all optimizer steps (Open-R1: 0.03) …
    pub warmup_ratio: f64,
    /// … or as a step count (wins when set).
    pub warmup_steps: Option<u64>,
    /// Cosine decay ends at `lr · min_lr_ratio` (Open-R1: 0.1).
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this (torch's clip_grad_norm_); 0 disables.
    pub max_grad_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 4e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_ratio: 0.03,
            warmup_steps: None,
            min_lr_ratio: 0.1,
            max_grad_norm: 1.0,
        }
    }
}

impl OptimConfig {
    pub fn warmup(&self, total: u64) -> u64 {
        self.warmup_steps.unwrap_or_else(|| (self.warmup_ratio * total as f64).ceil() as u64)
    }

    /// The learning rate of optimizer step `step` (0-based) of `total`: transformers'
    /// `get_cosine_with_min_lr_schedule_with_warmup` (step 0 of a warmup has lr 0).
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        let w = self.warmup(total);
        let factor = if step < w {
            step as f64 / w.max(1) as f64
        } else {
            let progress = (step - w) as f64 / (total.saturating_sub(w)).max(1) as f64;
            let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
            cos * (1.0 - self.min_lr_ratio) + self.min_lr_ratio
        };
        self.lr * factor
    }

    pub fn validate(&self) -> crate::Result<()> {
        // Every value finite: `lr = inf` or `eps = inf` would train without learning.
        let finite = [
            self.lr,
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay,
            self.warmup_ratio,
            self.min_lr_ratio,
            self.max_grad_norm,
        ]
        .iter()
        .all(|x| x.is_finite());
        let ok = finite
            && self.lr > 0.0
            && (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps > 0.0
            && self.weight_decay >= 0.0
            && (0.0..=1.0).contains(&self.warmup_ratio)
            && (0.0..=1.0).contains(&self.min_lr_ratio)
            && self.max_grad_norm >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(crate::Error::Config {
                section: "train.optim",
                msg: format!("has an out-of-range value: {self:?}"),
            })
        }
    }
}

/// Whether a parameter gets weight decay (TRL/transformers: not norms, not biases).
pub fn decays(name: &str) -> bool {
    !(name.ends_with("norm.weight") || name.ends_with(".bias"))
}

/// First and second moments of one parameter.
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    pub exp_avg: Tensor<B, 1>,
    pub exp_avg_sq: Tensor<B, 1>,
}

/// AdamW state: moments per parameter (flattened) and the step count.
#[derive(Debug, Clone)]
pub struct AdamW<B: Backend> {
    pub cfg: OptimConfig,
    pub state: BTreeMap<String, Moments<B>>,
    /// Optimizer steps taken.
    pub step: u64,
}

impl<B: Backend> AdamW<B> {
    pub fn new(cfg: OptimConfig) -> Self {
        AdamW { cfg, state: BTreeMap::new(), step: 0 }
    }

    /// One update of a flattened parameter `p` with gradient `g` at learning rate `lr`:
    /// torch's single-tensor AdamW (decay first, then the bias-corrected Adam step).
    pub fn update(
        &mut self,
        name: &str,
        p: Tensor<B, 1>,
        g: Tensor<B, 1>,
        lr: f64,
    ) -> Tensor<B, 1> {
        let c = &self.cfg;
        let t = (self.step + 1) as i32;
        let m0 = self
            .state
            .remove(name)
            .unwrap_or_else(|| Moments { exp_avg: g.zeros_like(), exp_avg_sq: g.zeros_like() });
        let p = if decays(name) && c.weight_decay > 0.0 {
            p.mul_scalar(1.0 - lr * c.weight_decay)
        } else {
            p
        };
        // exp_avg.lerp_(g, 1 - beta1) == exp_avg + (1 - beta1) (g - exp_avg)
        let m = m0.exp_avg.clone() + (g.clone() - m0.exp_avg).mul_scalar(1.0 - c.beta1);
        let v = m0.exp_avg_sq.mul_scalar(c.beta2) + g.clone().mul(g).mul_scalar(1.0 - c.beta2);
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let step_size = lr / bc1;
        let denom = v.clone().sqrt().div_scalar(bc2.sqrt()).add_scalar(c.eps);
        let p = p - m.clone().div(denom).mul_scalar(step_size);
        self.state.insert(name.to_string(), Moments { exp_avg: m, exp_avg_sq: v });
        p
    }
}

/// torch's `clip_grad_norm_` over all gradients at once: returns the total norm before clipping
/// and scales every gradient by `min(1, max_norm / (total + 1e-6))`.
pub fn clip_global<B: Backend>(grads: &mut [Tensor<B, 1>], max_norm: f64) -> f64 {
    let sq: f64 = grads.iter().map(|g| g.clone().square().sum().into_scalar().elem::<f64>()).sum();
    let total = sq.sqrt();
    if max_norm > 0.0 {
        let coef = (max_norm / (total + 1e-6)).min(1.0);
        for g in grads.iter_mut() {
            *g = g.clone().mul_scalar(coef);
        }
    }
    total
}
