//! The train stage: SFT or on-policy distillation per `[train]`, then the curves; and the wiring
//! on-policy distillation needs (the teacher as a scorer, the judge, the vocabulary check).

use distill_student::train::data::DataReport;
use distill_student::train::{Observer, StepMetrics, Summary, TrainConfig};
use indicatif::ProgressBar;

struct Bar {
    pb: ProgressBar,
    /// What `eval` reports: the held-out loss, or an on-policy run's held-out reverse KL.
    eval_name: &'static str,
}

impl Observer for Bar {
    fn started(&mut self, total: u64, start: u64, d: &DataReport) {
        self.pb.set_length(total);
        self.pb.set_position(start);
        if d.traces == 0 {
            // A purely on-policy run reads no corpus.
            return;
        }
        eprintln!(
            "data: {} traces → {} train / {} eval examples ({} failed, {} truncated, {} overlong dropped; {} truncated to fit); {} train tokens, {} on assistant turns; {} with aligned teacher log-probs",
            d.traces,
            d.train_examples,
            d.eval_examples,
            d.dropped_failed,
            d.dropped_truncated,
            d.dropped_overlong,
            d.truncated,
            d.train_tokens,
            d.assistant_tokens,
            d.kd_aligned
        );
    }
    fn step(&mut self, m: &StepMetrics) {
        self.pb.set_position(m.step);
        self.pb.set_message(format!(
            "loss {:.4} | lr {:.2e} | gnorm {:.2} | {:.0} tok/s | MFU {:.1}%",
            m.loss,
            m.lr,
            m.grad_norm,
            m.tokens_per_s,
            100.0 * m.mfu
        ));
    }
    fn eval(&mut self, step: u64, loss: f64) {
        self.pb.println(format!("step {step}: {} {loss:.4}", self.eval_name));
    }
    fn saved(&mut self, dir: &std::path::Path) {
        self.pb.println(format!("checkpoint {}", dir.display()));
    }
}

/// "3.1416 → 2.7183", or only the final loss (a resumed run did not measure the first here).
pub fn eval_losses(first: Option<f64>, last: Option<f64>) -> String {
    match (first, last) {
        (Some(a), Some(b)) => format!("{a:.4} → {b:.4}"),
        (None, Some(b)) => format!("{b:.4} (the run resumed: its first evaluation was earlier)"),
        (Some(a), None) => format!("{a:.4}"),
        (None, None) => "not measured (eval_fraction = 0?)".into(),
    }
}

/// What a run's held-out figure is.
pub fn held_out_name(cfg: &TrainConfig) -> &'static str {
    match (&cfg.on_policy, &cfg.grpo) {
        (Some(_), _) => "held-out reverse KL",
        (None, Some(g)) if g.rewards.accuracy != 0.0 => "held-out pass@1",
        (None, Some(_)) => "held-out mean reward",
        (None, None) => "held-out loss",
    }
}

