//! The `on-policy` stage of `distill run`: on-policy distillation from the train stage's export
//! (`[on_policy]`), and with `compare` the experiment that says whether it was worth it — an SFT
//! arm given the same time in optimizer steps, then the three students (after SFT, + more SFT,
//! + on-policy) measured on the same held-out prompts with the same sampling seeds.
//!
//! Each arm is a run directory of its own, resumed after a crash like any training run; an arm
//! that finished is recorded in its `arm.json` and not rerun.

use std::path::{Path, PathBuf};

use anyhow::Context;
use distill_data::fsutil::atomic_write;
use distill_student::onpolicy::{HeldOut, measure_held_out};
use distill_student::train::TrainConfig;
use serde_json::json;

use crate::recipe::Loaded;

/// A finished arm: its steps, the seconds its optimizer steps took, its export.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Arm {
    pub steps: u64,
    /// Seconds in optimizer steps (an on-policy step's sampling and scoring included); loading,
    /// evaluation, checkpoints and export are outside it in both arms.
    pub step_seconds: f64,
    pub export: PathBuf,
    /// The run's own held-out figure before its first step and after its last (its
    /// `held_out_name`), where it measured one.
    #[serde(default)]
    pub first_eval: Option<f64>,
    #[serde(default)]
    pub final_eval: Option<f64>,
    /// The run's configuration (a changed recipe does not silently reuse an old arm).
    pub config: serde_json::Value,
}

/// The sum of the steps' `step_s` in a run's metrics.jsonl.
pub(super) fn step_seconds(metrics: &Path) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let mut total = 0.0;
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}", metrics.display(), i + 1))?;
        total += v["step_s"].as_f64().unwrap_or(0.0);
    }
    Ok(total)
}

/// Train `cfg` unless its `arm.json` says it finished with this configuration.
pub(super) fn arm(
    cfg: &TrainConfig,
    recipe: &serde_json::Value,
    what: &str,
) -> anyhow::Result<Arm> {
    let done = cfg.output.join("arm.json");
    let config = serde_json::to_value(cfg)?;
    if done.exists() {
        let a: Arm = serde_json::from_slice(&std::fs::read(&done)?)
            .with_context(|| format!("reading {}", done.display()))?;
        anyhow::ensure!(
            a.config == config,
            "{}: the {what} arm there was trained with another configuration; delete {} to train it again",
            done.display(),
            cfg.output.display()
        );
        println!("  {what}: done earlier ({} steps, {:.1} s of steps)", a.steps, a.step_seconds);
        return Ok(a);
    }
    let resume =
        !distill_student::train::checkpoint::list(&cfg.output.join("checkpoints"))?.is_empty();
    let s = super::train::run_train(cfg, recipe.clone(), resume)
        .with_context(|| format!("the {what} arm"))?;
    let a = Arm {
        steps: s.steps,
        step_seconds: step_seconds(&cfg.output.join("metrics.jsonl"))?,
        export: s.export_dir,
        first_eval: s.first_eval_loss,
        final_eval: s.final_eval_loss,
        config,
    };
    atomic_write(&done, &serde_json::to_vec_pretty(&a)?)?;
    println!(
        "  {what}: {} steps in {:.1} s of steps → {}",
        a.steps,
        a.step_seconds,
        a.export.display()
    );
    Ok(a)
}

