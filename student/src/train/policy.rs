//! The clipped policy-gradient objective of GRPO, Dr. GRPO and DAPO, per token, as TRL's
//! `GRPOTrainer` computes it (trl 0.24, `_compute_loss` with `importance_sampling_level =
//! "token"`):
//!
//! - `log π(x)` is the student's log-prob of the sampled token with the logits divided by the
//!   sampling temperature;
//! - the ratio `ρ = exp(log π − log π_old)`, where `log π_old` is the sampling policy's log-prob
//!   recorded at rollout time (μ > 1), or `log π` itself held constant (μ = 1, TRL's
//!   `old_per_token_logps = per_token_logps.detach()`), so `ρ = 1` with the gradient of `log π`;
//! - `ℓ = −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) + β·KL`, with the k3 estimator
//!   `KL = exp(r − log π) − (r − log π) − 1` against the reference model's log-prob `r`.
//!
//! How the tokens' losses are aggregated (per-sequence mean, a constant, the step's token mean) is
//! the source's business: it gives every token a weight `w`, and this returns `Σ w·ℓ` in
//! [`LossSums::ce`]. The step divides by the step's loss tokens `N`, so a source that wants
//! `Σ c·ℓ` passes `w = N·c` (see `crate::grpo::Aggregation`).

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use super::loss::{Head, LossSums};
use super::pack::Batch;

/// The clipped policy-gradient loss's constants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PolicyLoss {
    /// ρ is clipped to `[1 − eps_low, 1 + eps_high]` (DAPO's clip-higher when they differ).
    pub eps_low: f64,
    pub eps_high: f64,
    /// Weight of the k3 KL to the reference model (0: no reference).
    pub beta: f64,
    /// The sampling temperature: the policy's log-probs are taken of `logits / temperature`.
    pub temperature: f64,
}

/// Per scored token of an RL sample, aligned with the batch's targets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RlToken {
    /// Flat position in the batch (`row · len + t`) whose logits predict the token.
    pub pos: usize,
    pub advantage: f32,
    /// The token's weight in `Σ w·ℓ / N` (the aggregation).
    pub weight: f32,
    /// The sampling policy's log-prob (NaN: use the current one, held constant).
    pub old_logprob: f32,
    /// The reference model's log-prob (NaN: none; needed when β > 0).
    pub ref_logprob: f32,
}

/// What a loss pass measured besides the loss (sums over this micro-batch's scored tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PolicyFigures {
    pub tokens: f64,
    /// Tokens whose ratio was clipped in the direction that stops the gradient.
    pub clipped: f64,
    /// Σ k3 KL to the reference (0 without one).
    pub kl: f64,
}

impl PolicyFigures {
    pub fn add(&mut self, o: &PolicyFigures) {
        self.tokens += o.tokens;
        self.clipped += o.clipped;
        self.kl += o.kl;
    }
}

/// `Σ w·ℓ` over the batch's RL tokens from the final hidden states `[rows, len, hidden]`, and
/// the clip and KL sums.
pub fn losses_from_hidden<B: Backend>(
    head: &Head<B>,
    hidden: Tensor<B, 3>,
    batch: &Batch,
    device: &B::Device,
    p: PolicyLoss,
) -> (LossSums<B>, PolicyFigures) {
    let n = batch.rl.len();
    if n == 0 {
        let none =
            LossSums { ce: Tensor::zeros([1], device), kd: None, tokens: 0, kd_positions: 0 };
        return (none, PolicyFigures::default());
    }
    let (r, t) = (batch.rows, batch.len);
    let d = hidden.dims()[2];
    let f1 = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [n]), device);
    let at: Vec<i64> = batch.rl.iter().map(|x| x.pos as i64).collect();
    let sel = Tensor::<B, 1, Int>::from_data(TensorData::new(at, [n]), device);
    let x = hidden.reshape([r * t, d]).select(0, sel); // [n, d]
    let logits = head.logits(x).cast(burn::tensor::DType::F32); // [n, vocab]
    let logits = logits.div_scalar(p.temperature);
    let targets: Vec<i64> = batch
        .rl
        .iter()
        .map(|x| batch.targets[x.pos].expect("an RL token has a target") as i64)
        .collect();
    let tgt = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, 1]), device);
    let logp = log_softmax(logits, 1).gather(1, tgt).reshape([n]); // [n]
    // The sampling policy: recorded, or the current one held constant (ρ = 1).
    let old = if batch.rl.iter().all(|x| x.old_logprob.is_nan()) {
        logp.clone().detach()
    } else {
        assert!(batch.rl.iter().all(|x| !x.old_logprob.is_nan()), "old log-probs for every token");
        f1(batch.rl.iter().map(|x| x.old_logprob).collect())
    };
    let adv = f1(batch.rl.iter().map(|x| x.advantage).collect());
    let ratio = (logp.clone() - old).exp(); // [n]
    let clipped = ratio.clone().clamp(1.0 - p.eps_low, 1.0 + p.eps_high);
    let pg = (ratio.clone() * adv.clone()).min_pair(clipped * adv.clone()).neg(); // [n]
    // Clipped where the clip binds: ρ < 1 − ε_low with A < 0, or ρ > 1 + ε_high with A > 0.
    let rho: Vec<f32> =
        ratio.clone().detach().into_data().convert::<f32>().to_vec().unwrap_or_default();
    let n_clipped = rho
        .iter()
        .zip(&batch.rl)
        .filter(|(r, x)| {
            let r = **r as f64;
            (r < 1.0 - p.eps_low && x.advantage < 0.0)
                || (r > 1.0 + p.eps_high && x.advantage > 0.0)
        })
        .count();
    let mut figures = PolicyFigures { tokens: n as f64, clipped: n_clipped as f64, kl: 0.0 };
    let per_token = if p.beta > 0.0 {
        assert!(batch.rl.iter().all(|x| !x.ref_logprob.is_nan()), "β > 0 needs the reference");
        let diff = f1(batch.rl.iter().map(|x| x.ref_logprob).collect()) - logp; // r − log π
        let kl = diff.clone().exp() - diff - 1.0; // [n]
        figures.kl = kl.clone().detach().sum().into_scalar().elem::<f64>();
        pg + kl.mul_scalar(p.beta)
    } else {
        pg
    };
    let w = f1(batch.rl.iter().map(|x| x.weight).collect());
    let sum = (per_token * w).sum();
    (LossSums { ce: sum, kd: None, tokens: n, kd_positions: 0 }, figures)
}
