//! `distill bench verify --table FILE.jsonl …`: distill's math verdicts over tables of cases —
//! math-verify's own suite (`teacher/tests/data/math-verify-cases.jsonl`) and distill's
//! (`teacher/tests/data/math-cases.jsonl`) — with the agreement and the time per verdict.
//! `scripts/reference/math_verify_table.py` measures math-verify on the same files.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use distill_teacher::verify::math::{MathConfig, equivalent, judge, verify_answer};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    /// A JSONL table: `gold`, `pred`, `expected`; optional `id`, `settings.match_types`,
    /// `completion` (judge `pred` as a whole completion) and `extracted` (both are answers
    /// already: compare them without extraction). Otherwise both sides go through extraction.
    #[arg(long = "table", required = true)]
    tables: Vec<PathBuf>,
    /// Passes over each table (the time is the mean over all of them).
    #[arg(long, default_value_t = 20)]
    repeat: usize,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The extraction targets a case names (`match_types` of math-verify's suite).
fn config(c: &Value) -> MathConfig {
    match c["settings"].get("match_types").and_then(Value::as_array) {
        Some(types) => MathConfig::with_match_types(
            &types.iter().filter_map(Value::as_str).collect::<Vec<_>>(),
        ),
        None => MathConfig::default(),
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    for path in &a.tables {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cases: Vec<Value> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut agree = 0;
        let mut times = Vec::with_capacity(cases.len());
        for c in &cases {
            let field = |k: &str| {
                c[k].as_str().with_context(|| format!("{}: a case without {k}", path.display()))
            };
            let (gold, pred) = (field("gold")?, field("pred")?);
            let cfg = config(c);
            let t = Instant::now();
            let mut ok = false;
            for _ in 0..a.repeat.max(1) {
                ok = if c["completion"] == true {
                    judge(gold, "", pred, &cfg).1
                } else if c["extracted"] == true {
                    equivalent(gold, pred)
                } else {
                    verify_answer(gold, pred, &cfg).2
                };
            }
            times.push(t.elapsed().as_secs_f64() / a.repeat.max(1) as f64);
            if Some(ok) == c["expected"].as_bool() {
                agree += 1;
            }
        }
        let n = cases.len().max(1) as f64;
        let mean = times.iter().sum::<f64>() / n;
        let max = times.iter().cloned().fold(0.0, f64::max);
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        println!(
            "{}: {agree}/{} agree with the expected verdicts; per verdict mean {:.1} µs, median {:.1} µs, max {:.2} ms",
            path.display(),
            cases.len(),
            mean * 1e6,
            median * 1e6,
            max * 1e3
        );
        if let Some(out) = &a.json {
            let r = json!({
                "table": path.display().to_string(), "cases": cases.len(), "agree": agree,
                "mean_s": mean, "median_s": median, "max_s": max, "repeat": a.repeat,
                "machine": super::machine(),
            });
            super::append_json_line(out, &r)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
