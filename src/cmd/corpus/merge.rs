use std::path::PathBuf;
use std::process::ExitCode;

use distill_data::CorpusWriter;
use distill_data::corpus::ops;

use super::WriteArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Source corpora, in order; the first copy of an id wins.
    #[arg(required = true)]
    srcs: Vec<PathBuf>,
    /// Destination corpus (created, or resumed).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    write: WriteArgs,
    #[command(flatten)]
    damage: super::DamageArgs,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let srcs = a.srcs.iter().map(|p| a.damage.open(p)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut w = CorpusWriter::open(&a.out, a.write.options(super::provenance()))?;
    let r = ops::merge(&srcs, &mut w)?;
    println!(
        "read {}, written {}, duplicates skipped {}, conflicting {}{}",
        r.read,
        r.written,
        r.already_present,
        r.conflicting,
        super::filter::conflicts(&r.conflicting_ids)
    );
    srcs.iter().for_each(super::report_damage);
    Ok(ExitCode::SUCCESS)
}