/// Train on the configured device, then draw the curves.
// A device is `Copy` on CPU but not on every backend the dispatch instantiates.
#[allow(clippy::clone_on_copy)]
pub fn run_train(
    cfg: &TrainConfig,
    recipe: serde_json::Value,
    resume: bool,
) -> anyhow::Result<Summary> {
    cfg.validate()?;
    let kinds = cfg.device_kinds()?;
    let nodes = cfg.parallel.nodes.max(1);
    if kinds.len() * nodes > 1 {
        eprintln!(
            "data parallel: {} ranks ({} node(s) × {}; this is node {}), shard = {}",
            kinds.len() * nodes,
            nodes,
            cfg.parallel.devices.as_deref().unwrap_or(""),
            cfg.parallel.node_rank,
            cfg.parallel.shard.name()
        );
    }
    let eval_name = held_out_name(cfg);
    let mut obs = Bar { pb: crate::progress::bar(Some(1), "steps"), eval_name };
    // The objective: GRPO, on-policy distillation, or SFT; one loop runs each.
    let judge = math_judge();
    let summary = if cfg.grpo.is_some() {
        crate::backend::dispatch_many!(kinds, |B, devices| {
            distill_student::grpo::train_grpo::<burn::backend::Autodiff<B>>(
                cfg,
                Some(&judge),
                recipe,
                devices,
                resume,
                &mut obs,
            )
        })?
    } else if let Some(op) = &cfg.on_policy {
        same_vocabulary(&cfg.model, &op.teacher)?;
        // The teacher behind an endpoint, or (built on the first device below) the local engine.
        let mut endpoint = endpoint_scorer(op)?;
        crate::backend::dispatch_many!(kinds, |B, devices| {
            let mut scorer: Box<dyn distill_models::score::Scorer + Send> = match endpoint.take() {
                Some(e) => Box::new(e),
                None => Box::new(local_scorer::<B>(op, &devices[0])?),
            };
            distill_student::onpolicy::train_on_policy::<burn::backend::Autodiff<B>>(
                cfg,
                scorer.as_mut(),
                Some(&judge),
                recipe,
                devices,
                resume,
                &mut obs,
            )
        })?
    } else {
        crate::backend::dispatch_many!(kinds, |B, devices| {
            if cfg.activation_checkpointing {
                distill_student::sft::train::<
                    burn::backend::Autodiff<
                        B,
                        burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing,
                    >,
                >(cfg, recipe, devices, resume, &mut obs)
            } else {
                distill_student::sft::train::<burn::backend::Autodiff<B>>(
                    cfg, recipe, devices, resume, &mut obs,
                )
            }
        })?
    };
    obs.pb.finish_and_clear();
    crate::plot::training_curves(&cfg.output.join("metrics.jsonl"), &cfg.output.join("loss.png"))?;
    Ok(summary)
}

/// How on-policy samples of prompts with a reference answer are judged: as rejection sampling
/// judges (the answer after any `<think>` block, math equivalence).
pub fn math_judge() -> impl Fn(&str, &str) -> (Option<String>, bool) {
    let math = distill_teacher::verify::math::MathConfig::default();
    move |gold: &str, text: &str| {
        let (reasoning, answer, _) = distill_data::think::split_think(text);
        distill_teacher::verify::math::judge(gold, &reasoning, &answer, &math)
    }
}

/// The teacher behind a vLLM server, when `op` names an endpoint.
pub fn endpoint_scorer(
    op: &distill_student::onpolicy::OnPolicyConfig,
) -> anyhow::Result<Option<distill_teacher::backend::score::EndpointScorer>> {
    use distill_teacher::backend::openai::OpenAiClient;
    let Some(ocfg) = op.endpoint.clone() else { return Ok(None) };
    Ok(Some(distill_teacher::backend::score::EndpointScorer {
        client: OpenAiClient::new(ocfg, None)?,
        policy: Default::default(),
    }))
}

/// The teacher on `device`, scored by the local engine.
pub fn local_scorer<B: burn::prelude::Backend>(
    op: &distill_student::onpolicy::OnPolicyConfig,
    device: &B::Device,
) -> anyhow::Result<distill_models::score::LocalScorer<B>> {
    let t = distill_models::hf::load_model::<B>(&op.teacher, device)?;
    let name = op
        .teacher
        .file_name()
        .map_or_else(|| "teacher".into(), |n| n.to_string_lossy().to_string());
    Ok(distill_models::score::LocalScorer::new(t.model, &t.config, device.clone(), name))
}

/// On-policy distillation scores the student's token ids with the teacher: both must read them
/// the same way. Refused before any model loads when the tokenizers' vocabularies differ.
pub fn same_vocabulary(student: &std::path::Path, teacher: &std::path::Path) -> anyhow::Result<()> {
    use distill_models::tokenizer::TextTokenizer;
    let s = TextTokenizer::from_dir(student)?;
    let t = TextTokenizer::from_dir(teacher)?;
    let Some(msg) = s.vocabulary_difference(&t) else { return Ok(()) };
    anyhow::bail!(
        "[train.on_policy] the student ({}) and the teacher ({}) have different vocabularies, so the teacher cannot score the student's token ids: {msg}",
        student.display(),
        teacher.display()
    )
}
