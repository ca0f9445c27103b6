//! `distill eval`: benchmark a model (local engine or any OpenAI-compatible endpoint) on JSONL
//! problem sets with R1's protocol — k samples per problem at temperature 0.6, top-p 0.95 —
//! scored by the same verifier that did the rejection sampling. pass@1 is the mean correctness
//! over the k samples; cons@k is the correctness of the majority answer (answers grouped by
//! equivalence, not spelling). Per-problem results go to `<output>/<bench>.jsonl` as they finish,
//! so a killed eval resumes where it stopped; `<output>/summary.json` has the scores.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use distill_data::prompts::{FieldMap, ReadOptions, read_prompts};
use distill_data::think::split_think;
use distill_data::{FinishReason, Prompt};
use serde::{Deserialize, Serialize};

use crate::backend::pool::dispatch;
use crate::backend::{ChatRequest, SamplingSpec, Teacher};
use crate::error::{Error, Result};
use crate::run::{BackendConfig, RetryConfig};
use crate::verify::math::{MathConfig, equivalent, judge};

/// One benchmark file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchSpec {
    pub name: String,
    pub file: PathBuf,
    /// Field mapping; default: `problem`/`answer`, or GSM8K's `question`/`answer` when present.
    #[serde(default)]
    pub fields: Option<FieldMap>,
    /// Only the first N problems.
    #[serde(default)]
    pub limit: Option<usize>,
}

impl BenchSpec {
    /// The name becomes `OUT/NAME.jsonl`: one plain file-name part (letters, digits, `.`, `_`,
    /// `-`; not starting with `.`), so no benchmark writes outside the eval's output folder.
    pub fn check_name(name: &str) -> Result<()> {
        let ok = !name.is_empty()
            && name.len() <= 100
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if ok {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "benchmark name {name:?}: use letters, digits, '.', '_' and '-' only (it names NAME.jsonl in the output folder)"
            )))
        }
    }
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    pub benchmarks: Vec<BenchSpec>,
    /// Samples per problem (R1 reports pass@1 over k = 4 … 64).
    #[serde(default = "four")]
    pub k: u32,
    /// R1's defaults: temperature 0.6, top-p 0.95.
    #[serde(default)]
    pub sampling: SamplingSpec,
    pub backend: BackendConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    pub output: PathBuf,
    /// `[eval.math]`: how answers are extracted and compared. Unset: the recipe's
    /// `[generate.verify.math]`, so eval judges as rejection sampling did; else the defaults.
    #[serde(default)]
    pub math: Option<MathConfig>,
}

/// Samples per problem when a recipe or the command line does not say.
pub const DEFAULT_K: u32 = 4;

