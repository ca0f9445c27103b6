//! `distill import gguf FILE OUT_DIR`: a llama.cpp GGUF to a Hugging Face directory.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use distill_models::checkpoint::SaveDtype;

#[derive(Subcommand)]
pub enum ImportCommand {
    /// Dequantize a GGUF (F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0, Q4_K, Q5_K, Q6_K) into an HF
    /// directory: safetensors, config.json, tokenizer.json, tokenizer_config.json with the chat template.
    Gguf {
        file: PathBuf,
        out_dir: PathBuf,
        /// Stored dtype. f32 keeps the dequantized values exactly; bf16 halves the size.
        #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
        dtype: String,
    },
}

pub fn run(cmd: ImportCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImportCommand::Gguf { file, out_dir, dtype } => {
            let dtype = if dtype == "bf16" { SaveDtype::Bf16 } else { SaveDtype::F32 };
            let r = crate::models::import_gguf(&file, &out_dir, dtype)?;
            let types: Vec<String> = r.types.iter().map(|(t, n)| format!("{n}×{t}")).collect();
            println!(
                "imported {} ({}): {} tensors ({}), vocabulary {} with {} merges, pre-tokenizer '{}'",
                file.display(),
                r.arch,
                r.tensors,
                types.join(", "),
                r.vocab,
                r.merges,
                r.pre_tokenizer
            );
            for w in &r.warnings {
                println!("warning: {w}");
            }
            println!("wrote {}", out_dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
