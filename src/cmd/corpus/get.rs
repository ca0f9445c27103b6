use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use distill_data::Corpus;

#[derive(clap::Args)]
pub struct Args {
    /// Corpus directory.
    dir: PathBuf,
    /// Record id (e.g. `gsm8k-train/1f3a…#0`).
    id: Option<String>,
    /// Record index (0-based) instead of an id.
    #[arg(long, conflicts_with = "id")]
    index: Option<u64>,
    /// Print the record on one line as stored.
    #[arg(long)]
    raw: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    // Damage elsewhere must not hide a readable record: open what is readable.
    let c = Corpus::open_skipping_damage(&a.dir)?;
    let index = match (&a.id, a.index) {
        (_, Some(i)) => i,
        (Some(id), None) => match c.index_of(id) {
            Some(i) => i,
            None => bail!("no record with id '{id}' in {}", a.dir.display()),
        },
        (None, None) => bail!("give a record id or --index N"),
    };
    let line = c.get_raw(index)?;
    if a.raw {
        println!("{line}");
    } else {
        let v: serde_json::Value = serde_json::from_str(&line)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(ExitCode::SUCCESS)
}