fn four() -> u32 {
    DEFAULT_K
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    pub extracted: Option<String>,
    pub correct: bool,
    pub finish_reason: String,
    pub completion_tokens: u64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemResult {
    pub id: String,
    pub row: u64,
    pub reference: String,
    pub samples: Vec<SampleResult>,
    pub pass_at_1: f64,
    pub majority_answer: Option<String>,
    pub cons_correct: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchSummary {
    pub name: String,
    pub problems: u64,
    pub k: u32,
    /// Mean over problems of the mean correctness of their k samples.
    pub pass_at_1: f64,
    /// Share of problems whose majority answer is correct.
    pub cons_at_k: f64,
    pub mean_completion_tokens: f64,
    pub truncated_share: f64,
    pub failed_requests: u64,
}

/// The majority answer of a problem's samples, by equivalence class; ties go to the earliest.
pub fn majority(answers: &[Option<String>]) -> Option<String> {
    let mut classes: Vec<(String, usize)> = Vec::new();
    for a in answers.iter().flatten() {
        match classes.iter_mut().find(|(rep, _)| equivalent(rep, a)) {
            Some(c) => c.1 += 1,
            None => classes.push((a.clone(), 1)),
        }
    }
    let best = classes.iter().map(|c| c.1).max()?;
    classes.into_iter().find(|c| c.1 == best).map(|c| c.0)
}

/// Score one problem's completions.
pub fn score(
    p: &Prompt,
    texts: &[(String, FinishReason, u64)],
    math: &MathConfig,
) -> ProblemResult {
    let gold = p.reference.clone().unwrap_or_default();
    let samples: Vec<SampleResult> = texts
        .iter()
        .map(|(text, finish, tokens)| {
            let (reasoning, answer, _) = split_think(text);
            let (extracted, correct) = judge(&gold, &reasoning, &answer, math);
            SampleResult {
                extracted,
                correct,
                finish_reason: finish.as_str().to_string(),
                completion_tokens: *tokens,
                text: text.clone(),
            }
        })
        .collect();
    let pass = samples.iter().filter(|s| s.correct).count() as f64 / samples.len().max(1) as f64;
    let maj = majority(&samples.iter().map(|s| s.extracted.clone()).collect::<Vec<_>>());
    let gold_ans = crate::verify::math::gold_answer(&gold, math);
    let cons = match (maj.as_deref(), gold_ans.as_deref()) {
        (Some(m), Some(g)) => equivalent(g, m),
        _ => false,
    };
    ProblemResult {
        id: p.id.clone(),
        row: p.source.row,
        reference: gold,
        samples,
        pass_at_1: pass,
        majority_answer: maj,
        cons_correct: cons,
    }
}

/// The field map a benchmark file needs.
pub fn fields_for(spec: &BenchSpec) -> Result<FieldMap> {
    if let Some(f) = &spec.fields {
        return Ok(f.clone());
    }
    let first = std::fs::read_to_string(&spec.file)
        .map_err(|e| Error::Io { path: spec.file.clone(), err: e })?;
    let line = first.lines().find(|l| !l.trim().is_empty()).unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| Error::Config(format!("{}:1: {e}", spec.file.display())))?;
    Ok(if v.get("question").is_some() && v["answer"].as_str().is_some_and(|a| a.contains("####")) {
        FieldMap {
            template: Some(
                "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{}."
                    .into(),
            ),
            ..FieldMap::gsm8k()
        }
    } else if v.get("problem").is_some() {
        FieldMap::math()
    } else {
        return Err(Error::Config(format!(
            "{}: cannot tell the fields (no problem/answer or question/answer); set [[eval.benchmarks]] fields",
            spec.file.display()
        )));
    })
}

/// Read the per-problem results already written (a torn last line from a crash is dropped).
fn done_results(path: &Path) -> Result<Vec<ProblemResult>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(vec![]) };
    let good: Vec<ProblemResult> =
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let body: String =
        good.iter().map(|r| serde_json::to_string(r).expect("json") + "\n").collect();
    distill_data::fsutil::atomic_write(path, body.as_bytes())?;
    Ok(good)
}

