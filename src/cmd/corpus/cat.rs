use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Corpus directory.
    dir: PathBuf,
    /// Stop after this many records.
    #[arg(long)]
    limit: Option<u64>,
    /// Skip this many records first.
    #[arg(long, default_value_t = 0)]
    skip: u64,
    #[command(flatten)]
    damage: super::DamageArgs,
}

/// Prints the stored JSON lines as they are (no re-serialization).
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let c = a.damage.open(&a.dir)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let end = a.limit.map_or(c.len(), |l| a.skip.saturating_add(l).min(c.len()));
    let wanted = a.skip..end;
    for loc in c.frames() {
        let frame = loc.first_record..loc.first_record + loc.records as u64;
        if frame.end <= wanted.start || frame.start >= wanted.end {
            continue;
        }
        let Some(raw) = c.read_frame_raw_or_skip(loc)? else { continue };
        for (i, line) in raw.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            if wanted.contains(&(frame.start + i as u64)) {
                let written = out.write_all(line).and_then(|_| out.write_all(b"\n"));
                if let Err(e) = written {
                    return broken_pipe_is_ok(e);
                }
            }
        }
    }
    super::report_damage(&c);
    match out.flush() {
        Err(e) => broken_pipe_is_ok(e),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// `distill corpus cat | head` must not be an error.
fn broken_pipe_is_ok(e: std::io::Error) -> anyhow::Result<ExitCode> {
    if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(ExitCode::SUCCESS) } else { Err(e.into()) }
}
