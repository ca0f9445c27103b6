//! `distill bench model`: forward and generation throughput, a training step, and peak memory,
//! side by side with PyTorch eager (transformers) on the same shapes when `--python` has torch.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::TensorData;
use distill_models::device::{Autodiff, Cpu, CpuDevice, NdArray, NdArrayDevice};
use distill_models::generate::{Engine, SamplingParams};
use distill_models::hf;
use distill_models::masks;
use distill_models::model::AttnMask;
use distill_models::rope::Rope;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    /// Model directory (default: SmolLM2-135M-Instruct imported from its GGUF).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Which parts: forward, generate, train (comma-separated).
    #[arg(long, default_value = "forward,generate,train")]
    only: String,
    /// Python with torch + transformers for the side-by-side run (skipped if it fails).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Skip the PyTorch run.
    #[arg(long)]
    no_torch: bool,
    /// The training step's shape, BATCHxSEQ.
    #[arg(long, default_value = "4x512")]
    train_shape: String,
    /// CPU backend: flex (the default everywhere) or ndarray (for comparison).
    #[arg(long, default_value = "flex", value_parser = ["flex", "ndarray"])]
    backend: String,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn ids<B: Backend>(b: usize, t: usize, dev: &B::Device) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = (0..b * t).map(|i| (17 + (i * 7919) % 40000) as i64).collect();
    Tensor::from_data(TensorData::new(v, [b, t]), dev)
}

/// Median of `reps` timed runs after one warm-up.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let dir = match &a.model {
        Some(d) => d.clone(),
        None => crate::models::smollm2_hf()?,
    };
    let mut r = json!({"machine": super::machine(), "cpu": crate::cpu_kernel::json(), "model": dir.display().to_string(), "backend": format!("{} (f32)", a.backend)});
    if a.backend == "ndarray" {
        measure::<NdArray>(&a, &dir, &NdArrayDevice::default(), &mut r)?;
    } else {
        measure::<Cpu>(&a, &dir, &CpuDevice::default(), &mut r)?;
    }
    r["peak_rss_mb"] = json!(super::peak_rss_mb());
    eprintln!("peak RSS {:.0} MB", super::peak_rss_mb());
    torch_side(&a, &dir, &mut r);
    println!("{}", serde_json::to_string_pretty(&r)?);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn measure<B: Backend>(
    a: &Args,
    dir: &std::path::Path,
    dev: &B::Device,
    r: &mut Value,
) -> anyhow::Result<()> {
    let parts: Vec<&str> = a.only.split(',').collect();
    let dev = dev.clone();

    if parts.contains(&"forward") || parts.contains(&"generate") {
        let m = hf::load_model::<B>(dir, &dev)?;
        let rope = Rope::<B>::new(&m.config, &dev);
        if parts.contains(&"forward") {
            let mut fwd = serde_json::Map::new();
            for (b, t) in [(1usize, 256usize), (8, 256)] {
                let secs = time(3, || {
                    let x = m.model.forward(
                        ids::<B>(b, t, &dev),
                        masks::positions(b, t, 0, &dev),
                        &rope,
                        &AttnMask::Causal,
                    );
                    std::hint::black_box(x.into_data());
                });
                eprintln!(
                    "forward b={b} t={t}: {:.3}s ({:.0} tokens/s)",
                    secs,
                    (b * t) as f64 / secs
                );
                fwd.insert(format!("b{b}_t{t}_tokens_s"), json!((b * t) as f64 / secs));
            }
            r["forward"] = Value::Object(fwd);
        }
        if parts.contains(&"generate") {
            let engine = Engine::new(&m.model, &m.config, None, dev.clone());
            let mut gen_ = serde_json::Map::new();
            for b in [1usize, 8] {
                let prompts: Vec<Vec<u32>> = (0..b)
                    .map(|i| (0..32).map(|j| (100 + i * 31 + j * 7) as u32).collect())
                    .collect();
                let params = SamplingParams { max_tokens: 64, ..Default::default() };
                let secs = time(2, || {
                    std::hint::black_box(engine.generate(&prompts, &params, |_| {}).unwrap());
                });
                let tps = (b * 64) as f64 / secs;
                eprintln!(
                    "generate b={b}, 32-token prompts, 64 new tokens: {secs:.3}s ({tps:.1} tokens/s)"
                );
                gen_.insert(format!("b{b}_tokens_s"), json!(tps));
            }
            r["generate"] = Value::Object(gen_);
        }
    }
    if parts.contains(&"train") {
        type Ad<B> = Autodiff<B>;
        let m = hf::load_model::<Ad<B>>(dir, &dev)?;
        let rope = Rope::<Ad<B>>::new(&m.config, &dev);
        let (b, t) = parse_shape(&a.train_shape)?;
        let secs = time(2, || {
            let x = ids::<Ad<B>>(b, t, &dev);
            let logits = m.model.forward(
                x.clone(),
                masks::positions(b, t, 0, &dev),
                &rope,
                &AttnMask::Causal,
            );
            let v = logits.dims()[2];
            let logp = burn::tensor::activation::log_softmax(logits.reshape([b * t, v]), 1);
            let target = x.reshape([b * t, 1]);
            let loss = logp.gather(1, target).mean().neg();
            std::hint::black_box(loss.backward());
        });
        eprintln!(
            "train step (forward+backward) b={b} t={t}: {secs:.3}s ({:.0} tokens/s)",
            (b * t) as f64 / secs
        );
        r["train_step"] =
            json!({"shape": a.train_shape, "seconds": secs, "tokens_s": (b * t) as f64 / secs});
    }
    Ok(())
}

fn torch_side(a: &Args, dir: &std::path::Path, r: &mut Value) {
    if !a.no_torch {
        match Command::new(&a.python)
            .arg(torch_script())
            .arg(dir)
            .arg(&a.only)
            .arg(&a.train_shape)
            .output()
        {
            Ok(o) if o.status.success() => r["torch"] = last_json_line(&o.stdout),
            Ok(o) => eprintln!(
                "PyTorch run skipped: {}",
                String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
            ),
            Err(e) => eprintln!("PyTorch run skipped: {e}"),
        }
    }
}

/// The PyTorch side of the model benchmarks.
pub(super) fn torch_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench/torch_model.py")
}

/// The script's result: the last non-empty line of its stdout, as JSON (`null` if it is not).
pub(super) fn last_json_line(stdout: &[u8]) -> Value {
    serde_json::from_slice(
        stdout.rsplit(|&c| c == b'\n').find(|l| !l.is_empty()).unwrap_or(b"null"),
    )
    .unwrap_or(Value::Null)
}

/// `BATCHxSEQ`, e.g. `4x512`.
pub(super) fn parse_shape(s: &str) -> anyhow::Result<(usize, usize)> {
    s.split_once('x')
        .and_then(|(b, t)| Some((b.parse().ok()?, t.parse().ok()?)))
        .filter(|&(b, t)| b > 0 && t > 0)
        .ok_or_else(|| anyhow::anyhow!("bad shape '{s}': expected BATCHxSEQ, e.g. 4x512"))
}
