//! `distill bench train`: a training step (forward + backward) at several shapes, each in its own
//! process so peak memory is that shape's alone, beside PyTorch eager on the same shapes.

use std::process::{Command, ExitCode};

use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    /// Shapes BATCHxSEQ (same tokens per step, growing context, shows the attention cost).
    #[arg(long, default_value = "4x512,2x1024,1x2048")]
    shapes: String,
    #[arg(long, default_value = "python3")]
    python: String,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn child(args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new(std::env::current_exe()?).args(args).output()?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let shapes = a
        .shapes
        .split(',')
        .map(|s| Ok((s, super::model::parse_shape(s)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dir = crate::models::smollm2_hf()?;
    let script = super::model::torch_script();
    let mut rows = Vec::new();
    println!("machine: {}\n", super::machine());
    println!(
        "| shape (batch × seq) | distill step | distill tokens/s | distill peak RSS | PyTorch step | PyTorch tokens/s | PyTorch peak RSS | distill / PyTorch time | memory ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (shape, (b, t)) in shapes {
        let ours =
            child(&["bench", "model", "--only", "train", "--train-shape", shape, "--no-torch"])?;
        let torch = Command::new(&a.python).arg(&script).arg(&dir).arg("train").arg(shape).output();
        let theirs = match torch {
            Ok(o) if o.status.success() => super::model::last_json_line(&o.stdout),
            _ => Value::Null,
        };
        let (s1, m1) = (
            ours["train_step"]["seconds"].as_f64().unwrap_or(f64::NAN),
            ours["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
        );
        let (s2, m2) = (
            theirs["train_step"]["seconds"].as_f64().unwrap_or(f64::NAN),
            theirs["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
        );
        let tokens = (b * t) as f64;
        println!(
            "| {shape} | {s1:.2} s | {:.0} | {:.0} MB | {s2:.2} s | {:.0} | {:.0} MB | {:.2}× | {:.2}× |",
            tokens / s1,
            m1,
            tokens / s2,
            m2,
            s1 / s2,
            m1 / m2
        );
        rows.push(json!({"shape": shape, "distill": ours, "torch": theirs, "machine": super::machine(), "cpu": crate::cpu_kernel::json()}));
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
