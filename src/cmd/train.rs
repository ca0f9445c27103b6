//! `distill train --recipe R.toml [--resume]`: SFT from a trace corpus to an exported student.

use std::process::ExitCode;

use distill_student::train::TrainConfig;

use crate::stages::train::{eval_losses, run_train};

use crate::recipe::{RecipeArgs, Stage};

#[derive(clap::Args)]
pub struct Args {
    /// A recipe with a [train] section.
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Check the recipe and list what the stage reads, without running it.
    #[arg(long)]
    check: bool,
    /// Continue from the newest checkpoint in the run directory.
    #[arg(long)]
    resume: bool,
    /// This node's devices, one rank each: `cpu:4` (four CPU peers) or `cuda:0,cuda:1,…`
    /// (sets `[train.parallel] devices`).
    #[arg(long)]
    devices: Option<String>,
    /// Nodes in a multi-node run (each runs this command with its own --node-rank).
    #[arg(long)]
    nodes: Option<usize>,
    /// This node's rank, 0-based; node 0 runs the coordinator.
    #[arg(long)]
    node_rank: Option<usize>,
    /// HOST:PORT of the coordinator on node 0.
    #[arg(long)]
    coordinator: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let loaded = a.recipe.load()?;
    if a.check {
        loaded.print_check(Stage::Train)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut cfg: TrainConfig = loaded.train()?.clone();
    if let Some(d) = a.devices {
        cfg.parallel.devices = Some(d);
    }
    if let Some(n) = a.nodes {
        cfg.parallel.nodes = n;
    }
    if let Some(r) = a.node_rank {
        cfg.parallel.node_rank = r;
    }
    if let Some(c) = a.coordinator {
        cfg.parallel.coordinator = Some(c);
    }
    crate::stages::ensure_prepared(&loaded, Stage::Train)?;
    loaded.preflight(&[Stage::Train], false, false)?;
    let recipe = serde_json::to_value(&loaded.resolved)?;
    let s = run_train(&cfg, recipe, a.resume)?;
    println!(
        "trained {} steps; eval loss {}",
        s.steps,
        eval_losses(s.first_eval_loss, s.final_eval_loss)
    );
    println!("exported {}", s.export_dir.display());
    println!("curves {}", cfg.output.join("loss.png").display());
    Ok(ExitCode::SUCCESS)
}
