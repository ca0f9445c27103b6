//! `distill generate --recipe teach.toml`: the teacher stage (see distill_teacher::run).

use std::process::ExitCode;
use std::time::Instant;

use distill_teacher::run::{self, GenerateConfig};

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
    super::run::ensure_prepared(&loaded, Stage::Generate)?;
    loaded.preflight(&[Stage::Generate], false, false)?;
    let report = generate(cfg, super::corpus::provenance())?;
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

/// Check the recipe and its inputs, build the teachers, run. Everything that can fail fast
/// (config, prompt file, endpoints, model directory) fails before the first request.
pub fn generate(
    cfg: &GenerateConfig,
    provenance: serde_json::Value,
) -> anyhow::Result<run::GenerateReport> {
    cfg.validate()?;
    let set = run::load_prompts(cfg)?;
    let teachers = distill_teacher::backend::build(&cfg.backend)?;
    let pb = crate::progress::bar(Some(set.prompts.len() as u64), "prompts");
    let t0 = Instant::now();
    let report = run::generate(cfg, set, teachers, provenance, |p| {
        pb.set_length(p.total);
        pb.set_position(p.done + p.failed);
        let rate = if p.samples > 0 { 100.0 * p.passed as f64 / p.samples as f64 } else { 0.0 };
        let tps = p.completion_tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        pb.set_message(format!(
            "kept {} | pass {rate:.0}% | {tps:.0} tok/s{}",
            p.kept,
            if p.failed > 0 { format!(" | {} failed", p.failed) } else { String::new() }
        ));
    })?;
    pb.finish_and_clear();
    Ok(report)
}
