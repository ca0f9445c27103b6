//! `distill plan --recipe R [--gpus N] [--gpu-memory-gb G]`: the estimated peak memory per rank of
//! a recipe's `[train]` in every shard mode, and the smallest device count that fits each.

use std::process::ExitCode;

use anyhow::Context;
use distill_models::ModelConfig;
use distill_student::train::parallel::ShardMode;
use distill_student::train::plan::{
    HOST_BANDWIDTH_GBS, MemoryPlan, PCIE_GBS, RunShape, known_config, min_ranks,
};
use distill_student::train::{TrainConfig, machine_memory_gb};

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
    // Every shard mode as the recipe would run it, and parameter sharding with offload.
    let on = RunShape { offload: false, ..shape };
    let mut columns: Vec<(String, RunShape, ShardMode)> =
        ShardMode::ALL.iter().map(|&m| (m.name().to_string(), on, m)).collect();
    columns.push(("+offload".into(), RunShape { offload: true, ..shape }, ShardMode::Parameters));
    let plans: Vec<MemoryPlan> =
        columns.iter().map(|(_, s, m)| MemoryPlan::new(&config, *s, gpus, *m)).collect();
    let mins: Vec<Option<usize>> =
        columns.iter().map(|(_, s, m)| min_ranks(&config, *s, *m, gb, 4096)).collect();
    // Offload's host memory is per node: `gpus` ranks (at most 8 per node) share it.
    let host_gb = cfg.parallel.host_memory_gb.unwrap_or_else(machine_memory_gb);
    let per_node = gpus.min(8);
    let off = &plans[plans.len() - 1];
    let cost = off.offload_cost();
    let (pcie_gbs, host_bw_gbs) = (PCIE_GBS, HOST_BANDWIDTH_GBS);
    let offload_s = cost.seconds(pcie_gbs, host_bw_gbs, per_node);
    if a.json {
        let rows: Vec<serde_json::Value> = plans
            .iter()
            .zip(&mins)
            .zip(&columns)
            .map(|((p, m), (name, _, _))| serde_json::json!({"mode": name, "per_rank_gb": p.total_gb(), "fits": p.total_gb() <= gb, "min_devices": m, "plan": p}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": source, "params": plans[0].params,
                "active_params": distill_models::spec::active_param_count(&config), "devices": gpus, "device_memory_gb": gb, "modes": rows,
                "offload": {"host_gb_per_rank": off.host_gb(), "host_gb_per_node": off.host_gb() * per_node as f64,
                    "host_memory_gb": host_gb, "fits_host": off.host_gb() * per_node as f64 <= host_gb,
                    "cost_per_step": cost, "seconds_per_step": offload_s, "pcie_gbs": pcie_gbs, "host_bandwidth_gbs": host_bw_gbs}
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let active = distill_models::spec::active_param_count(&config) as f64;
    if config.moe.is_some() {
        // Every expert is trained, so weights, gradients and moments count them all; a token's
        // compute and activations follow the active ones.
        println!(
            "model: {source}: {:.2}B parameters, {:.2}B active per token (Mixture of Experts)",
            plans[0].params as f64 / 1e9,
            active / 1e9
        );
    } else {
        println!("model: {source}: {:.2}B parameters", plans[0].params as f64 / 1e9);
    }
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
    for (name, _, _) in &columns {
        print!("{name:>12}");
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
    let parts: Vec<String> =
        off.host_parts().iter().map(|(n, b)| format!("{n} {:.1}", b / 1e9)).collect();
    println!(
        "(+offload = parameters with offload = \"cpu\": host memory {:.1} GB per rank ({}), {:.0} GB for the {per_node} rank(s) of a node against {host_gb:.0} GB: {}; per step each rank moves {:.1} GB to the host and {:.1} GB back, and the host optimizer touches {:.1} GB: about {offload_s:.1} s at {pcie_gbs:.0} GB/s PCIe and {host_bw_gbs:.0} GB/s host memory)",
        off.host_gb(),
        parts.join(", "),
        off.host_gb() * per_node as f64,
        if off.host_gb() * per_node as f64 <= host_gb { "fits" } else { "does NOT fit" },
        cost.to_host / 1e9,
        cost.to_device / 1e9,
        cost.host_optimizer / 1e9
    );
    Ok(ExitCode::SUCCESS)
}
