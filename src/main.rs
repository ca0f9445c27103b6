//! `distill`: teacher traces → compressed corpus → SFT → exported student.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc keeps freed tensor buffers for reuse; glibc returns large ones to the OS, and every
/// tensor op then pays page faults for fresh memory (≈10% of a CPU forward pass).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod agreement;
mod backend;
mod cmd;
mod models;
mod plot;
mod progress;
mod recipe;
mod report;
mod teachers;

#[derive(Parser)]
#[command(name = "distill", version, about = "Knowledge distillation for LLMs: teacher traces -> compressed corpus -> SFT -> HF export")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, check, convert and combine trace corpora.
    #[command(subcommand)]
    Corpus(cmd::corpus::CorpusCommand),
    /// Benchmarks whose figures go into docs/benchmarks.md.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Offline demo of the corpus on generated R1-like traces.
    Demo(cmd::demo::DemoArgs),
    /// Import models from other formats into the Hugging Face layout.
    #[command(subcommand)]
    Import(cmd::import::ImportCommand),
    /// Fetch a model distill knows how to get without a model hub (cached).
    Fetch(cmd::fetch::Args),
    /// Generate text from a model directory (a quick look).
    GenerateText(cmd::generate_text::Args),
    /// The teacher stage: sample, verify and rejection-sample traces into a corpus.
    Generate(cmd::generate::Args),
    /// The SFT stage: fine-tune a student on a trace corpus and export it.
    Train(cmd::train::Args),
    /// Benchmark a model: pass@1 and cons@k with R1's sampling settings.
    Eval(cmd::eval::Args),
    /// Run the stages a recipe names (prepare → generate → filter → train → agreement → eval → report).
    Run(cmd::run::Args),
    /// Write a run's HTML report.
    Report(cmd::report::Args),
    /// Parse and validate recipes.
    CheckRecipe(cmd::check_recipe::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Corpus(c) => cmd::corpus::run(c),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Import(c) => cmd::import::run(c),
        Command::Fetch(a) => cmd::fetch::run(a),
        Command::GenerateText(a) => cmd::generate_text::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::CheckRecipe(a) => cmd::check_recipe::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
