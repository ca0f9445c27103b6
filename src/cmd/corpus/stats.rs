use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use distill_data::Corpus;
use distill_data::corpus::stats::{Histogram, stats};

#[derive(clap::Args)]
pub struct Args {
    /// Corpus directory.
    dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Stop at the first damaged frame instead of skipping damage (and listing it).
    #[arg(long)]
    strict: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let c = Corpus::open_with(&a.dir, !a.strict)
        .with_context(|| format!("opening corpus {}", a.dir.display()))?;
    let s = stats(&c)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let pct = |n: u64| if s.records == 0 { 0.0 } else { 100.0 * n as f64 / s.records as f64 };
    println!("corpus      {}", a.dir.display());
    println!("records     {} in {} shards, {} frames", s.records, s.shards, s.frames);
    println!(
        "bytes       {:.1} MB raw JSONL, {:.1} MB on disk (ratio {:.2}x)",
        s.raw_bytes as f64 / 1e6,
        s.compressed_bytes as f64 / 1e6,
        s.compression_ratio
    );
    println!("passed      {} ({:.1}%), unverified {}", s.passed, pct(s.passed), s.unverified);
    for (v, (p, n)) in &s.verifiers {
        println!(
            "  verifier {v:<24} {p}/{n} passed ({:.1}%)",
            100.0 * *p as f64 / (*n).max(1) as f64
        );
    }
    for (v, n) in &s.rejected_by {
        println!("  rejected by {v:<21} {n}");
    }
    let fr: Vec<String> = s.finish_reasons.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!("finish      {}", fr.join(" "));
    let t: Vec<String> = s.teachers.iter().map(|(k, n)| format!("{k} ({n})")).collect();
    println!("teachers    {}", t.join(", "));
    hist("completion tokens", &s.completion_tokens);
    hist("reasoning chars", &s.reasoning_chars);
    hist("answer chars", &s.answer_chars);
    super::report_damage(&c);
    Ok(ExitCode::SUCCESS)
}

fn hist(name: &str, h: &Histogram) {
    println!(
        "{name}: min {} p50 {} p90 {} p99 {} max {} mean {:.0}",
        h.min, h.p50, h.p90, h.p99, h.max, h.mean
    );
    let top = h.buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1);
    for (lo, n) in &h.buckets {
        let hi = if *lo == 0 { 1 } else { lo * 2 };
        let bar = "#".repeat(((40 * n) as f64 / top as f64).ceil() as usize);
        println!("  [{lo:>8}, {hi:>8}) {n:>8} {bar}");
    }
}
