//! `[train.grpo] compare`: after a GRPO (or Dr. GRPO, DAPO) run, the experiment that says whether
//! the policy gradient was worth it against more SFT. The SFT arm is online rejection-sampling
//! fine-tuning (DeepSeekMath's Online RFT): from the same model, on the same prompts with the same
//! rollout settings, it trains by plain SFT on the samples the verifier passes, for the seconds
//! the GRPO run spent in optimizer steps (rollouts included in both). Both runs measure held-out
//! pass@1 on the same prompts with the same seeds before their first step and after their last.
//!
//! The arm is a run directory of its own (`{run_dir}/rft-arm`), resumed after a crash like any
//! run; once finished it is recorded in its `arm.json` and not rerun.

use anyhow::Context;
use distill_data::fsutil::atomic_write;
use distill_student::grpo::LossType;
use distill_student::train::{Summary, TrainConfig};
use serde_json::json;

use super::onpolicy::{arm, step_seconds};
use crate::recipe::Loaded;

/// The online-RFT arm's configuration: `t` with the loss, output and clock replaced.
pub fn rft_arm(l: &Loaded, t: &TrainConfig, seconds: f64, steps: u64) -> TrainConfig {
    let mut c = t.clone();
    c.output = l.paths.run_dir.join("rft-arm");
    // The clock stops it; the cap (4× the GRPO run's steps) only bounds a run of very short steps.
    // The optimizer and its schedule are the recipe's (a constant rate gives both arms the same).
    c.max_steps = Some((4 * steps).max(1));
    c.max_step_seconds = Some(seconds.max(1e-3));
    let g = c.grpo.as_mut().expect("a GRPO run");
    g.loss = LossType::OnlineRft;
    g.compare = false;
    g.beta = 0.0;
    c
}

/// Train the online-RFT arm for the time `t`'s run took (`s`), and compare held-out pass@1.
pub fn run(l: &Loaded, t: &TrainConfig, s: &Summary) -> anyhow::Result<serde_json::Value> {
    let g = t.grpo.as_ref().expect("a GRPO run");
    let secs = step_seconds(&t.output.join("metrics.jsonl"))?;
    let recipe = serde_json::to_value(&l.resolved)?;
    println!(
        "  compare: an online-RFT arm from the same model for the GRPO run's {secs:.1} s of steps"
    );
    let rft = arm(&rft_arm(l, t, secs, s.steps), &recipe, "online RFT (equal time)")
        .context("[train.grpo] compare")?;
    let out = json!({
        "figure": super::train::held_out_name(t),
        "held_out_prompts": g.eval_prompts,
        "samples_per_prompt": g.eval_samples,
        "arms": [
            {
                "arm": g.loss_name(),
                "dir": t.output,
                "steps": s.steps,
                "step_seconds": secs,
                "before": s.first_eval_loss,
                "after": s.final_eval_loss,
            },
            {
                "arm": "online_rft",
                "dir": l.paths.run_dir.join("rft-arm"),
                "steps": rft.steps,
                "step_seconds": rft.step_seconds,
                "before": rft.first_eval,
                "after": rft.final_eval,
            },
        ],
    });
    print_table(&out);
    let path = l.paths.run_dir.join("eval/grpo-comparison.json");
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    atomic_write(&path, &serde_json::to_vec_pretty(&out)?)?;
    Ok(out)
}

fn print_table(c: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().map_or("–".to_string(), |x| format!("{x:.3}"));
    println!(
        "  {} on {} held-out prompts × {} samples (the same seeds for both arms):",
        c["figure"].as_str().unwrap_or(""),
        c["held_out_prompts"],
        c["samples_per_prompt"]
    );
    println!("  {:<12} {:>6} {:>10} {:>8} {:>8}", "arm", "steps", "step s", "before", "after");
    for a in c["arms"].as_array().into_iter().flatten() {
        println!(
            "  {:<12} {:>6} {:>10.1} {:>8} {:>8}",
            a["arm"].as_str().unwrap_or(""),
            a["steps"],
            a["step_seconds"].as_f64().unwrap_or(0.0),
            f(&a["before"]),
            f(&a["after"])
        );
    }
}
