//! The eval stage: pass@1 and cons@k on the benchmarks.

use anyhow::bail;
use distill_teacher::eval::{BenchSummary, EvalConfig, evaluate};

/// Check the inputs, build the backend, evaluate.
pub fn run_eval(cfg: &EvalConfig) -> anyhow::Result<Vec<BenchSummary>> {
    for b in &cfg.benchmarks {
        if !b.file.exists() {
            bail!("benchmark {}: {} does not exist", b.name, b.file.display());
        }
    }
    let teachers = distill_teacher::backend::build(&cfg.backend)?;
    let pb = crate::progress::bar(Some(1), "problems");
    let out = evaluate(cfg, &teachers, |name, done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
        pb.set_message(name.to_string());
    })?;
    pb.finish_and_clear();
    Ok(out)
}

pub fn print_table(s: &[BenchSummary]) {
    println!(
        "{:<16} {:>8} {:>4} {:>8} {:>8} {:>10} {:>10}",
        "benchmark", "problems", "k", "pass@1", "cons@k", "tokens", "truncated"
    );
    for b in s {
        println!(
            "{:<16} {:>8} {:>4} {:>7.1}% {:>7.1}% {:>10.0} {:>9.1}%",
            b.name,
            b.problems,
            b.k,
            100.0 * b.pass_at_1,
            100.0 * b.cons_at_k,
            b.mean_completion_tokens,
            100.0 * b.truncated_share
        );
    }
}
