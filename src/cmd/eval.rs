//! `distill eval`: pass@1 and cons@k on JSONL benchmarks, through the local engine or an
//! OpenAI-compatible endpoint (see distill_teacher::eval).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use distill_teacher::backend::SamplingSpec;
use distill_teacher::backend::local::LocalConfig;
use distill_teacher::backend::openai::OpenAiConfig;
use distill_teacher::eval::{BenchSpec, EvalConfig};
use distill_teacher::run::{BackendConfig, RetryConfig};

use crate::stages::eval::{print_table, run_eval};

#[derive(clap::Args)]
pub struct Args {
    /// A recipe with an [eval] section (the flags below are then ignored).
    #[arg(long, value_name = "RECIPE")]
    recipe: Option<PathBuf>,
    /// Override a recipe field (repeatable), e.g. `--set eval.k=8`.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "recipe")]
    sets: Vec<String>,
    /// With --recipe: check it and list what the stage reads, without running it.
    #[arg(long, requires = "recipe")]
    check: bool,
    /// A Hugging Face model directory, run by the local engine.
    #[arg(long, conflicts_with = "endpoint")]
    model: Option<PathBuf>,
    /// An OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (vLLM serving an export).
    #[arg(long)]
    endpoint: Option<String>,
    /// The model name to request from the endpoint.
    #[arg(long, default_value = "default")]
    served_model: String,
    /// A benchmark as NAME=FILE.jsonl (repeatable).
    #[arg(long = "bench", required_unless_present = "recipe")]
    benches: Vec<String>,
    /// Only the first N problems of each benchmark.
    #[arg(long)]
    limit: Option<usize>,
    /// Samples per problem (default: as a recipe's [eval], 4).
    #[arg(long)]
    k: Option<u32>,
    /// Defaults for the sampling flags are a recipe's: R1's temperature 0.6, top-p 0.95,
    /// 4096 tokens, seed 0.
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long)]
    max_tokens: Option<u32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory (per-problem JSONL and summary.json); re-running resumes it.
    #[arg(long, default_value = "runs/eval")]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: distill_models::device::DeviceKind,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cfg = match &a.recipe {
        Some(r) => {
            let loaded = crate::recipe::Loaded::read(r, &a.sets)?;
            if a.check {
                loaded.print_check(crate::recipe::Stage::Eval)?;
                return Ok(ExitCode::SUCCESS);
            }
            crate::stages::ensure_prepared(&loaded, crate::recipe::Stage::Eval)?;
            loaded.preflight(&[crate::recipe::Stage::Eval], false, false)?;
            loaded.eval()?.clone()
        }
        None => flags(&a)?,
    };
    let summaries = run_eval(&cfg)?;
    print_table(&summaries);
    println!("results: {}", cfg.output.join("summary.json").display());
    Ok(ExitCode::SUCCESS)
}

fn flags(a: &Args) -> anyhow::Result<EvalConfig> {
    let backend = match (&a.model, &a.endpoint) {
        // The same defaults as a recipe's (one set of defaults, in the config types).
        (Some(m), None) => {
            BackendConfig::Local { local: LocalConfig::new(m.clone()), device: a.device }
        }
        (None, Some(u)) => BackendConfig::Openai {
            endpoints: vec![OpenAiConfig::new(u.clone(), a.served_model.clone())],
        },
        _ => bail!("give --model DIR (local engine) or --endpoint URL"),
    };
    let benchmarks = a
        .benches
        .iter()
        .map(|b| match b.split_once('=') {
            Some((n, f)) => {
                BenchSpec::check_name(n).with_context(|| format!("--bench {b}"))?;
                Ok(BenchSpec { name: n.into(), file: f.into(), fields: None, limit: a.limit })
            }
            None => bail!("--bench takes NAME=FILE, got {b}"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let d = SamplingSpec::default();
    Ok(EvalConfig {
        benchmarks,
        k: a.k.unwrap_or(distill_teacher::eval::DEFAULT_K),
        sampling: SamplingSpec {
            temperature: a.temperature.unwrap_or(d.temperature),
            top_p: a.top_p.unwrap_or(d.top_p),
            max_tokens: a.max_tokens.unwrap_or(d.max_tokens),
            seed: a.seed.or(d.seed),
            ..d
        },
        backend,
        retry: RetryConfig::default(),
        output: a.out.clone(),
        math: None,
    })
}
