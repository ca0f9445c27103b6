//! On-policy distillation: the student samples, the teacher scores every sampled token, and the
//! student minimises a per-token divergence to the teacher on its own samples
//! ([`crate::train::divergence`]); the
//! loop is the one training loop, fed by [`source`]. Recipe section `[train.on_policy]` ([`OnPolicyConfig`]).

pub mod source;

use std::path::PathBuf;

use distill_data::FieldMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::train::divergence::Divergence;
pub use source::{HeldOut, Judge, measure_held_out, samples_dir, train_on_policy};

/// `loss = …` in `[train.on_policy]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    ReverseKl,
    Gkd,
}

/// `[train.on_policy]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnPolicyConfig {
    /// Prompts the student answers (JSONL or Parquet), with their field map.
    pub prompts: PathBuf,
    #[serde(default = "default_fields")]
    pub fields: FieldMap,
    /// The teacher: a Hugging Face model directory, scored by the local engine on the training
    /// device; with `endpoint`, only its tokenizer is read (to check the vocabulary) and the
    /// endpoint scores. It must share the student's vocabulary.
    pub teacher: PathBuf,
    /// A vLLM server holding the teacher (the `[[generate.backend.endpoints]]` fields:
    /// `base_url`, `model`, `api_key_env`, `concurrency`, …): it scores each sample with
    /// `prompt_logprobs` instead of the local engine.
    #[serde(default)]
    pub endpoint: Option<distill_data::endpoint::OpenAiConfig>,
    /// `reverse_kl` (sampled-token estimator) or `gkd` (generalised JSD over the top-k).
    #[serde(default = "default_loss")]
    pub loss: LossKind,
    /// GKD's interpolation: 0 = forward KL, 1 = reverse KL.
    #[serde(default = "half")]
    pub beta: f64,
    /// Share of the steps that are on-policy; the rest are SFT steps on `[train.data]`.
    #[serde(default = "one")]
    pub lambda: f64,
    /// Prompts sampled per on-policy step (one completion each).
    #[serde(default = "eight")]
    pub prompts_per_step: usize,
    /// Sequences the student decodes together.
    #[serde(default = "eight")]
    pub batch: usize,
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default = "one")]
    pub top_p: f64,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Teacher alternatives kept per position (GKD's support; stored with every sample).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// How the teacher's scores are stored: `packed1` (quantised to 1/256 nat, about half the
    /// bytes of `b64le` at k = 20) or `b64le` (exact). Training always reads them back as stored,
    /// so a resumed run sees what an uninterrupted one saw.
    #[serde(default = "packed")]
    pub encoding: distill_data::logprobs::Encoding,
    /// Prompts held out for the reverse-KL metric (`eval_reverse_kl` in metrics.jsonl).
    #[serde(default)]
    pub eval_prompts: usize,
    #[serde(default)]
    pub seed: u64,
}

fn default_fields() -> FieldMap {
    FieldMap { prompt: Some("prompt".into()), require_answer: false, ..FieldMap::default() }
}
fn packed() -> distill_data::logprobs::Encoding {
    distill_data::logprobs::Encoding::Packed1
}
fn default_loss() -> LossKind {
    LossKind::ReverseKl
}
fn half() -> f64 {
    0.5
}
fn one() -> f64 {
    1.0
}
fn eight() -> usize {
    8
}
fn default_max_tokens() -> usize {
    256
}
fn default_top_k() -> usize {
    20
}

impl OnPolicyConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config { section: "train.on_policy", msg });
        if !(0.0..=1.0).contains(&self.beta) {
            return bad(format!("beta {} must be in [0, 1]", self.beta));
        }
        if !(0.0..=1.0).contains(&self.lambda) || self.lambda == 0.0 {
            return bad(format!("lambda {} must be in (0, 1]", self.lambda));
        }
        if self.prompts_per_step == 0 || self.max_tokens == 0 {
            return bad("prompts_per_step and max_tokens must be at least 1".into());
        }
        if self.loss == LossKind::Gkd && self.top_k == 0 {
            return bad("gkd needs the teacher's top-k: top_k ≥ 1".into());
        }
        let sampled = self.temperature.is_finite() && self.temperature > 0.0;
        if !sampled || self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad("temperature must be > 0 (on-policy samples) and top_p in (0, 1]".into());
        }
        self.fields.validate()?;
        Ok(())
    }

    pub fn divergence(&self) -> Divergence {
        match self.loss {
            LossKind::ReverseKl => Divergence::ReverseKl,
            LossKind::Gkd => Divergence::Gkd { beta: self.beta },
        }
    }

    pub fn loss_name(&self) -> &'static str {
        match self.loss {
            LossKind::ReverseKl => "reverse_kl",
            LossKind::Gkd => "gkd",
        }
    }
}
