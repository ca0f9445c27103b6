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
        match crate::recipe::load_recipe(r, &[]).and_then(|(rec, _, _)| rec.validate().map(|_| rec)) {
            Ok(rec) => {
                let stages: Vec<&str> = crate::cmd::run::STAGES.iter().copied().filter(|s| match *s {
                    "prepare" => rec.prepare.is_some(),
                    "generate" => rec.generate.is_some(),
                    "filter" => rec.filter.is_some(),
                    "train" => rec.train.is_some(),
                    "agreement" => rec.agreement.is_some(),
                    "eval" => rec.eval.is_some(),
                    _ => true,
                }).collect();
                println!("ok   {} ({}): {}", r.display(), rec.recipe.name, stages.join(" → "));
            }
            Err(e) => {
                bad += 1;
                println!("FAIL {}: {e:#}", r.display());
            }
        }
    }
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
