//! `distill generate --recipe teach.toml`: the teacher stage (see distill_teacher::run).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use distill_teacher::backend::Teacher;
use distill_teacher::backend::local::LocalTeacher;
use distill_teacher::backend::openai::OpenAiClient;
use distill_teacher::run::{self, BackendKind, GenerateConfig};

#[derive(clap::Args)]
pub struct Args {
    /// A recipe with a [generate] section.
    #[arg(long)]
    recipe: PathBuf,
    /// Override a recipe field, e.g. `--set generate.limit=32` (repeatable).
    #[arg(long = "set")]
    sets: Vec<String>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let v = crate::recipe::load(&a.recipe, &a.sets)?;
    let cfg: GenerateConfig = crate::recipe::section(&v, "generate", &a.recipe)?;
    let report = generate(&cfg, super::corpus::provenance())?;
    print!("{}", report.text());
    println!("corpus: {} (report: generate-report.txt)", cfg.output.display());
    Ok(if report.prompts_failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// Check the recipe and its inputs, build the teachers, run. Everything that can fail fast
/// (config, prompt file, endpoints, model directory) fails before the first request.
pub fn generate(cfg: &GenerateConfig, provenance: serde_json::Value) -> anyhow::Result<run::GenerateReport> {
    cfg.validate()?;
    let set = run::load_prompts(cfg)?;
    let teachers = build_teachers(cfg)?;
    let pb = crate::progress::bar(Some(set.prompts.len() as u64), "prompts");
    let t0 = Instant::now();
    let report = run::generate(cfg, set, teachers, provenance, |p| {
        pb.set_length(p.total);
        pb.set_position(p.done + p.failed);
        let rate = if p.samples > 0 { 100.0 * p.passed as f64 / p.samples as f64 } else { 0.0 };
        let tps = p.completion_tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        pb.set_message(format!("kept {} | pass {rate:.0}% | {tps:.0} tok/s{}", p.kept, if p.failed > 0 { format!(" | {} failed", p.failed) } else { String::new() }));
    })?;
    pb.finish_and_clear();
    Ok(report)
}

fn build_teachers(cfg: &GenerateConfig) -> anyhow::Result<Vec<Arc<dyn Teacher>>> {
    match cfg.backend.kind {
        BackendKind::Openai => cfg
            .backend
            .endpoints
            .iter()
            .map(|e| {
                preflight(&e.base_url)?;
                let client = OpenAiClient::new(e.clone(), None).map_err(anyhow::Error::msg)?;
                Ok(Arc::new(client) as Arc<dyn Teacher>)
            })
            .collect(),
        BackendKind::Local => {
            let local = cfg.backend.local.as_ref().context("[generate.backend.local] is missing")?;
            if !local.model_dir.join("config.json").exists() {
                bail!("model directory {} has no config.json", local.model_dir.display());
            }
            let kind: distill_student::device::DeviceKind = cfg.backend.device.parse().map_err(anyhow::Error::msg)?;
            crate::backend::dispatch!(kind, |B, device| Ok(vec![Arc::new(LocalTeacher::<B>::load(local, device)?) as Arc<dyn Teacher>]))
        }
    }
}

/// Fail early on an endpoint that does not answer at all (any HTTP answer counts as alive).
fn preflight(base_url: &str) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/models", base_url.trim_end_matches('/'));
    agent.get(&url).call().map(|_| ()).map_err(|e| anyhow::anyhow!("teacher endpoint {base_url} is unreachable: {e}"))
}

