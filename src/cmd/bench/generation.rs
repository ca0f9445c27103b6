//! `distill bench gen`: greedy generation with the KV cache from a random-initialised model of
//! real shape on any device, with no download — the generation half of `scripts/gpu-check`.
//! With `--against cpu` the same prompts also run on the CPU in f32, and the generated tokens and
//! their log-probabilities are compared.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use burn::prelude::Backend;
use burn::tensor::DType;
use distill_models::CausalLm;
use distill_models::ModelConfig;
use distill_models::device::{Cpu, CpuDevice, DeviceKind};
use distill_models::generate::{Completion, Engine, SamplingParams};
use distill_models::weights::RandomSource;
use distill_student::train::CastParams;
use serde_json::json;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// `tiny-llama`, `tiny-qwen2`, `tiny-qwen3`, or a base model whose published config distill
    /// knows (`Qwen/Qwen2.5-1.5B`, …). Weights are random.
    #[arg(long, default_value = "tiny-llama")]
    model: String,
    /// cpu, cuda, cuda:N, wgpu or wgpu:cpu.
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
    /// Weights and activations: f32 or bf16.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    /// Prompts in the batch; prompt i is `prompt_len - 3i` tokens long (left padding is exercised).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 24)]
    prompt_len: usize,
    #[arg(long, default_value_t = 24)]
    max_tokens: usize,
    /// Also generate on one CPU device in f32 and compare tokens and log-probabilities.
    #[arg(long)]
    against: Option<String>,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct GenOut {
    completions: Vec<Completion>,
    /// Seconds of the timed run (after a short warm-up that compiles kernels on a GPU).
    secs: f64,
    /// Seconds to the first generated token (prefill) in the timed run.
    prefill_s: f64,
    /// Kernels compiled and launched in the timed run (cubecl devices; `None` elsewhere).
    kernels: Option<distill_models::kernels::KernelCounts>,
}

fn prompts(cfg: &ModelConfig, batch: usize, len: usize) -> Vec<Vec<u32>> {
    let mut s = 0x51_7CC1_B727_220Au64;
    (0..batch)
        .map(|i| {
            let n = len.saturating_sub(3 * i).max(1);
            (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % cfg.vocab_size as u64) as u32
                })
                .collect()
        })
        .collect()
}

