//! `distill generate`: prompts → rejection-sampled, verified traces in a corpus.
//!
//! Per prompt, up to `samples` (N) completions are drawn and up to `keep` (K) that pass every
//! verifier are kept; with `first_pass_wins` sampling stops once K passed. Every sample is recorded
//! with its verdicts (rejected ones flagged) unless `keep_rejected = false`. A prompt's traces
//! reach the corpus together and are committed every `commit_every` prompts, so a killed run
//! resumes where it stopped and no prompt whose traces are committed is sent again.
//!
//! The stage, in order: [`prompts`] (read, dedup, decontaminate) → requests through the one
//! scheduler ([`crate::backend::pool`]) → [`trace`] (choice → verified trace) → [`select`]
//! (keep / reject) → the corpus and the [`journal`] → the [`report`].

mod config;
mod journal;
mod prompts;
mod report;
mod select;
mod trace;

use std::sync::Arc;
use std::time::{Duration, Instant};

use distill_data::{CorpusWriter, WriterOptions};

pub use self::config::GenerateConfig;
pub use self::prompts::{PromptSet, load_prompts};
pub use self::report::{FailedPrompt, GenerateReport, Progress, SkippedLine};
pub use crate::backend::config::{BackendConfig, RetryConfig};
use crate::backend::pool::Pool;
use crate::backend::{ChatRequest, Teacher};
use crate::error::Result;

/// A request for `n` samples of one prompt, starting at sample index `first_sample`.
struct Job {
    prompt: usize,
    first_sample: u32,
    seed: u64,
}

#[derive(Default)]
struct PromptState {
    samples: Vec<(u32, distill_data::Trace, bool)>,
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

/// Run the teacher stage. `teachers` are built by the caller ([`crate::backend::build`]).
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
    let done = journal::done_prompts(&writer);
    let prompts = set.prompts;
    let todo: Vec<usize> = (0..prompts.len()).filter(|&i| !done.contains(&prompts[i].id)).collect();
    let mut report = GenerateReport {
        prompts_file: cfg.prompts.clone(),
        prompts_read: set.read,
        bad_lines: set.bad_lines.len() as u64,
        skipped_lines: set
            .bad_lines
            .iter()
            .take(10_000)
            .map(|(line, error)| report::SkippedLine { line: *line, error: error.clone() })
            .collect(),
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
    let max_n = cfg.backend.endpoints().iter().map(|e| e.max_n).min().unwrap_or(u32::MAX).max(1);
    let base_seed = cfg.sampling.seed.unwrap_or(0);
    let pool: Pool<Job> = Pool::start(&teachers, &cfg.retry.policy());
    let mut states: Vec<PromptState> = (0..prompts.len()).map(|_| PromptState::default()).collect();
    // Ask for `want` more samples of prompt `p`, in requests of at most `max_n`.
    let enqueue = |states: &mut Vec<PromptState>, p: usize, want: u32| {
        let st = &mut states[p];
        let mut left = want;
        while left > 0 {
            let n = left.min(max_n);
            let first = st.requested;
            let seed = mix(base_seed, &prompts[p].id, first as u64);
            let req = ChatRequest {
                messages: prompts[p].messages.clone(),
                n,
                sampling: cfg.sampling.clone(),
                seed: Some(seed),
                logprobs: cfg.logprobs,
            };
            pool.submit(Job { prompt: p, first_sample: first, seed }, req);
            st.requested += n;
            st.outstanding += 1;
            left -= n;
        }
    };
    let first_round = if cfg.first_pass_wins { cfg.keep } else { cfg.samples };
    for &p in &todo {
        enqueue(&mut states, p, first_round);
    }

    let mut remaining = todo.len();
    let mut since_commit = 0usize;
    let mut empty_done: Vec<String> = Vec::new();
    let mut last_commit = Instant::now();
    let mut tokens: Vec<u64> = Vec::new();
    let mut prog = Progress { total: todo.len() as u64, ..Default::default() };
    let journal = cfg.output.join(journal::JOURNAL);
    let result: Result<()> = (|| {
        while remaining > 0 {
            let Some(reply) = pool.recv() else { break };
            report.requests += 1;
            report.retries += reply.tries.saturating_sub(1) as u64;
            let p = reply.tag.prompt;
            let st = &mut states[p];
            st.outstanding -= 1;
            match reply.result {
                Err(e) => st.failed = Some(distill_data::redact::redact(&e.to_string())),
                Ok(mut c) => {
                    report.prompt_tokens += c.prompt_tokens;
                    report.completion_tokens += c.completion_tokens;
                    report.cached_prompt_tokens += c.cached_prompt_tokens;
                    match c.cost_usd {
                        Some(usd) => *report.cost_usd.get_or_insert(0.0) += usd,
                        None => report.unpriced_requests += 1,
                    }
                    let teacher = &teachers[reply.teacher];
                    let choices = std::mem::take(&mut c.choices);
                    let n = choices.len().max(1);
                    let from = trace::Origin {
                        completion: &c,
                        choices: n,
                        teacher: teacher.as_ref(),
                        attempts: reply.tries,
                        seed: reply.tag.seed,
                    };
                    for (k, choice) in choices.into_iter().enumerate() {
                        if cfg.logprobs.is_some() && choice.logprobs.is_none() {
                            report.samples_without_logprobs += 1;
                        }
                        let sample = reply.tag.first_sample + k as u32;
                        let (t, passed) = trace::assemble(cfg, &prompts[p], sample, choice, &from);
                        tokens.push(t.usage.completion_tokens);
                        st.samples.push((sample, t, passed));
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
                enqueue(&mut states, p, want);
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
            let sel = select::select(st.samples, cfg.keep, cfg.keep_rejected);
            report.samples += sel.samples;
            report.passed += sel.passed;
            for (v, n) in sel.rejected_by {
                *report.rejected_by.entry(v).or_default() += n;
            }
            let wrote = sel.write.len() as u64;
            for t in sel.write {
                writer.append(t)?;
            }
            report.kept += sel.kept as u64;
            report.written += wrote;
            report.prompts_with_a_kept_trace += (sel.kept > 0) as u64;
            report.prompts_done += 1;
            if wrote == 0 {
                empty_done.push(id);
            }
            since_commit += 1;
            if since_commit >= cfg.commit_every.max(1)
                || last_commit.elapsed() > Duration::from_secs(15)
            {
                journal::commit(&mut writer, &journal, &mut empty_done)?;
                since_commit = 0;
                last_commit = Instant::now();
            }
            prog.done = report.prompts_done;
            prog.kept = report.kept;
            prog.samples = report.samples;
            prog.passed = report.passed;
            prog.completion_tokens = report.completion_tokens;
            progress(&prog);
        }
        journal::commit(&mut writer, &journal, &mut empty_done)
    })();
    pool.shutdown();
    result?;

    tokens.sort_unstable();
    let q =
        |p: f64| tokens.get(((tokens.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or(0);
    report.completion_tokens_p50 = q(0.5);
    report.completion_tokens_p90 = q(0.9);
    report.completion_tokens_max = tokens.last().copied().unwrap_or(0);
    report.elapsed_s = t0.elapsed().as_secs_f64();
    report.completion_tokens_per_s = report.completion_tokens as f64 / report.elapsed_s.max(1e-9);
    // The local engine runs on one device: its cost is the run's wall time on it.
    if cfg.backend.is_local() {
        report.device_hours = Some(report.elapsed_s / 3600.0);
        report.unpriced_requests = 0;
    }
    report::write_report(&cfg.output, &report)?;
    Ok(report)
}
