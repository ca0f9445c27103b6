use std::path::PathBuf;
use std::process::ExitCode;

use distill_data::{Corpus, CorpusWriter, Role};
use distill_teacher::decontam::Decontaminator;
use serde_json::json;

use super::WriteArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Source corpus.
    src: PathBuf,
    /// Eval sets (JSONL with problem/question/prompt/messages); repeatable.
    #[arg(long, required = true, num_args = 1..)]
    against: Vec<PathBuf>,
    /// Destination corpus (created, or resumed).
    #[arg(long)]
    out: PathBuf,
    /// Word n-gram length (Open-R1 uses 8).
    #[arg(long, default_value_t = 8)]
    ngram: usize,
    /// Where to write the JSON report of what was dropped and why (default: OUT/decontamination.json).
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    write: WriteArgs,
}

/// Drop every trace whose prompt shares a word n-gram with an eval problem.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let d = Decontaminator::from_files(&a.against, a.ngram)?;
    let src = Corpus::open(&a.src)?;
    let mut w = CorpusWriter::open(&a.out, a.write.options(super::provenance()))?;
    let (mut kept, mut present) = (0u64, 0u64);
    let mut dropped = Vec::new();
    for t in src.iter() {
        let t = t?;
        if w.contains(&t.id) {
            present += 1;
            continue;
        }
        let text: String = t
            .messages
            .iter()
            .filter(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        match d.check(&text) {
            Some(hit) => dropped.push(json!({"id": t.id, "prompt_id": t.prompt_id, "eval_file": hit.file, "eval_line": hit.line, "shared_ngram": hit.ngram})),
            None => {
                w.append(t)?;
                kept += 1;
            }
        }
    }
    w.commit()?;
    let report_path = a.report.clone().unwrap_or_else(|| a.out.join("decontamination.json"));
    let report = json!({"against": a.against, "eval_problems": d.problems, "ngram": a.ngram, "kept": kept, "already_present": present, "dropped": dropped});
    distill_data::fsutil::atomic_write(&report_path, &serde_json::to_vec_pretty(&report)?)?;
    println!(
        "{} eval problems indexed; kept {kept}, dropped {} (report: {})",
        d.problems,
        dropped.len(),
        report_path.display()
    );
    for x in dropped.iter().take(10) {
        println!(
            "  dropped {} — shares \"{}\" with {}:{}",
            x["id"].as_str().unwrap_or(""),
            x["shared_ngram"].as_str().unwrap_or(""),
            x["eval_file"].as_str().unwrap_or(""),
            x["eval_line"]
        );
    }
    Ok(ExitCode::SUCCESS)
}
