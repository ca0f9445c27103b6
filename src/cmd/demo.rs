//! `distill demo`: the corpus end to end on generated R1-like traces, offline, in seconds.
//! (The full pipeline quickstart — teacher, SFT, export, eval — replaces this as the README's
//! first command once the model stages land.)

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use distill_data::corpus::{stats::stats, verify};
use distill_data::{Corpus, CorpusWriter, WriterOptions, synth};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Output directory.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Prompts to generate traces for (4 samples each).
    #[arg(long, default_value_t = 500)]
    prompts: u64,
}

pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = a.out.join("corpus");
    println!(
        "1. writing {} synthetic R1-like traces to {} (resumes if interrupted)",
        a.prompts * 4,
        dir.display()
    );
    let t0 = Instant::now();
    let mut w = CorpusWriter::open(
        &dir,
        WriterOptions { provenance: crate::stages::provenance(), ..Default::default() },
    )?;
    let pb = crate::progress::bar(Some(a.prompts * 4), "traces");
    for t in synth::traces(1, a.prompts, 4) {
        pb.inc(1);
        if !w.contains(&t.id) {
            w.append(t)?;
        }
        if w.pending_records() >= 500 {
            w.commit()?;
        }
    }
    w.commit()?;
    drop(w);
    pb.finish_and_clear();
    println!("   done in {:.1}s", t0.elapsed().as_secs_f64());

    println!("2. verifying checksums, frames and manifest");
    let report = verify(&dir)?;
    println!(
        "   {} shards, {} frames, {} records, {} problems",
        report.shards,
        report.frames,
        report.records,
        report.problems.len()
    );
    anyhow::ensure!(report.ok(), "the demo corpus failed verification: {:?}", report.problems);

    let c = Corpus::open(&dir)?;
    let s = stats(&c)?;
    println!(
        "3. stats: {:.1} MB of JSONL stored in {:.1} MB ({:.1}x); {:.0}% passed the (synthetic) verifier",
        s.raw_bytes as f64 / 1e6,
        s.compressed_bytes as f64 / 1e6,
        s.compression_ratio,
        100.0 * s.passed as f64 / s.records.max(1) as f64
    );

    let id = c.ids().nth((c.len() / 2) as usize).unwrap_or_default().to_string();
    let t0 = Instant::now();
    let t = c.get_by_id(&id)?.expect("id from the index");
    println!("4. random access: record {id} read in {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
    println!("   prompt:    {}", t.messages[0].content.lines().next().unwrap_or(""));
    println!(
        "   reasoning: {}…",
        t.reasoning.chars().take(100).collect::<String>().replace('\n', " ")
    );
    println!("   answer:    {}", t.answer.replace('\n', " "));
    println!(
        "\nTry: distill corpus stats {0} | distill corpus get {0} '{id}' | distill corpus verify {0}",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
