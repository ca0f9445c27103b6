use std::path::PathBuf;
use std::process::ExitCode;

use distill_data::corpus::verify;

#[derive(clap::Args)]
pub struct Args {
    /// Corpus directory.
    dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Exit status 0 when the corpus is intact, 1 when any damage was found.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let r = verify(&a.dir)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for p in &r.problems {
            match p.frame {
                Some(f) => println!("DAMAGED {} frame {f}: {}", p.shard, p.msg),
                None => println!("DAMAGED {}: {}", p.shard, p.msg),
            }
        }
        for s in &r.strays {
            println!(
                "note: {s} is not named by the manifest (a crash leftover; the next writer removes it)"
            );
        }
        let verdict = if r.ok() { "OK" } else { "DAMAGED" };
        println!(
            "{verdict}: {} shards, {} frames, {} records read, {} problems",
            r.shards,
            r.frames,
            r.records,
            r.problems.len()
        );
    }
    Ok(if r.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