fn run_on<B: Backend>(
    a: &Args,
    cfg: &ModelConfig,
    dtype: &str,
    device: B::Device,
) -> anyhow::Result<GenOut> {
    let mut model = CausalLm::<B>::load(cfg, &mut RandomSource::new(11), &device)?;
    if dtype == "bf16" {
        model = model.map(&mut CastParams(DType::BF16));
    }
    let engine = Engine::new(&model, cfg, None, device.clone());
    let ps = prompts(cfg, a.batch, a.prompt_len);
    // Never stop early: every row generates max_tokens, so the token counts are equal.
    let params = SamplingParams { max_tokens: a.max_tokens, logprobs: 2, ..Default::default() };
    engine.generate(&ps, &SamplingParams { max_tokens: 2, ..params.clone() }, |_| {})?;
    let before = if distill_models::kernels::is_cubecl::<B>() {
        distill_models::kernels::settle()
    } else {
        None
    };
    let t0 = Instant::now();
    let mut first = None;
    let mut done = 0;
    let completions = engine.generate(&ps, &params, |_| {
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        done += 1;
        // Progress on stderr: a run cut short by a time limit still shows how far it got.
        if done == 1 || done % 16 == 0 {
            eprintln!("token {done}/{}: {:.3} s", a.max_tokens, t0.elapsed().as_secs_f64());
        }
    })?;
    let secs = t0.elapsed().as_secs_f64();
    let kernels = match before {
        Some(b) => {
            B::sync(&device).map_err(|e| anyhow::anyhow!("sync: {e:?}"))?;
            distill_models::kernels::settle().map(|now| now - b)
        }
        None => None,
    };
    Ok(GenOut { completions, secs, prefill_s: first.unwrap_or(0.0), kernels })
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cfg = super::step::model_config(&a.model)?;
    let compare = match a.against.as_deref() {
        None => false,
        Some("cpu") => true,
        Some(other) => anyhow::bail!("--against {other}: only `cpu` is supported"),
    };
    let out =
        crate::backend::dispatch!(a.device, |B, device| run_on::<B>(&a, &cfg, &a.dtype, device))?;
    let generated: usize = out.completions.iter().map(|c| c.ids.len()).sum();
    let decode_tps =
        generated.saturating_sub(a.batch) as f64 / (out.secs - out.prefill_s).max(1e-9);
    let mut result = json!({
        "model": a.model, "params": distill_student::train::plan::param_count(&cfg), "device": format!("{:?}", a.device),
        "dtype": a.dtype, "batch": a.batch, "prompt_len": a.prompt_len, "max_tokens": a.max_tokens,
        "generated": generated, "secs": out.secs, "prefill_s": out.prefill_s, "decode_tokens_per_s": decode_tps,
        "tokens_per_s": generated as f64 / out.secs,
        "machine": super::machine(), "cpu": crate::cpu_kernel::json(),
    });
    // Compile once, launch few: the timed run follows a 2-token warm-up, so every kernel it
    // compiles is one a longer generation pays again (new shapes: a cache block, a prompt length).
    if let Some(k) = out.kernels {
        let per_token = k.launched as f64 / a.max_tokens.max(1) as f64;
        result["kernels"] = json!({"compiled_after_warmup": k.compiled, "launched": k.launched, "launches_per_token": per_token});
        eprintln!(
            "kernels: {} compiled after the warm-up; {} launched, {per_token:.1} per decoded token (with the prefill)",
            k.compiled, k.launched
        );
    }
    let mut ok = true;
    let mut verdict = "—".to_string();
    if compare {
        let reference = run_on::<Cpu>(&a, &cfg, "f32", CpuDevice::default())?;
        // Per row: tokens equal up to the first divergence; log-probabilities compared there. A
        // divergence is accepted only at a near-tie in the CPU's own top two (random weights make
        // flat distributions), never otherwise.
        // f32 on CUDA runs its matmuls on tensor cores (TF32), see `bench step`.
        let tol = match (a.dtype.as_str(), a.device) {
            ("bf16", _) => 5e-2,
            (_, DeviceKind::Cuda(_) | DeviceKind::Wgpu(_)) => 5e-3,
            _ => 1e-3,
        };
        let (mut same, mut total, mut max_lp, mut bad_rows) = (0usize, 0usize, 0f64, 0usize);
        for (x, y) in out.completions.iter().zip(&reference.completions) {
            let (lx, ly) = (
                x.logprobs.as_ref().context("no logprobs")?,
                y.logprobs.as_ref().context("no logprobs")?,
            );
            total += y.ids.len();
            let agree = x.ids.iter().zip(&y.ids).take_while(|(p, q)| p == q).count();
            same += agree;
            for i in 0..agree.min(lx.len()).min(ly.len()) {
                max_lp =
                    max_lp.max((lx.token_logprobs[i] as f64 - ly.token_logprobs[i] as f64).abs());
            }
            if agree < y.ids.len().min(x.ids.len()) {
                let k = ly.k as usize;
                let gap = (ly.top_logprobs[agree * k] - ly.top_logprobs[agree * k + 1]) as f64;
                if gap > tol {
                    bad_rows += 1;
                }
            }
        }
        ok = max_lp <= tol && bad_rows == 0 && out.completions.len() == reference.completions.len();
        verdict = format!(
            "{} ({same}/{total} tokens equal, logprob Δ {max_lp:.1e})",
            if ok { "ok" } else { "FAIL" }
        );
        result["against_cpu_f32"] = json!({"tokens_equal": same, "tokens": total, "max_logprob_abs": max_lp, "diverged_without_tie": bad_rows, "tolerance": tol, "ok": ok});
    }
    println!(
        "| {} | {:?} | {} | {}×{} +{} | {:.3} | {:.0} | {:.0} | {} |",
        a.model,
        a.device,
        a.dtype,
        a.batch,
        a.prompt_len,
        a.max_tokens,
        out.prefill_s,
        decode_tps,
        generated as f64 / out.secs,
        verdict
    );
    if let Some(p) = &a.json {
        super::append_json_line(p, &result)?;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
