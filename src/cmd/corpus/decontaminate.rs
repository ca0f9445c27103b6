use std::path::PathBuf;
use std::process::ExitCode;

use distill_data::{Corpus, CorpusWriter};
use distill_teacher::decontam::decontaminate_corpus;

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
    #[arg(long, default_value_t = distill_teacher::decontam::DEFAULT_NGRAM)]
    ngram: usize,
    /// Where to write the JSON report of what was dropped and why (default: OUT/decontamination.json).
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    write: WriteArgs,
}

/// Drop every trace whose prompt shares a word n-gram with an eval problem.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let src = Corpus::open(&a.src)?;
    let mut w = CorpusWriter::open(&a.out, a.write.options(super::provenance()))?;
    let rep = decontaminate_corpus(&src, &mut w, &a.against, a.ngram)?;
    let report_path = a.report.clone().unwrap_or_else(|| a.out.join("decontamination.json"));
    distill_data::fsutil::atomic_write(&report_path, &serde_json::to_vec_pretty(&rep)?)?;
    println!(
        "{} eval problems indexed; kept {}, dropped {} (report: {})",
        rep.eval_problems,
        rep.kept,
        rep.dropped.len(),
        report_path.display()
    );
    for x in rep.dropped.iter().take(10) {
        println!(
            "  dropped {} — shares \"{}\" with {}:{}",
            x.id,
            x.shared_ngram,
            x.eval_file.display(),
            x.eval_line
        );
    }
    Ok(ExitCode::SUCCESS)
}
