//! `distill generate --recipe teach.toml`: the teacher stage (see distill_teacher::run).

use std::process::ExitCode;

use crate::stages::generate::generate;

use crate::recipe::{RecipeArgs, Stage};

#[derive(clap::Args)]
pub struct Args {
    /// A recipe with a [generate] section.
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Check the recipe and list what the stage reads, without running it.
    #[arg(long)]
    check: bool,
    /// Project the cost of a corpus of this many kept traces at this run's rates (money with
    /// endpoint prices, device-hours on the local engine).
    #[arg(long, value_name = "TRACES")]
    project: Option<u64>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let loaded = a.recipe.load()?;
    if a.check {
        loaded.print_check(Stage::Generate)?;
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = loaded.generate()?;
    crate::stages::ensure_prepared(&loaded, Stage::Generate)?;
    loaded.preflight(&[Stage::Generate], false, false)?;
    let report = generate(cfg, crate::stages::provenance())?;
    print!("{}", report.text());
    if let Some(n) = a.project {
        match report.projection(n) {
            (None, None) => println!(
                "projection: nothing to project from (no kept trace, or no endpoint with a price)"
            ),
            (usd, hours) => println!(
                "projection: {n} kept traces ≈ {}{}{} at this run's pass rate and tokens per trace",
                usd.map_or(String::new(), |c| format!("${c:.2}")),
                if usd.is_some() && hours.is_some() { " and " } else { "" },
                hours.map_or(String::new(), |h| format!("{h:.1} device-hours"))
            ),
        }
    }
    println!("corpus: {} (report: generate-report.txt)", cfg.output.display());
    Ok(if report.prompts_failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}
