//! `distill`: teacher traces → compressed corpus → SFT → exported student.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc keeps freed tensor buffers for reuse; glibc returns large ones to the OS, and every
/// tensor op then pays page faults for fresh memory (≈10% of a CPU forward pass).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_purge_delay` (the enum's 16th entry in `mimalloc.h`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never give freed memory back to the OS. By default mimalloc purges it after 10 ms, and a
/// training step, which frees and reallocates hundreds of MB of activations per layer, then spends
/// almost half its time in the kernel zeroing fresh pages (`clear_page_erms`: a SmolLM2 4×512 step
/// took 22.9 s with purging, 12.2 s without; see docs/benchmarks.md). The process's footprint stays
/// at its peak, which is what a training or generation run needs anyway.
fn keep_freed_memory() {
    // SAFETY: sets a process-wide allocator option; called once, first thing in `main`.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

mod backend;
mod chat;
mod cmd;
mod cpu_kernel;
mod hub;
mod models;
mod plot;
mod progress;
mod recipe;
mod report;
mod stages;

#[derive(Parser)]
#[command(
    name = "distill",
    version,
    about = "Knowledge distillation for LLMs: teacher traces -> compressed corpus -> SFT -> HF export"
)]
struct Cli {
    /// The CPU backend's gemm kernel: auto (a cached calibration, else chosen by CPU model),
    /// calibrate (measure once and cache), avx512 or avx2. Default: $DISTILL_GEMM_KERNEL, else auto.
    #[arg(long, global = true, value_name = "KERNEL")]
    gemm_kernel: Option<String>,
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
    /// Token ids and pieces of a text or of a chat (with the assistant mask SFT uses).
    Tokenize(cmd::tokenize::Args),
    /// The model's top-k next-token logits and log-probs at the end of a prompt.
    Logits(cmd::logits::Args),
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
    /// Estimated memory per rank of a recipe's training in every shard mode, and how many devices it needs.
    Plan(cmd::plan::Args),
}

/// Die quietly on a closed pipe, as Unix tools do (`distill corpus cat … | head -1`): Rust
/// ignores SIGPIPE, and every `println!` after the reader left would panic.
fn default_sigpipe() {
    // SAFETY: restores the default disposition of one signal, once, before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn main() -> ExitCode {
    keep_freed_memory();
    default_sigpipe();
    let cli = Cli::parse();
    // Before any cubecl device is touched: count kernel compilations and launches, keep cubecl's
    // caches under ~/.cache/distill/cubecl (a no-op without a cubecl backend).
    distill_models::kernels::install();
    if let Err(e) = cpu_kernel::init(cli.gemm_kernel.as_deref()) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Corpus(c) => cmd::corpus::run(c),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Import(c) => cmd::import::run(c),
        Command::Fetch(a) => cmd::fetch::run(a),
        Command::GenerateText(a) => cmd::generate_text::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Logits(a) => cmd::logits::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::CheckRecipe(a) => cmd::check_recipe::run(a),
        Command::Plan(a) => cmd::plan::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", distill_data::redact::redact(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
