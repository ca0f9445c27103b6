//! `[generate]`: the teacher stage's recipe section.

use std::path::PathBuf;

use distill_data::prompts::FieldMap;
use serde::{Deserialize, Serialize};

use crate::backend::SamplingSpec;
use crate::backend::config::{BackendConfig, RetryConfig};
use crate::error::{Error, Result};
use crate::verify::VerifyConfig;

/// Recipe section `[generate]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// JSONL prompt file.
    pub prompts: PathBuf,
    /// Dataset name for ids (default: the file name).
    #[serde(default)]
    pub dataset: Option<String>,
    /// How rows map to prompts (see distill_data::prompts::FieldMap).
    #[serde(default)]
    pub fields: FieldMap,
    /// Output corpus directory (created, or resumed).
    pub output: PathBuf,
    /// Use only the first N prompts (after dedup and decontamination).
    #[serde(default)]
    pub limit: Option<usize>,
    /// N: most samples drawn per prompt. More samples find more correct traces and cost more.
    #[serde(default = "one")]
    pub samples: u32,
    /// K: most passing samples kept per prompt.
    #[serde(default = "one")]
    pub keep: u32,
    /// Stop sampling a prompt once K samples passed (cheaper; fewer rejected traces to study).
    #[serde(default)]
    pub first_pass_wins: bool,
    /// Record rejected samples too (flagged by their verdicts). Off saves space, loses the audit trail.
    #[serde(default = "yes")]
    pub keep_rejected: bool,
    /// Drop prompts whose normalised text repeats an earlier one.
    #[serde(default = "yes")]
    pub dedup: bool,
    /// Drop prompts sharing a word n-gram with these eval files.
    #[serde(default)]
    pub decontaminate_against: Vec<PathBuf>,
    /// The n of those n-grams (Open-R1: 8).
    #[serde(default = "default_ngram")]
    pub decontaminate_ngram: usize,
    /// Skip malformed prompt lines (counted in the report) instead of failing.
    #[serde(default)]
    pub skip_bad_lines: bool,
    /// Commit (make durable) after this many finished prompts. Smaller loses less on a crash.
    #[serde(default = "commit_every")]
    pub commit_every: usize,
    /// Capture this many top log-probabilities per generated token (for logit distillation).
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// How the log-probs are stored: `b64le` (exact) or `packed1` (quantised to 1/256 nat,
    /// about half the bytes at k = 20; docs/trace-format.md).
    #[serde(default)]
    pub logprobs_encoding: distill_data::logprobs::Encoding,
    pub backend: BackendConfig,
    #[serde(default)]
    pub sampling: SamplingSpec,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_ngram() -> usize {
    crate::decontam::DEFAULT_NGRAM
}

fn commit_every() -> usize {
    16
}

impl GenerateConfig {
    /// Checks that need no I/O.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(format!("[generate] {m}")));
        if self.samples == 0 || self.keep == 0 {
            return bad("samples and keep must be at least 1");
        }
        if self.keep > self.samples {
            return bad("keep (K) cannot exceed samples (N)");
        }
        self.fields.validate().map_err(|e| Error::Config(format!("[generate.fields] {e}")))?;
        match &self.backend {
            BackendConfig::Openai { endpoints } if endpoints.is_empty() => {
                bad("backend kind openai needs at least one [[generate.backend.endpoints]]")
            }
            // Written as ranges so that NaN is refused too.
            _ if !(0.0..=f64::INFINITY).contains(&self.sampling.temperature)
                || !(f64::MIN_POSITIVE..=1.0).contains(&self.sampling.top_p) =>
            {
                bad("sampling.temperature must be ≥ 0 and top_p in (0, 1]")
            }
            _ => Ok(()),
        }
    }
}
