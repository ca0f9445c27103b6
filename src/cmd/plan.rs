//! `distill plan --recipe R [--gpus N] [--gpu-memory-gb G]`: the estimated peak memory per rank of
//! a recipe's `[train]` in every shard mode, and the smallest device count that fits each.

use std::process::ExitCode;

use anyhow::Context;
use distill_models::ModelConfig;
use distill_student::sft::parallel::ShardMode;
use distill_student::sft::plan::{MemoryPlan, RunShape, known_config, min_ranks};
use distill_student::sft::train::{TrainConfig, machine_memory_gb};

#[derive(clap::Args)]
pub struct Args {
    /// A recipe with a [train] section.
    #[command(flatten)]
    recipe: crate::recipe::RecipeArgs,
    /// Devices (ranks) to plan for (default: `[train.parallel] devices`, else 1).
    #[arg(long)]
    gpus: Option<usize>,
    /// Memory of one device, GB (default: `[train] device_memory_gb`, else this machine's RAM).
    #[arg(long)]
    gpu_memory_gb: Option<f64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The student's architecture: its config.json when the model directory exists, else the
/// published config of the recipe's `[recipe] base_model`.
pub fn model_config(
    meta: &crate::recipe::Meta,
    cfg: &TrainConfig,
) -> anyhow::Result<(ModelConfig, String)> {
    let path = cfg.model.join("config.json");
    if path.exists() {
        return Ok((ModelConfig::from_file(&path)?, path.display().to_string()));
    }
    let base = meta.base_model.as_deref();
    match base.and_then(|b| known_config(b).map(|c| (c, b))) {
        Some((c, b)) => Ok((c, format!("{b} (published config.json)"))),
        None => anyhow::bail!(
            "{} does not exist and the recipe's [recipe] base_model ({}) is not one distill knows; point train.model at the model directory",
            path.display(),
            base.unwrap_or("unset")
        ),
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let loaded = a.recipe.load()?;
    let cfg: &TrainConfig = loaded.train()?;
    let (config, source) = model_config(&loaded.recipe.recipe, cfg).map_err(|e| match loaded.made_by(&cfg.model) {
        Some(stage) => e.context(format!("[train] model is made by this recipe's {stage} stage: run `distill run {} --only {stage}` first", loaded.path.display())),
        None => e,
    })?;
    let gpus = match a.gpus {
        Some(n) => n,
        None => cfg.device_kinds().map(|k| k.len()).context("[train.parallel] devices")?,
    }
    .max(1);
    let gb = a.gpu_memory_gb.or(cfg.device_memory_gb).unwrap_or_else(machine_memory_gb);
    let shape = RunShape::of(cfg);
    let plans: Vec<MemoryPlan> =
        ShardMode::ALL.iter().map(|&m| MemoryPlan::new(&config, shape, gpus, m)).collect();
    let mins: Vec<Option<usize>> =
        ShardMode::ALL.iter().map(|&m| min_ranks(&config, shape, m, gb, 4096)).collect();
    if a.json {
        let rows: Vec<serde_json::Value> = plans
            .iter()
            .zip(&mins)
            .zip(ShardMode::ALL)
            .map(|((p, m), mode)| serde_json::json!({"mode": mode.name(), "per_rank_gb": p.total_gb(), "fits": p.total_gb() <= gb, "min_devices": m, "plan": p}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"model": source, "params": plans[0].params, "devices": gpus, "device_memory_gb": gb, "modes": rows})
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("model: {source}: {:.2}B parameters", plans[0].params as f64 / 1e9);
    println!(
        "run: micro_batch {} × {} tokens, grad_accum {}, activation checkpointing {}, compute {}",
        shape.micro_batch,
        shape.seq,
        shape.grad_accum,
        if shape.checkpointing { "on" } else { "off" },
        if shape.bf16 { "bf16" } else { "f32" }
    );
    println!("per rank at {gpus} device(s) of {gb:.0} GB, GB:\n");
    print!("{:<26}", "");
    for m in ShardMode::ALL {
        print!("{:>12}", m.name());
    }
    println!();
    for (k, (name, _)) in plans[0].parts().iter().enumerate() {
        print!("{name:<26}");
        for p in &plans {
            print!("{:>12.1}", p.parts()[k].1 / 1e9);
        }
        println!();
    }
    print!("{:<26}", "total");
    for p in &plans {
        print!("{:>12.1}", p.total_gb());
    }
    println!();
    print!("{:<26}", "fits");
    for p in &plans {
        print!("{:>12}", if p.total_gb() <= gb { "yes" } else { "no" });
    }
    println!();
    print!("{:<26}", "fewest devices that fit");
    for m in &mins {
        print!("{:>12}", m.map_or("none".to_string(), |n| n.to_string()));
    }
    println!(
        "\n\n(parameters = FSDP / ZeRO-3: weights, moments and gradients sharded; layers gathered one at a time)"
    );
    Ok(ExitCode::SUCCESS)
}