pub fn run(l: &Loaded) -> anyhow::Result<serde_json::Value> {
    let o = l.on_policy()?;
    let train = l.train()?;
    let recipe = serde_json::to_value(&l.resolved)?;
    let op_cfg = l.on_policy_train()?;
    super::train::same_vocabulary(&op_cfg.model, &o.policy.teacher)?;
    let on = arm(&op_cfg, &recipe, "on-policy")?;
    if !o.compare {
        return Ok(json!({"on_policy": on, "on_policy_dir": op_cfg.output}));
    }
    // The SFT arm gets the time the on-policy steps took.
    let sft = arm(&l.sft_arm(on.step_seconds)?, &recipe, "SFT (equal time)")?;

    let sft_export = train.output.join("export");
    let students: [(&str, &Path); 3] = [
        ("after SFT", &sft_export),
        ("+ SFT (equal time)", &sft.export),
        ("+ on-policy", &on.export),
    ];
    let held = held_out(l, &students)?;
    // Agreement needs the teacher's weights here: not with an endpoint teacher.
    let agree = match &o.policy.endpoint {
        None => Some(super::agreement::measure(
            train,
            &o.policy.teacher,
            &students.iter().map(|(_, d)| *d).collect::<Vec<_>>(),
            o.max_traces,
        )?),
        Some(_) => None,
    };
    let rows: Vec<serde_json::Value> = students
        .iter()
        .enumerate()
        .map(|(i, (name, dir))| {
            json!({
                "student": name,
                "dir": dir,
                "held_out": held[i],
                "agreement": agree.as_ref().map(|a| &a.students[i]),
            })
        })
        .collect();
    let out = json!({
        "on_policy_dir": op_cfg.output,
        "sft_arm_dir": l.paths.run_dir.join("sft-arm"),
        "held_out_prompts": held[0].prompts,
        "loss": o.policy.loss_name(),
        "arms": {"on_policy": {"steps": on.steps, "step_seconds": on.step_seconds},
                 "sft": {"steps": sft.steps, "step_seconds": sft.step_seconds}},
        "students": rows,
    });
    print_table(&out);
    let path = l.paths.run_dir.join("eval/on-policy-comparison.json");
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    atomic_write(&path, &serde_json::to_vec_pretty(&out)?)?;
    Ok(out)
}

/// Each student on the held-out prompts (one sample each, the same seeds), scored by the teacher.
#[allow(clippy::clone_on_copy)]
fn held_out(l: &Loaded, students: &[(&str, &Path)]) -> anyhow::Result<Vec<HeldOut>> {
    let (o, train) = (l.on_policy()?, l.train()?);
    let judge = super::train::math_judge();
    let mut endpoint = super::train::endpoint_scorer(&o.policy)?;
    let kind = train.device_kinds()?.first().copied().unwrap_or_default();
    crate::backend::dispatch!(kind, |B, device| {
        let scorer: Box<dyn distill_models::score::Scorer> = match endpoint.take() {
            Some(e) => Box::new(e),
            None => Box::new(super::train::local_scorer::<B>(&o.policy, &device)?),
        };
        let pb = crate::progress::bar(Some(students.len() as u64), "students sampled");
        let mut out = Vec::with_capacity(students.len());
        for (name, dir) in students {
            pb.set_message(name.to_string());
            out.push(
                measure_held_out::<B>(
                    dir,
                    &o.policy,
                    train.data.max_seq_len,
                    scorer.as_ref(),
                    Some(&judge),
                    &device,
                )
                .with_context(|| format!("measuring {name} ({})", dir.display()))?,
            );
            pb.inc(1);
        }
        pb.finish_and_clear();
        Ok::<_, anyhow::Error>(out)
    })
}

fn print_table(c: &serde_json::Value) {
    println!(
        "  equal time in optimizer steps: on-policy {} steps in {:.1} s, SFT {} steps in {:.1} s",
        c["arms"]["on_policy"]["steps"],
        c["arms"]["on_policy"]["step_seconds"].as_f64().unwrap_or(0.0),
        c["arms"]["sft"]["steps"],
        c["arms"]["sft"]["step_seconds"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  {:<20} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9}",
        "student", "rev. KL", "teach. NLL", "EOS", "tokens", "agree acc", "fwd KL"
    );
    for s in c["students"].as_array().into_iter().flatten() {
        let h = &s["held_out"];
        let a = &s["agreement"];
        let f = |v: &serde_json::Value, w: usize, p: usize| {
            v.as_f64().map_or(format!("{:>w$}", "–"), |x| format!("{x:>w$.p$}"))
        };
        println!(
            "  {:<20} {} {} {} {} {} {}",
            s["student"].as_str().unwrap_or(""),
            f(&h["reverse_kl"], 10, 3),
            f(&h["teacher_nll"], 10, 3),
            f(&h["eos_fraction"], 8, 2),
            f(&h["sample_tokens"], 8, 1),
            f(&a["next_token_accuracy"], 9, 3),
            f(&a["kl"], 9, 3),
        );
    }
}
