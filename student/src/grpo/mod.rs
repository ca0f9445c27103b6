//! RL with verifiable rewards on the student: GRPO (the R1 paper, TRL's `GRPOTrainer`), Dr. GRPO
//! and DAPO, as a third objective of the one training loop. Each step the student's current
//! weights sample a group of G completions per prompt ([`source`]), the rewards score them
//! ([`reward`]), the group-normalised rewards become advantages, and the clipped policy gradient
//! ([`crate::train::policy`]) is taken on them, μ times per batch of rollouts. Recipe section
//! `[train.grpo]` ([`GrpoConfig`]).

pub mod reward;
pub mod source;

use std::path::PathBuf;

use distill_data::FieldMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::train::policy::PolicyLoss;
pub use reward::{RewardConfig, Rewards};
pub use source::{EvalPass, measure_pass_rate, rollouts_dir, train_grpo};

/// `loss = …`: the aggregation and its defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// The R1 paper's: each sequence's token mean, then the mean over sequences; advantages
    /// divided by the group's std.
    Grpo,
    /// Dr. GRPO: token sums over a constant (sequences × max_tokens), no std division.
    DrGrpo,
    /// DAPO: the token mean over the step's completion tokens; clip-higher and dynamic sampling
    /// by default.
    Dapo,
    /// Online rejection-sampling fine-tuning (DeepSeekMath's Online RFT; STaR, online): the same
    /// rollouts, but the step is plain SFT (token-mean cross-entropy at temperature 1) on the
    /// samples the accuracy reward passes; the failed ones are not trained on. The "more SFT"
    /// arm of a GRPO comparison (`compare`).
    OnlineRft,
}

/// `[train.grpo]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoConfig {
    /// Prompts with checkable answers (JSONL or Parquet), with their field map.
    pub prompts: PathBuf,
    #[serde(default = "default_fields")]
    pub fields: FieldMap,
    #[serde(default = "default_loss")]
    pub loss: LossType,
    /// Completions per prompt (G).
    #[serde(default = "eight")]
    pub group_size: usize,
    /// Prompts (groups) per rollout batch.
    #[serde(default = "four")]
    pub prompts_per_step: usize,
    /// Optimizer steps per batch of rollouts (μ); the ratio's denominator is the sampling
    /// policy's log-prob recorded at rollout time.
    #[serde(default = "one_usize")]
    pub num_iterations: usize,
    /// Sequences the student decodes together (at least `group_size`).
    #[serde(default = "eight")]
    pub batch: usize,
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default = "one")]
    pub top_p: f64,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// ε: the ratio is clipped to [1 − epsilon, 1 + epsilon_high].
    #[serde(default = "default_eps")]
    pub epsilon: f64,
    /// DAPO's clip-higher (default: 0.28 for dapo, else `epsilon`).
    #[serde(default)]
    pub epsilon_high: Option<f64>,
    /// KL weight to the frozen starting model (0: no reference model is loaded).
    #[serde(default)]
    pub beta: f64,
    /// Divide advantages by the group's std (default: yes for grpo and dapo, no for dr_grpo).
    #[serde(default)]
    pub scale_rewards: Option<bool>,
    /// Drop groups whose rewards are all equal and sample more prompts (default: dapo only).
    #[serde(default)]
    pub dynamic_sampling: Option<bool>,
    /// Rollout rounds a step may take to fill its groups under dynamic sampling.
    #[serde(default = "three")]
    pub max_sampling_rounds: usize,
    #[serde(default)]
    pub rewards: RewardConfig,
    /// Prompts held out for `eval_pass_rate` (pass@1 over `eval_samples` samples each).
    #[serde(default)]
    pub eval_prompts: usize,
    #[serde(default = "four")]
    pub eval_samples: usize,
    #[serde(default)]
    pub seed: u64,
    /// `distill run` only: after the run, an online-RFT arm (`loss = "online_rft"`) from the same
    /// model, on the same prompts and rollout settings, for the same seconds of optimizer steps;
    /// both measured on the held-out prompts (`eval/grpo-comparison.json`, the report).
    #[serde(default)]
    pub compare: bool,
}

fn default_fields() -> FieldMap {
    FieldMap { prompt: Some("prompt".into()), ..FieldMap::default() }
}
fn default_loss() -> LossType {
    LossType::Grpo
}
fn default_eps() -> f64 {
    0.2
}
fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn eight() -> usize {
    8
}
fn default_max_tokens() -> usize {
    256
}