/// Run every benchmark; returns the summaries (also written to `summary.json`).
pub fn evaluate(
    cfg: &EvalConfig,
    teachers: &[Arc<dyn Teacher>],
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<Vec<BenchSummary>> {
    if cfg.k == 0 || cfg.benchmarks.is_empty() {
        return Err(Error::Config("[eval] needs k ≥ 1 and at least one benchmark".into()));
    }
    for spec in &cfg.benchmarks {
        BenchSpec::check_name(&spec.name)?;
    }
    std::fs::create_dir_all(&cfg.output)
        .map_err(|e| Error::Io { path: cfg.output.clone(), err: e })?;
    let policy = cfg.retry.policy();
    let math = cfg.math.clone().unwrap_or_default();
    let mut summaries = Vec::new();
    for spec in &cfg.benchmarks {
        let fields = fields_for(spec)?;
        let (mut problems, _) =
            read_prompts(&spec.file, &spec.name, &fields, &ReadOptions::default())?;
        if let Some(l) = spec.limit {
            problems.truncate(l);
        }
        if problems.is_empty() {
            return Err(Error::Config(format!("{}: no problems", spec.file.display())));
        }
        let out_path = cfg.output.join(format!("{}.jsonl", spec.name));
        let mut results = done_results(&out_path)?;
        let done: HashSet<String> = results.iter().map(|r| r.id.clone()).collect();
        let todo: Vec<&Prompt> = problems.iter().filter(|p| !done.contains(&p.id)).collect();
        let reqs: Vec<ChatRequest> = todo
            .iter()
            .map(|p| ChatRequest {
                messages: p.messages.clone(),
                n: cfg.k,
                sampling: cfg.sampling.clone(),
                seed: cfg.sampling.seed.map(|s| s ^ p.source.row),
                logprobs: None,
            })
            .collect();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .map_err(|e| Error::Io { path: out_path.clone(), err: e })?;
        let mut failed = 0u64;
        let mut fatal: Option<crate::error::BackendError> = None;
        let total = problems.len();
        let mut finished = results.len();
        let mut io_err = None;
        dispatch(teachers, reqs, &policy, |i, res| {
            finished += 1;
            progress(&spec.name, finished, total);
            match res {
                Err(e) => {
                    failed += 1;
                    // A panicking teacher: the scores would silently leave its problems out
                    // (and with every request failed, "problems 0" exited 0).
                    if matches!(e, crate::error::BackendError::Panicked(_)) {
                        fatal.get_or_insert(e);
                    }
                }
                Ok(c) => {
                    let n = c.choices.len().max(1) as u64;
                    let texts: Vec<(String, FinishReason, u64)> = c
                        .choices
                        .iter()
                        .map(|ch| {
                            let text = match &ch.reasoning {
                                Some(r) => format!("<think>\n{r}\n</think>\n\n{}", ch.content),
                                None => ch.content.clone(),
                            };
                            (
                                text,
                                ch.finish_reason.clone(),
                                ch.completion_tokens.unwrap_or(c.completion_tokens / n),
                            )
                        })
                        .collect();
                    let r = score(todo[i], &texts, &math);
                    let line = serde_json::to_string(&r).expect("json") + "\n";
                    if let Err(e) = file.write_all(line.as_bytes()).and_then(|_| file.sync_data()) {
                        io_err = Some(e);
                    }
                    results.push(r);
                }
            }
        });
        if let Some(e) = io_err {
            return Err(Error::Io { path: out_path, err: e });
        }
        if let Some(e) = fatal {
            return Err(Error::Config(format!(
                "benchmark {}: a request failed ({failed} failed in all): {e}",
                spec.name
            )));
        }
        let samples: Vec<&SampleResult> = results.iter().flat_map(|r| r.samples.iter()).collect();
        let m = results.len().max(1) as f64;
        summaries.push(BenchSummary {
            name: spec.name.clone(),
            problems: results.len() as u64,
            k: cfg.k,
            pass_at_1: results.iter().map(|r| r.pass_at_1).sum::<f64>() / m,
            cons_at_k: results.iter().filter(|r| r.cons_correct).count() as f64 / m,
            mean_completion_tokens: samples.iter().map(|s| s.completion_tokens as f64).sum::<f64>()
                / samples.len().max(1) as f64,
            truncated_share: samples.iter().filter(|s| s.finish_reason == "length").count() as f64
                / samples.len().max(1) as f64,
            failed_requests: failed,
        });
    }
    let summary = serde_json::json!({
        "benchmarks": summaries,
        "k": cfg.k,
        "sampling": cfg.sampling,
        "teachers": teachers.iter().map(|t| t.describe()).collect::<Vec<_>>(),
    });
    distill_data::fsutil::atomic_write(
        &cfg.output.join("summary.json"),
        &serde_json::to_vec_pretty(&summary).expect("json"),
    )?;
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_benchmark_name_never_leaves_the_output_folder() {
        for ok in ["aime24", "math500", "gsm8k.test", "AMC_23-v2"] {
            BenchSpec::check_name(ok).unwrap();
        }
        for bad in ["", "../x", "a/b", "/tmp/x", ".hidden", "a b", "..", "a\0b", &"x".repeat(101)] {
            let e = BenchSpec::check_name(bad).unwrap_err().to_string();
            assert!(e.contains("benchmark name"), "{bad:?}: {e}");
        }
    }
}
