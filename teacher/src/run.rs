//! `distill generate`: prompts → rejection-sampled, verified traces in a corpus.
//!
//! Per prompt, up to `samples` (N) completions are drawn and up to `keep` (K) that pass every
//! verifier are kept; with `first_pass_wins` sampling stops once K passed. Every sample is recorded
//! with its verdicts (rejected ones flagged) unless `keep_rejected = false`. A prompt's traces
//! reach the corpus together and are committed every `commit_every` prompts, so a killed run
//! resumes where it stopped and no prompt whose traces are committed is sent again.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distill_data::prompts::{FieldMap, ReadOptions, dataset_name, read_prompts};
use distill_data::think::{ThinkBlock, split_think};
use distill_data::{
    CorpusWriter, Prompt, SCHEMA_VERSION, Sampling, Teacher as TeacherInfo, Trace, Usage, Verdict,
    WriterOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::backend::local::LocalConfig;
use crate::backend::openai::OpenAiConfig;
use crate::backend::retry::RetryPolicy;
use crate::backend::{ChatRequest, Completion, SamplingSpec, Teacher};
use crate::decontam::{Decontaminator, Hit, dedup};
use crate::error::{Error, Result};
use crate::verify::{Sample, VerifyConfig, verify};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// OpenAI-compatible servers.
    Openai,
    /// distill's own engine.
    Local,
}

/// `[generate.backend]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub kind: BackendKind,
    /// For `openai`: one or more endpoints; requests are balanced by whichever has a free slot.
    #[serde(default)]
    pub endpoints: Vec<OpenAiConfig>,
    /// For `local`.
    #[serde(default)]
    pub local: Option<LocalConfig>,
    /// For `local`: `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "cpu")]
    pub device: String,
}

fn cpu() -> String {
    "cpu".into()
}

/// `[generate.retry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    pub base_ms: u64,
    pub cap_s: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { max_attempts: 6, base_ms: 500, cap_s: 30.0 }
    }
}

