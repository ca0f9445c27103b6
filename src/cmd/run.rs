//! `distill run RECIPE.toml`: the stages a recipe names, in order —
//! prepare → generate → filter → train (with export) → on-policy → agreement → eval → report — each
//! writing under the run directory and skipped when its output is complete, so re-running after a
//! crash resumes. `--from STAGE` redoes that stage and the ones after; `--only STAGE` runs one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use distill_data::fsutil::atomic_write;
use serde_json::json;

use crate::recipe::{Loaded, Stage};
use crate::stages::{marker, run_stage};

#[derive(clap::Args)]
pub struct Args {
    /// The recipe (TOML); `--recipe R.toml` works too.
    #[arg(
        required_unless_present = "recipe_flag",
        conflicts_with = "recipe_flag",
        value_name = "RECIPE"
    )]
    recipe: Option<PathBuf>,
    #[arg(long = "recipe", value_name = "RECIPE")]
    recipe_flag: Option<PathBuf>,
    /// Override a recipe field (repeatable), e.g. `--set generate.limit=16`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Redo this stage and every later one.
    #[arg(long, value_enum)]
    from: Option<Stage>,
    /// Run only this stage.
    #[arg(long, value_enum, conflicts_with = "from")]
    only: Option<Stage>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let path = a.recipe.as_ref().or(a.recipe_flag.as_ref()).expect("clap requires one");
    let loaded = Loaded::read(path, &a.sets)?;
    loaded.recipe.validate()?;
    let stages = loaded.plan();
    if let Some(s) = a.only.or(a.from)
        && !stages.contains(&s)
    {
        bail!(
            "stage {s} is not in this recipe (it has: {})",
            stages.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
        );
    }
    let to_run: Vec<Stage> =
        stages.iter().copied().filter(|s| a.only.is_none_or(|o| o == *s)).collect();
    crate::recipe::claim_run_dir(&loaded.paths.run_dir, false)?;
    loaded.preflight(&to_run, true, true)?;
    let (recipe, paths) = (&loaded.recipe, &loaded.paths);
    crate::recipe::claim_run_dir(&paths.run_dir, true)?;
    std::fs::create_dir_all(paths.run_dir.join("stages"))?;
    atomic_write(
        &paths.run_dir.join("recipe.toml"),
        toml::to_string_pretty(&crate::recipe::redacted(&loaded.resolved))?.as_bytes(),
    )?;
    println!("run {} → {}", recipe.recipe.name, paths.run_dir.display());
    for &stage in &to_run {
        let m = marker(&paths.run_dir, stage);
        let forced = a.only.is_some() || a.from.is_some_and(|f| stage >= f);
        if m.exists() && !forced {
            println!("[{stage}] done earlier, skipped");
            continue;
        }
        let ts = Instant::now();
        println!("[{stage}] …");
        let outputs = run_stage(stage, &loaded).with_context(|| format!("stage {stage}"))?;
        atomic_write(
            &m,
            serde_json::to_vec_pretty(
                &json!({"stage": stage, "seconds": ts.elapsed().as_secs_f64(), "outputs": outputs}),
            )?
            .as_slice(),
        )?;
        println!("[{stage}] done in {:.0}s", ts.elapsed().as_secs_f64());
    }
    println!("\nfinished in {:.0}s", t0.elapsed().as_secs_f64());
    let report = paths.run_dir.join("report.html");
    if report.exists() {
        println!("report:  {}", report.display());
    }
    println!("results: {}", paths.run_dir.display());
    Ok(ExitCode::SUCCESS)
}
