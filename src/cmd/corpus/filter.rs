use std::path::PathBuf;
use std::process::ExitCode;

use distill_data::corpus::ops::{self, FilterSpec};
use distill_data::{CorpusWriter, FinishReason};

use super::WriteArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Source corpus.
    src: PathBuf,
    /// Destination corpus (created, or resumed: ids it holds are skipped).
    #[arg(long)]
    out: PathBuf,
    /// Keep only records whose verdicts all passed.
    #[arg(long, conflicts_with = "failed")]
    passed: bool,
    /// Keep only records that failed a verdict.
    #[arg(long)]
    failed: bool,
    /// Drop records with this finish_reason (repeatable), e.g. `length`.
    #[arg(long = "drop-finish")]
    drop_finish: Vec<String>,
    /// Bounds on reasoning + answer length, in characters.
    #[arg(long)]
    min_chars: Option<u64>,
    #[arg(long)]
    max_chars: Option<u64>,
    /// Bounds on completion tokens.
    #[arg(long)]
    min_tokens: Option<u64>,
    #[arg(long)]
    max_tokens: Option<u64>,
    #[command(flatten)]
    write: WriteArgs,
    #[command(flatten)]
    damage: super::DamageArgs,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let spec = FilterSpec {
        passed: if a.passed {
            Some(true)
        } else if a.failed {
            Some(false)
        } else {
            None
        },
        drop_finish: a.drop_finish.iter().cloned().map(FinishReason::from).collect(),
        min_chars: a.min_chars,
        max_chars: a.max_chars,
        min_tokens: a.min_tokens,
        max_tokens: a.max_tokens,
    };
    let src = a.damage.open(&a.src)?;
    let mut w = CorpusWriter::open(&a.out, a.write.options(super::provenance()))?;
    let r = ops::filter(&src, &mut w, &spec)?;
    println!(
        "read {}, kept {}, already present {}, conflicting {}{}",
        r.read,
        r.written,
        r.already_present,
        r.conflicting,
        conflicts(&r.conflicting_ids)
    );
    for (why, n) in &r.dropped {
        println!("  dropped {n}: {why}");
    }
    super::report_damage(&src);
    Ok(ExitCode::SUCCESS)
}

/// "; ids with different content under the same id (first copy kept): a, b, …".
pub fn conflicts(ids: &[String]) -> String {
    if ids.is_empty() {
        String::new()
    } else {
        format!(
            " (a different record under an id already present; the first copy is kept: {})",
            ids.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
        )
    }
}
