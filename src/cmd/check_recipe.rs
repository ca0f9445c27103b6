//! `distill check-recipe FILE...`: parse and validate recipes without running anything.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    recipes: Vec<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut bad = 0;
    for r in &a.recipes {
        match crate::recipe::Loaded::read(r, &[]).and_then(|l| l.recipe.validate().map(|_| l)) {
            Ok(l) => {
                let stages: Vec<&str> = l.plan().iter().map(|s| s.name()).collect();
                println!("ok   {} ({}): {}", r.display(), l.recipe.recipe.name, stages.join(" → "));
            }
            Err(e) => {
                bad += 1;
                println!("FAIL {}: {e:#}", r.display());
            }
        }
    }
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