impl GrpoConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config { section: "train.grpo", msg });
        if self.group_size < 2 {
            return bad(format!(
                "group_size {} must be at least 2: advantages are relative to the group",
                self.group_size
            ));
        }
        if self.prompts_per_step == 0 || self.max_tokens == 0 || self.num_iterations == 0 {
            return bad("prompts_per_step, max_tokens and num_iterations must be at least 1".into());
        }
        if self.max_sampling_rounds == 0 {
            return bad("max_sampling_rounds must be at least 1".into());
        }
        let sampled = self.temperature.is_finite() && self.temperature > 0.0;
        if !sampled || self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad("temperature must be > 0 (rollouts are sampled) and top_p in (0, 1]".into());
        }
        let eps_ok = |e: f64| e.is_finite() && e > 0.0 && e < 1.0;
        if !eps_ok(self.epsilon) || !self.epsilon_high.is_none_or(|e| e.is_finite() && e > 0.0) {
            return bad("epsilon must be in (0, 1) and epsilon_high > 0".into());
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return bad(format!("beta {} must be a non-negative number", self.beta));
        }
        if self.eval_prompts > 0 && self.eval_samples == 0 {
            return bad("eval_samples must be at least 1".into());
        }
        if self.loss == LossType::OnlineRft {
            if self.rewards.accuracy <= 0.0 {
                return bad("loss = \"online_rft\" trains on the samples the accuracy reward passes: set [train.grpo.rewards] accuracy > 0".into());
            }
            if self.beta != 0.0 {
                return bad(
                    "loss = \"online_rft\" is plain SFT on the passed samples: beta must be 0"
                        .into(),
                );
            }
        }
        if self.compare {
            if self.loss == LossType::OnlineRft {
                return bad("compare runs an online_rft arm beside this run: this run's loss must be grpo, dr_grpo or dapo".into());
            }
            if self.eval_prompts == 0 || self.rewards.accuracy <= 0.0 {
                return bad(
                    "compare measures held-out pass@1: set eval_prompts ≥ 1 and an accuracy reward"
                        .into(),
                );
            }
        }
        self.rewards.validate()?;
        self.fields.validate()?;
        Ok(())
    }

    pub fn policy_loss(&self) -> PolicyLoss {
        let high = self.epsilon_high.unwrap_or(match self.loss {
            LossType::Dapo => 0.28,
            _ => self.epsilon,
        });
        PolicyLoss {
            eps_low: self.epsilon,
            eps_high: high,
            beta: self.beta,
            temperature: self.temperature,
        }
    }

    pub fn scales_rewards(&self) -> bool {
        self.scale_rewards.unwrap_or(self.loss != LossType::DrGrpo)
    }

    pub fn dynamic(&self) -> bool {
        self.dynamic_sampling.unwrap_or(self.loss == LossType::Dapo)
    }

    pub fn loss_name(&self) -> &'static str {
        match self.loss {
            LossType::Grpo => "grpo",
            LossType::DrGrpo => "dr_grpo",
            LossType::Dapo => "dapo",
            LossType::OnlineRft => "online_rft",
        }
    }
}

/// Group-relative advantages, as TRL computes them: `A = r − mean(group)`, divided by
/// `std(group) + 1e-4` (Bessel's std) when `scale`. `rewards` holds whole groups of `g`.
pub fn advantages(rewards: &[f64], g: usize, scale: bool) -> Vec<f64> {
    assert!(g >= 2 && rewards.len().is_multiple_of(g), "whole groups of at least 2");
    rewards
        .chunks(g)
        .flat_map(|grp| {
            let mean = grp.iter().sum::<f64>() / g as f64;
            let var = grp.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / (g - 1) as f64;
            let div = if scale { var.sqrt() + 1e-4 } else { 1.0 };
            grp.iter().map(move |r| (r - mean) / div)
        })
        .collect()
}

/// Whether a group's rewards are all equal (its advantages are all zero: DAPO drops it).
pub fn uninformative(group: &[f64]) -> bool {
    group.iter().all(|r| (r - group[0]).abs() <= 1e-12)
}

/// Each sequence's token weight `w` for the step's `Σ w·ℓ / N` (N = the step's completion tokens,
/// `lens` every sequence's scored tokens), so that it equals the loss type's aggregation.
pub fn token_weights(loss: LossType, lens: &[usize], max_tokens: usize) -> Vec<f32> {
    let n: usize = lens.iter().sum();
    let s = lens.len().max(1) as f64;
    lens.iter()
        .map(|&l| match loss {
            // mean over sequences of the sequence's token mean: Σ ℓ / (len · S)
            LossType::Grpo => (n as f64 / (l.max(1) as f64 * s)) as f32,
            // Σ ℓ / (S · max_tokens)
            LossType::DrGrpo => (n as f64 / (s * max_tokens as f64)) as f32,
            // Σ ℓ / N (online RFT trains by SFT's loss instead; this weighs the all-failed
            // step's zero-advantage fallback)
            LossType::Dapo | LossType::OnlineRft => 1.0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_are_group_relative() {
        let a = advantages(&[1.0, 0.0, 1.0, 0.5, 0.5, 0.5], 3, true);
        // Group 1: mean 2/3, std (Bessel) 0.57735.
        assert!((a[0] - (1.0 / 3.0) / (0.5773502691896258 + 1e-4)).abs() < 1e-12);
        assert!((a[1] + (2.0 / 3.0) / (0.5773502691896258 + 1e-4)).abs() < 1e-12);
        assert_eq!(&a[3..], &[0.0, 0.0, 0.0]);
        let b = advantages(&[1.0, 0.0, 1.0], 3, false);
        assert!((b[0] - 1.0 / 3.0).abs() < 1e-12);
        assert!(uninformative(&[0.5, 0.5, 0.5]) && !uninformative(&[0.5, 0.0]));
    }

    #[test]
    fn token_weights_give_each_aggregation() {
        let lens = [2usize, 4];
        // grpo: (ℓ0 sum / 2 + ℓ1 sum / 4) / 2 == Σ w·ℓ / 6
        let w = token_weights(LossType::Grpo, &lens, 8);
        assert!((w[0] - 6.0 / 4.0).abs() < 1e-6 && (w[1] - 6.0 / 8.0).abs() < 1e-6);
        let w = token_weights(LossType::DrGrpo, &lens, 8);
        assert!((w[0] - 6.0 / 16.0).abs() < 1e-6 && w[0] == w[1]);
        assert_eq!(token_weights(LossType::Dapo, &lens, 8), vec![1.0, 1.0]);
    }
}
