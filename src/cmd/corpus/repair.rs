use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use distill_data::corpus::verify::damage_message;
use distill_data::{Corpus, CorpusWriter, Damage, fsutil};
use serde::Serialize;

use super::WriteArgs;

#[derive(clap::Args)]
pub struct Args {
    /// The damaged corpus (read only).
    src: PathBuf,
    /// The new corpus (created, or resumed: ids it holds are skipped).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    write: WriteArgs,
}

/// `repair-report.json`, written into the new corpus's directory.
#[derive(Serialize)]
struct RepairReport<'a> {
    source: String,
    recovered: u64,
    written: u64,
    already_present: u64,
    /// Records lost where the count is known.
    lost_records: u64,
    /// Whether some damage lost an unknown number of records (index damaged as well).
    lost_unknown: bool,
    damage: &'a [Damage],
}

/// Exit status 0 when nothing was lost, 1 when records were lost.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.src.canonicalize().ok().is_some_and(|s| a.out.canonicalize().ok() == Some(s)) {
        bail!("--out must be a new directory, not the damaged corpus itself");
    }
    let src = Corpus::open_skipping_damage(&a.src)
        .with_context(|| format!("opening corpus {}", a.src.display()))?;
    let mut w = CorpusWriter::open(&a.out, a.write.options(super::provenance()))?;
    let (mut recovered, mut written, mut already) = (0u64, 0u64, 0u64);
    let pb = crate::progress::bar(Some(src.len()), "records");
    for t in src.iter() {
        let t = t?;
        recovered += 1;
        pb.inc(1);
        if w.contains(&t.id) {
            already += 1;
        } else {
            w.append(t)?;
            written += 1;
        }
    }
    w.commit()?;
    pb.finish_and_clear();
    let damage = src.damage();
    let report = RepairReport {
        source: distill_data::redact::redact(&a.src.display().to_string()),
        recovered,
        written,
        already_present: already,
        lost_records: src.lost_records(),
        lost_unknown: damage.iter().any(|d| d.lost_records.is_none()),
        damage: &damage,
    };
    let path = a.out.join("repair-report.json");
    let mut json = serde_json::to_vec_pretty(&report)?;
    json.push(b'\n');
    fsutil::atomic_write(&path, &json)?;
    for d in &damage {
        let at = match d.frame {
            Some(f) => format!("{} frame {f}", d.shard),
            None => d.shard.clone(),
        };
        println!("DAMAGED {at}: {}", damage_message(d));
    }
    println!(
        "recovered {recovered} records ({written} written, {already} already present) into {}; \
         {} lost{}; report in {}",
        a.out.display(),
        report.lost_records,
        if report.lost_unknown { " plus an unknown number" } else { "" },
        path.display()
    );
    let lost = report.lost_records > 0 || report.lost_unknown;
    Ok(if lost { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
