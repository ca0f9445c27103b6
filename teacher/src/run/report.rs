//! What a run did: `generate-report.json` and `.txt` in the output corpus, and the progress the
//! caller hears about.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;

/// What a run did. Written as `generate-report.json` and `.txt` in the output corpus.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GenerateReport {
    pub prompts_file: PathBuf,
    pub prompts_read: u64,
    pub bad_lines: u64,
    /// The skipped lines (`skip_bad_lines`), each with why; the first 10,000.
    pub skipped_lines: Vec<SkippedLine>,
    pub duplicates_dropped: u64,
    pub contaminated_dropped: Vec<crate::decontam::Contaminated>,
    pub prompts_selected: u64,
    /// Done by earlier runs (skipped, not sent).
    pub already_done: u64,
    pub prompts_done: u64,
    pub prompts_failed: Vec<FailedPrompt>,
    pub samples: u64,
    /// Samples that passed every verdict.
    pub passed: u64,
    /// Traces kept for training (≤ K per prompt).
    pub kept: u64,
    pub written: u64,
    /// Samples by the first verdict they failed.
    pub rejected_by: BTreeMap<String, u64>,
    pub prompts_with_a_kept_trace: u64,
    pub requests: u64,
    pub retries: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub completion_tokens_p50: u64,
    pub completion_tokens_p90: u64,
    pub completion_tokens_max: u64,
    pub elapsed_s: f64,
    pub completion_tokens_per_s: f64,
    pub teachers: Vec<String>,
    /// Prompt tokens served from the provider's cache.
    pub cached_prompt_tokens: u64,
    /// USD, summed over the requests to endpoints with a `price` (this run only).
    pub cost_usd: Option<f64>,
    /// Requests answered by an endpoint without a `price` (not in `cost_usd`).
    pub unpriced_requests: u64,
    /// Device-hours of the local engine (wall time × devices), for a run on it.
    pub device_hours: Option<f64>,
    /// Samples that came back without the log-probs the recipe asked for (`logprobs = k`).
    pub samples_without_logprobs: u64,
}

/// A prompt line that could not be read, skipped under `skip_bad_lines`.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedLine {
    pub line: u64,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedPrompt {
    pub prompt_id: String,
    pub error: String,
}

impl GenerateReport {
    pub fn pass_rate(&self) -> f64 {
        if self.samples == 0 { 0.0 } else { self.passed as f64 / self.samples as f64 }
    }

    /// USD per trace kept by this run.
    pub fn cost_per_kept(&self) -> Option<f64> {
        self.cost_usd.filter(|_| self.kept > 0).map(|c| c / self.kept as f64)
    }

    /// Device-hours per trace kept by this run (local engine).
    pub fn device_hours_per_kept(&self) -> Option<f64> {
        self.device_hours.filter(|_| self.kept > 0).map(|h| h / self.kept as f64)
    }

    /// What `traces` kept traces would cost at this run's rates: USD and device-hours.
    pub fn projection(&self, traces: u64) -> (Option<f64>, Option<f64>) {
        (
            self.cost_per_kept().map(|c| c * traces as f64),
            self.device_hours_per_kept().map(|h| h * traces as f64),
        )
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(format!(
            "prompts: {} read from {}, {} duplicates and {} contaminated dropped, {} bad lines",
            self.prompts_read,
            self.prompts_file.display(),
            self.duplicates_dropped,
            self.contaminated_dropped.len(),
            self.bad_lines
        ));
        line(format!(
            "         {} selected, {} already done, {} done now, {} failed",
            self.prompts_selected,
            self.already_done,
            self.prompts_done,
            self.prompts_failed.len()
        ));
        line(format!(
            "samples: {} drawn, {} passed ({:.1}%), {} kept, {} written; {} prompts have a kept trace",
            self.samples,
            self.passed,
            100.0 * self.pass_rate(),
            self.kept,
            self.written,
            self.prompts_with_a_kept_trace
        ));
        for (v, n) in &self.rejected_by {
            line(format!("         rejected by {v}: {n}"));
        }
        if self.samples_without_logprobs > 0 {
            line(format!(
                "         {} samples came back without the log-probs asked for (the server sent none): they cannot be used for logit distillation",
                self.samples_without_logprobs
            ));
        }
        line(format!(
            "tokens:  {} prompt, {} completion (p50 {}, p90 {}, max {} per sample); {:.1} completion tokens/s",
            self.prompt_tokens,
            self.completion_tokens,
            self.completion_tokens_p50,
            self.completion_tokens_p90,
            self.completion_tokens_max,
            self.completion_tokens_per_s
        ));
        if let Some(c) = self.cost_usd {
            line(format!(
                "cost:    ${c:.4} ({} prompt tokens of them cached){}{}",
                self.cached_prompt_tokens,
                self.cost_per_kept().map_or(String::new(), |k| format!("; ${k:.6} per kept trace")),
                if self.unpriced_requests > 0 {
                    format!(
                        "; {} requests to endpoints without a price not counted",
                        self.unpriced_requests
                    )
                } else {
                    String::new()
                }
            ));
        }
        if let Some(h) = self.device_hours {
            line(format!(
                "compute: {h:.4} device-hours on the local engine{}",
                self.device_hours_per_kept()
                    .map_or(String::new(), |k| format!("; {k:.6} per kept trace"))
            ));
        }
        line(format!(
            "requests: {} ({} retries) to {}; {:.1}s",
            self.requests,
            self.retries,
            self.teachers.join(", "),
            self.elapsed_s
        ));
        for f in &self.prompts_failed {
            line(format!("failed {}: {}", f.prompt_id, f.error));
        }
        s
    }
}

/// Progress after each finished prompt.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub kept: u64,
    pub samples: u64,
    pub passed: u64,
    pub completion_tokens: u64,
    pub failed: u64,
}

pub(super) fn write_report(dir: &Path, r: &GenerateReport) -> Result<()> {
    let json = serde_json::to_vec_pretty(r).expect("report JSON");
    distill_data::fsutil::atomic_write(&dir.join("generate-report.json"), &json)?;
    distill_data::fsutil::atomic_write(&dir.join("generate-report.txt"), r.text().as_bytes())?;
    Ok(())
}
