use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use distill_data::columnar::{Limits, ParquetRows, is_parquet};
use distill_data::import::{ImportFormat, parse_line, parse_row};
use distill_data::prompts::{JsonlLines, dataset_name};
use distill_data::{CorpusWriter, Trace};

use super::WriteArgs;

#[derive(clap::Args)]
pub struct Args {
    /// JSONL or Parquet (`.parquet`) files to import, e.g. Open-R1's (OpenR1-Math with
    /// `--format openr1`, Mixture-of-Thoughts with `--format chat`).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Destination corpus (created, or resumed: records whose id it holds are skipped).
    #[arg(long)]
    out: PathBuf,
    /// native (distill records), chat (messages with a final assistant turn) or openr1.
    #[arg(long, default_value = "native")]
    format: ImportFormat,
    /// Dataset name used in ids (default: the file name without .jsonl).
    #[arg(long)]
    dataset: Option<String>,
    /// Teacher model name to record when the rows do not say.
    #[arg(long, default_value = "unknown")]
    model: String,
    /// Skip bad lines (counted and reported) instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// Commit (make durable) every N records; a crash loses at most this many.
    #[arg(long, default_value_t = 10_000)]
    commit_every: u64,
    /// Lines (and Parquet rows, as JSON) longer than this are bad input.
    #[arg(long, default_value_t = 64 << 20)]
    max_line_bytes: usize,
    #[command(flatten)]
    write: WriteArgs,
}

/// Where a row is (`file:line` or `file: row N`), and its traces or why it is bad.
type Row = (String, Result<Vec<Trace>, String>);

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut w = CorpusWriter::open(&a.out, a.write.options(super::provenance()))?;
    for p in w.removed_leftovers() {
        eprintln!("removed crash leftover {}", p.display());
    }
    let already = w.committed_records();
    let (mut imported, mut skipped, mut bad) = (0u64, 0u64, Vec::new());
    let mut conflicting: Vec<String> = Vec::new();
    let pb = crate::progress::bar(None, "records");
    for path in &a.files {
        let dataset = a.dataset.clone().unwrap_or_else(|| dataset_name(path));
        // (where, the row's traces or why it is bad), from JSONL lines or Parquet rows.
        let rows: Box<dyn Iterator<Item = anyhow::Result<Row>>> = if is_parquet(path) {
            let limits = Limits { max_row_bytes: a.max_line_bytes, ..Default::default() };
            let rows = ParquetRows::open_with(path, limits)?;
            let (fmt, ds, model) = (a.format, dataset.clone(), a.model.clone());
            Box::new(rows.map(move |r| {
                let (row, obj) = r?;
                let parsed = parse_row(fmt, &ds, &model, row, obj).map_err(|e| e.0);
                Ok((format!("{}: row {row}", path.display()), parsed))
            }))
        } else {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let lines =
                JsonlLines::new(BufReader::with_capacity(1 << 20, file), path, a.max_line_bytes);
            let (fmt, ds, model) = (a.format, dataset.clone(), a.model.clone());
            Box::new(lines.map(move |item| {
                let (line, text) = item?;
                let parsed = text.and_then(|t| {
                    if t.trim().is_empty() {
                        Ok(vec![])
                    } else {
                        parse_line(fmt, &ds, &model, line - 1, &t).map_err(|e| e.0)
                    }
                });
                Ok((format!("{}:{line}", path.display()), parsed))
            }))
        };
        for item in rows {
            let (at, parsed) = item?;
            let traces = match parsed {
                Ok(ts) => ts,
                Err(msg) if a.skip_bad => {
                    bad.push(format!("{at}: {msg}"));
                    continue;
                }
                Err(msg) => bail!("{at}: {msg}"),
            };
            for t in traces {
                // An id the corpus cannot hold (a newline, over 255 bytes) is a bad row too.
                if let Err(msg) = distill_data::record::check_id(&t.id) {
                    let msg = format!("record id {:?}: {msg}", t.id);
                    if a.skip_bad {
                        bad.push(format!("{at}: {msg}"));
                        continue;
                    }
                    bail!("{at}: {msg}");
                }
                match w.same_content(&t)? {
                    Some(true) => {
                        skipped += 1;
                        continue;
                    }
                    Some(false) => {
                        conflicting.push(format!("{at}: {}", t.id));
                        continue;
                    }
                    None => {}
                }
                w.append(t).with_context(|| at.clone())?;
                imported += 1;
                pb.inc(1);
                if w.pending_records() >= a.commit_every {
                    w.commit()?;
                }
            }
        }
    }
    w.commit()?;
    pb.finish_and_clear();
    println!(
        "imported {imported} records into {} ({} committed before, {skipped} already present, {} bad lines)",
        a.out.display(),
        already,
        bad.len()
    );
    for b in bad.iter().take(20) {
        println!("  skipped {b}");
    }
    if bad.len() > 20 {
        println!("  … and {} more", bad.len() - 20);
    }
    if !conflicting.is_empty() {
        println!(
            "{} records not imported: their id is already present with different content (the first copy is kept)",
            conflicting.len()
        );
        for c in conflicting.iter().take(20) {
            println!("  conflicting {c}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
