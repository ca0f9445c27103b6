//! `distill bench …`: measurements for docs/benchmarks.md. Never run as tests.

use std::process::ExitCode;

use clap::Subcommand;

mod client;
mod corpus;
mod gemm;
mod generation;
mod load;
mod logprobs;
mod model;
mod step;
mod train;
mod verify;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Corpus size against JSONL/gzip/Parquet, write and read speed, random-access latency.
    Corpus(corpus::Args),
    /// The teacher client's overhead against an instant local stub server.
    Client(client::Args),
    /// f32 matrix products at the model's shapes on every gemm path (flex AVX-512 / AVX2, ndarray,
    /// PyTorch, NumPy) in GFLOP/s; `--save` makes it this CPU's kernel calibration.
    Gemm(gemm::Args),
    /// Forward and generation tokens/s, a training step, peak memory; PyTorch beside it.
    Model(model::Args),
    /// A training step at growing sequence lengths, with peak memory, beside PyTorch.
    Train(train::Args),
    /// Optimizer steps of a random model of real shape on any device(s), optionally against CPU
    /// (what scripts/gpu-check runs).
    Step(step::Args),
    /// Greedy generation (KV cache) from a random model of real shape, optionally against CPU.
    Gen(generation::Args),
    /// Host memory while CPU peers load a checkpoint, whole or (FSDP) each rank its slices.
    Load(load::Args),
    /// Teacher top-k log-probs in a corpus: bytes per token per encoding at k = 8, 20, 50, and
    /// how far packed1's quantisation moves the KD loss.
    Logprobs(logprobs::Args),
    /// The math verifier over a table of (gold, prediction, expected) cases: agreement and the
    /// time per verdict (what scripts/reference/math_verify_table.py measures for math-verify).
    Verify(verify::Args),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    eprintln!("machine: {}", machine());
    match cmd {
        BenchCommand::Gemm(a) => gemm::run(a),
        BenchCommand::Corpus(a) => corpus::run(a),
        BenchCommand::Model(a) => model::run(a),
        BenchCommand::Client(a) => client::run(a),
        BenchCommand::Train(a) => train::run(a),
        BenchCommand::Step(a) => step::run(a),
        BenchCommand::Gen(a) => generation::run(a),
        BenchCommand::Load(a) => load::run(a),
        BenchCommand::Verify(a) => verify::run(a),
        BenchCommand::Logprobs(a) => logprobs::run(a),
    }
}

/// One line describing this machine, for the benchmark tables: the CPU's vendor, family, model,
/// brand and vector flags, the thread count, the gemm kernel in use, and the memory.
pub fn machine() -> String {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or("? GiB".into(), |kb| format!("{:.0} GiB", kb as f64 / 1048576.0));
    format!(
        "{}, {} rayon threads, {mem} RAM, gemm kernel {}",
        crate::cpu_kernel::identity().describe(),
        rayon::current_num_threads(),
        crate::cpu_kernel::describe()
    )
}

/// The process's peak resident memory (VmHWM), MB.
pub fn peak_rss_mb() -> f64 {
    distill_student::train::host_peak_rss_mb().unwrap_or(0.0)
}

/// Append one JSON result line to `path` (the benchmark's `--json`).
pub fn append_json_line(path: &std::path::Path, v: &serde_json::Value) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{v}")?;
    Ok(())
}