impl RetryConfig {
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            base: Duration::from_millis(self.base_ms),
            cap: Duration::from_secs_f64(self.cap_s),
        }
    }
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
        match self.backend.kind {
            BackendKind::Openai if self.backend.endpoints.is_empty() => {
                bad("backend kind openai needs at least one [[generate.backend.endpoints]]")
            }
            BackendKind::Local if self.backend.local.is_none() => {
                bad("backend kind local needs [generate.backend.local] with model_dir")
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

/// Prompts after reading, dedup, decontamination and the limit.
pub struct PromptSet {
    pub prompts: Vec<Prompt>,
    pub read: u64,
    pub bad_lines: Vec<(u64, String)>,
    pub duplicates: u64,
    pub contaminated: Vec<(String, Hit)>,
}

/// Read and clean the prompts. Fails early (before any request) on a missing or empty file.
pub fn load_prompts(cfg: &GenerateConfig) -> Result<PromptSet> {
    let dataset = cfg.dataset.clone().unwrap_or_else(|| dataset_name(&cfg.prompts));
    let opts = ReadOptions { skip_bad: cfg.skip_bad_lines, ..Default::default() };
    let (prompts, rep) = read_prompts(&cfg.prompts, &dataset, &cfg.fields, &opts)?;
    if prompts.is_empty() {
        return Err(Error::Config(format!(
            "{}: no prompts ({} lines, {} skipped as bad)",
            cfg.prompts.display(),
            rep.lines,
            rep.skipped.len()
        )));
    }
    let read = prompts.len() as u64 + rep.duplicates;
    let user_text = |p: &Prompt| crate::decontam::problem_text(&p.messages);
    let mut prompts = prompts;
    let mut duplicates = rep.duplicates;
    if cfg.dedup {
        let texts: Vec<String> = prompts.iter().map(user_text).collect();
        let (kept, dropped) = dedup(texts.iter().map(String::as_str));
        duplicates += dropped as u64;
        let keep: HashSet<usize> = kept.into_iter().collect();
        prompts = prompts
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keep.contains(i))
            .map(|(_, p)| p)
            .collect();
    }
    let mut contaminated = Vec::new();
    if !cfg.decontaminate_against.is_empty() {
        let d = Decontaminator::from_files(&cfg.decontaminate_against, cfg.decontaminate_ngram)?;
        prompts.retain(|p| match d.check(&user_text(p)) {
            Some(hit) => {
                contaminated.push((p.id.clone(), hit));
                false
            }
            None => true,
        });
    }
    if let Some(l) = cfg.limit {
        prompts.truncate(l);
    }
    Ok(PromptSet { prompts, read, bad_lines: rep.skipped, duplicates, contaminated })
}

/// What a run did. Written as `generate-report.json` and `.txt` in the output corpus.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GenerateReport {
    pub prompts_file: PathBuf,
    pub prompts_read: u64,
    pub bad_lines: u64,
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
        line(format!(
            "tokens:  {} prompt, {} completion (p50 {}, p90 {}, max {} per sample); {:.1} completion tokens/s",
            self.prompt_tokens,
            self.completion_tokens,
            self.completion_tokens_p50,
            self.completion_tokens_p90,
            self.completion_tokens_max,
            self.completion_tokens_per_s
        ));
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

const JOURNAL: &str = "generate.done";

/// Prompt ids finished earlier: those with committed traces, plus the journal of prompts that
/// finished with nothing written (all samples rejected and `keep_rejected = false`).
fn done_prompts(writer: &CorpusWriter) -> HashSet<String> {
    let mut done: HashSet<String> = writer
        .committed_ids()
        .iter()
        .filter_map(|id| id.rsplit_once('#').map(|(p, _)| p.to_string()))
        .collect();
    if let Ok(text) = std::fs::read_to_string(writer.dir().join(JOURNAL)) {
        done.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
    }
    done
}

struct Job {
    prompt: usize,
    first_sample: u32,
    n: u32,
    seed: u64,
}

struct Reply {
    job: Job,
    result: std::result::Result<Completion, crate::error::BackendError>,
    tries: u32,
    teacher: usize,
}

#[derive(Default)]
struct PromptState {
    samples: Vec<(u32, Trace, bool)>,
    requested: u32,
    outstanding: u32,
    failed: Option<String>,
}

fn mix(a: u64, b: &str, c: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ a;
    for byte in b.bytes().chain(c.to_le_bytes()) {
        h ^= byte as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h >> 1
}

/// Run the teacher stage. `teachers` are built by the caller (it picks devices for local ones).
pub fn generate(
    cfg: &GenerateConfig,
    set: PromptSet,
    teachers: Vec<Arc<dyn Teacher>>,
    provenance: serde_json::Value,
    mut progress: impl FnMut(&Progress),
) -> Result<GenerateReport> {
    cfg.validate()?;
    let t0 = Instant::now();
    let mut writer =
        CorpusWriter::open(&cfg.output, WriterOptions { provenance, ..Default::default() })?;
    let done = done_prompts(&writer);
    let prompts = Arc::new(set.prompts);
    let todo: Vec<usize> = (0..prompts.len()).filter(|&i| !done.contains(&prompts[i].id)).collect();
    let mut report = GenerateReport {
        prompts_file: cfg.prompts.clone(),
        prompts_read: set.read,
        bad_lines: set.bad_lines.len() as u64,
        duplicates_dropped: set.duplicates,
        contaminated_dropped: set
            .contaminated
            .iter()
            .map(|(id, h)| crate::decontam::Contaminated::new(id, id, h.clone()))
            .collect(),
        prompts_selected: prompts.len() as u64,
        already_done: (prompts.len() - todo.len()) as u64,
        teachers: teachers.iter().map(|t| t.describe()).collect(),
        ..Default::default()
    };
    let max_n = cfg.backend.endpoints.iter().map(|e| e.max_n).min().unwrap_or(u32::MAX).max(1);
    let base_seed = cfg.sampling.seed.unwrap_or(0);

    // Work queue shared by every worker of every teacher.
    let queue: Arc<Mutex<VecDeque<Job>>> = Arc::new(Mutex::new(VecDeque::new()));
    let mut states: Vec<PromptState> = (0..prompts.len()).map(|_| PromptState::default()).collect();
    let enqueue = |states: &mut Vec<PromptState>, q: &Mutex<VecDeque<Job>>, p: usize, want: u32| {
        let st = &mut states[p];
        let mut left = want;
        let mut jobs = q.lock().unwrap();
        while left > 0 {
            let n = left.min(max_n);
            let first = st.requested;
            jobs.push_back(Job {
                prompt: p,
                first_sample: first,
                n,
                seed: mix(base_seed, &prompts[p].id, first as u64),
            });
            st.requested += n;
            st.outstanding += 1;
            left -= n;
        }
    };
    let first_round = if cfg.first_pass_wins { cfg.keep } else { cfg.samples };
    for &p in &todo {
        enqueue(&mut states, &queue, p, first_round);
    }

    let (tx, rx) = mpsc::channel::<Reply>();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let policy = cfg.retry.policy();
    let mut handles = Vec::new();
    for (ti, teacher) in teachers.iter().enumerate() {
        for w in 0..teacher.concurrency() {
            let (teacher, queue, tx, stop, prompts, policy) = (
                teacher.clone(),
                queue.clone(),
                tx.clone(),
                stop.clone(),
                prompts.clone(),
                policy.clone(),
            );
            let (sampling, logprobs) = (cfg.sampling.clone(), cfg.logprobs);
            handles.push(std::thread::spawn(move || {
                loop {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let jobs: Vec<Job> = {
                        let mut q = queue.lock().unwrap();
                        let k = teacher.batch_size().min(q.len());
                        q.drain(..k).collect()
                    };
                    if jobs.is_empty() {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    let reqs: Vec<ChatRequest> = jobs
                        .iter()
                        .map(|j| ChatRequest {
                            messages: prompts[j.prompt].messages.clone(),
                            n: j.n,
                            sampling: sampling.clone(),
                            seed: Some(j.seed),
                            logprobs,
                        })
                        .collect();
                    if reqs.len() == 1 {
                        let (res, attempts) = policy
                            .run(reqs[0].seed.unwrap_or(0) ^ (w as u64) << 32, || {
                                teacher.complete(&reqs[0])
                            });
                        let job = jobs.into_iter().next().unwrap();
                        if tx
                            .send(Reply { job, result: res, tries: attempts.tries, teacher: ti })
                            .is_err()
                        {
                            return;
                        }
                    } else {
                        let results = teacher.complete_many(&reqs);
                        for (job, res) in jobs.into_iter().zip(results) {
                            if tx.send(Reply { job, result: res, tries: 1, teacher: ti }).is_err() {
                                return;
                            }
                        }
                    }
                }
            }));
        }
    }
    drop(tx);

    let mut remaining = todo.len();
    let mut since_commit: Vec<String> = Vec::new();
    let mut empty_done: Vec<String> = Vec::new();
    let mut last_commit = Instant::now();
    let mut tokens: Vec<u64> = Vec::new();
    let mut prog = Progress { total: todo.len() as u64, ..Default::default() };
    let journal = cfg.output.join(JOURNAL);
    let result: Result<()> = (|| {
        while remaining > 0 {
            let Ok(reply) = rx.recv() else { break };
            report.requests += 1;
            report.retries += reply.tries.saturating_sub(1) as u64;
            let p = reply.job.prompt;
            let st = &mut states[p];
            st.outstanding -= 1;
            match reply.result {
                Err(e) => st.failed = Some(e.to_string()),
                Ok(c) => {
                    report.prompt_tokens += c.prompt_tokens;
                    report.completion_tokens += c.completion_tokens;
                    let teacher = &teachers[reply.teacher];
                    let n = c.choices.len().max(1) as u64;
                    for (k, choice) in c.choices.into_iter().enumerate() {
                        let sample = reply.job.first_sample + k as u32;
                        let prompt = &prompts[p];
                        let (reasoning, answer, think) = match &choice.reasoning {
                            Some(r) => {
                                let (_, a, _) = split_think(&choice.content);
                                let a = if choice.content.contains("</think>") {
                                    a
                                } else {
                                    choice.content.trim().to_string()
                                };
                                (
                                    r.trim().to_string(),
                                    a,
                                    if r.trim().is_empty() {
                                        ThinkBlock::Absent
                                    } else {
                                        ThinkBlock::Closed
                                    },
                                )
                            }
                            None => split_think(&choice.content),
                        };
                        let verdicts = verify(
                            &Sample {
                                reasoning: &reasoning,
                                answer: &answer,
                                think,
                                finish_reason: &choice.finish_reason,
                                reference: prompt.reference.as_deref(),
                            },
                            &cfg.verify,
                        );
                        let completion_tokens =
                            choice.completion_tokens.unwrap_or(c.completion_tokens / n);
                        tokens.push(completion_tokens);
                        let mut metadata = serde_json::Map::new();
                        metadata.insert("endpoint".into(), json!(teacher.describe()));
                        metadata.insert("attempts".into(), json!(reply.tries));
                        if choice.completion_tokens.is_none() && n > 1 {
                            metadata.insert("usage_estimated".into(), json!(true));
                        }
                        let passed = verdicts.iter().all(|v| v.passed);
                        let trace = Trace {
                            schema: SCHEMA_VERSION,
                            id: Trace::make_id(&prompt.id, sample),
                            prompt_id: prompt.id.clone(),
                            sample,
                            source: prompt.source.clone(),
                            messages: prompt.messages.clone(),
                            reasoning,
                            answer,
                            finish_reason: choice.finish_reason,
                            teacher: TeacherInfo {
                                model: c.model.clone(),
                                endpoint: teacher.kind(),
                                sampling: Sampling {
                                    temperature: Some(cfg.sampling.temperature),
                                    top_p: Some(cfg.sampling.top_p),
                                    top_k: cfg.sampling.top_k,
                                    max_tokens: Some(cfg.sampling.max_tokens),
                                    seed: Some(reply.job.seed),
                                },
                            },
                            usage: Usage { prompt_tokens: c.prompt_tokens, completion_tokens },
                            verdicts,
                            reference: prompt.reference.clone(),
                            logprobs: choice.logprobs,
                            metadata,
                        };
                        st.samples.push((sample, trace, passed));
                    }
                }
            }
            if st.outstanding > 0 {
                continue;
            }
            let kept_so_far = st.samples.iter().filter(|s| s.2).count() as u32;
            if st.failed.is_none()
                && cfg.first_pass_wins
                && kept_so_far < cfg.keep
                && st.requested < cfg.samples
            {
                let want = (cfg.keep - kept_so_far).min(cfg.samples - st.requested);
                enqueue(&mut states, &queue, p, want);
                continue;
            }
            // The prompt is finished.
            remaining -= 1;
            let st = std::mem::take(&mut states[p]);
            let id = prompts[p].id.clone();
            if let Some(e) = st.failed {
                report.prompts_failed.push(FailedPrompt { prompt_id: id, error: e });
                prog.failed += 1;
                progress(&prog);
                continue;
            }
            let mut samples = st.samples;
            samples.sort_by_key(|s| s.0);
            let mut kept = 0u32;
            let mut wrote = 0;
            for (_, mut trace, passed) in samples {
                report.samples += 1;
                if passed {
                    report.passed += 1;
                }
                let keep_it = passed && kept < cfg.keep;
                if keep_it {
                    kept += 1;
                } else if passed {
                    trace.verdicts.push(Verdict {
                        verifier: "rejection".into(),
                        passed: false,
                        extracted: None,
                        reason: Some(format!("{} passing samples already kept", cfg.keep)),
                    });
                }
                if let Some(f) = trace.first_failure() {
                    *report.rejected_by.entry(f.verifier.clone()).or_default() += 1;
                }
                if keep_it || cfg.keep_rejected {
                    writer.append(trace)?;
                    wrote += 1;
                }
            }
            report.kept += kept as u64;
            report.written += wrote;
            report.prompts_with_a_kept_trace += (kept > 0) as u64;
            report.prompts_done += 1;
            if wrote == 0 {
                empty_done.push(id.clone());
            }
            since_commit.push(id);
            if since_commit.len() >= cfg.commit_every.max(1)
                || last_commit.elapsed() > Duration::from_secs(15)
            {
                commit(&mut writer, &journal, &mut empty_done)?;
                since_commit.clear();
                last_commit = Instant::now();
            }
            prog.done = report.prompts_done;
            prog.kept = report.kept;
            prog.samples = report.samples;
            prog.passed = report.passed;
            prog.completion_tokens = report.completion_tokens;
            progress(&prog);
        }
        commit(&mut writer, &journal, &mut empty_done)
    })();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    queue.lock().unwrap().clear();
    drop(rx);
    for h in handles {
        let _ = h.join();
    }
    result?;

    tokens.sort_unstable();
    let q =
        |p: f64| tokens.get(((tokens.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or(0);
    report.completion_tokens_p50 = q(0.5);
    report.completion_tokens_p90 = q(0.9);
    report.completion_tokens_max = tokens.last().copied().unwrap_or(0);
    report.elapsed_s = t0.elapsed().as_secs_f64();
    report.completion_tokens_per_s = report.completion_tokens as f64 / report.elapsed_s.max(1e-9);
    write_report(&cfg.output, &report)?;
    Ok(report)
}

/// Commit the corpus, then record prompts that finished with nothing written.
fn commit(writer: &mut CorpusWriter, journal: &Path, empty_done: &mut Vec<String>) -> Result<()> {
    writer.commit()?;
    if !empty_done.is_empty() {
        let io = |e| Error::Io { path: journal.to_path_buf(), source: e };
        let mut f =
            std::fs::OpenOptions::new().create(true).append(true).open(journal).map_err(io)?;
        for id in empty_done.drain(..) {
            writeln!(f, "{id}").map_err(io)?;
        }
        f.sync_all().map_err(io)?;
    }
    Ok(())
}

fn write_report(dir: &Path, r: &GenerateReport) -> Result<()> {
    let json = serde_json::to_vec_pretty(r).expect("report JSON");
    distill_data::fsutil::atomic_write(&dir.join("generate-report.json"), &json)?;
    distill_data::fsutil::atomic_write(&dir.join("generate-report.txt"), r.text().as_bytes())?;
    Ok(())
}
