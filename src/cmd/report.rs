//! `distill report RUN_DIR`: write RUN_DIR/report.html.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    run_dir: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let p = crate::report::write(&a.run_dir)?;
    println!("{}", p.display());
    Ok(ExitCode::SUCCESS)
}
