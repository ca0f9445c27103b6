//! The generate stage: the teacher samples, verifies and writes the corpus.

use std::time::Instant;

use distill_teacher::run::{self, GenerateConfig};

/// Check the recipe and its inputs, build the teachers, run. Everything that can fail fast
/// (config, prompt file, endpoints, model directory) fails before the first request.
pub fn generate(
    cfg: &GenerateConfig,
    provenance: serde_json::Value,
) -> anyhow::Result<run::GenerateReport> {
    cfg.validate()?;
    let set = run::load_prompts(cfg)?;
    let teachers = distill_teacher::backend::build(&cfg.backend)?;
    let pb = crate::progress::bar(Some(set.prompts.len() as u64), "prompts");
    let t0 = Instant::now();
    let report = run::generate(cfg, set, teachers, provenance, |p| {
        pb.set_length(p.total);
        pb.set_position(p.done + p.failed);
        let rate = if p.samples > 0 { 100.0 * p.passed as f64 / p.samples as f64 } else { 0.0 };
        let tps = p.completion_tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        pb.set_message(format!(
            "kept {} | pass {rate:.0}% | {tps:.0} tok/s{}",
            p.kept,
            if p.failed > 0 { format!(" | {} failed", p.failed) } else { String::new() }
        ));
    })?;
    pb.finish_and_clear();
    Ok(report)
}
