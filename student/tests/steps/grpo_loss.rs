//! The GRPO, Dr. GRPO and DAPO losses against TRL's formulas in PyTorch
//! (scripts/reference/grpo_loss.py, trl 1.16.0): on a tiny Llama and Qwen2, two prompts × G = 3
//! completions with fixed reward components. distill computes the advantages from the rewards,
//! the token weights of each aggregation, and the step; μ = 1 (the ratio is 1, held) and μ = 2
//! (an AdamW step, then the second iteration against the first's log-probs, where the clip
//! binds). The loss, the clip fraction, the KL, every per-tensor gradient norm and the global norm
//! agree within 1e-4 relative, with β = 0.04 and β = 0.

use std::path::Path;

use burn::tensor::DType;
use distill_models::checkpoint::Checkpoint;
use distill_models::device::{Autodiff, Cpu, CpuDevice};
use distill_models::hf;
use distill_models::rope::Rope;
use distill_models::spec::param_specs;
use distill_models::weights::MapSource;
use distill_student::grpo::{LossType, advantages, token_weights};
use distill_student::train::data::{Example, RlTargets};
use distill_student::train::optim::{AdamW, OptimConfig};
use distill_student::train::pack;
use distill_student::train::policy::PolicyLoss;
use distill_student::train::{Objective, StepSpec, single_step};
use serde_json::Value;

type B = Autodiff<Cpu>;

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-6)
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn check(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(name);
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grpo-loss.json")).unwrap())
            .unwrap();
    let g = r["g"].as_u64().unwrap() as usize;
    let temperature = r["temperature"].as_f64().unwrap();
    let max_completion = r["max_completion"].as_u64().unwrap() as usize;
    let lr = r["lr"].as_f64().unwrap();
    let u32s = |v: &Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let prompts: Vec<Vec<u32>> = r["prompts"].as_array().unwrap().iter().map(u32s).collect();
    let completions: Vec<Vec<u32>> =
        r["completions"].as_array().unwrap().iter().map(u32s).collect();
    let weights = f32s(&r["weights"]);
    let rewards: Vec<f64> = r["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| f32s(c).iter().zip(&weights).map(|(x, w)| (x * w) as f64).sum())
        .collect();
    let dev = CpuDevice::default();
    for (key, rec) in r["configs"].as_object().unwrap() {
        let loss = match rec["loss_type"].as_str().unwrap() {
            "grpo" => LossType::Grpo,
            "dr_grpo" => LossType::DrGrpo,
            "dapo" => LossType::Dapo,
            x => panic!("{x}"),
        };
        let scale = rec["scale_rewards"].as_str().unwrap() != "none";
        let adv = advantages(&rewards, g, scale);
        for (a, want) in adv.iter().zip(f32s(&rec["advantages"])) {
            assert!((*a as f32 - want).abs() < 1e-5, "{name} {key}: advantage {a} vs {want}");
        }
        let beta = rec["beta"].as_f64().unwrap();
        let policy = PolicyLoss {
            eps_low: rec["eps_low"].as_f64().unwrap(),
            eps_high: rec["eps_high"].as_f64().unwrap(),
            beta,
            temperature,
        };
        let lens: Vec<usize> = completions.iter().map(Vec::len).collect();
        let tw = token_weights(loss, &lens, max_completion);
        let old: Vec<Vec<f32>> = rec["old_logprobs"].as_array().unwrap().iter().map(f32s).collect();
        let reference: Vec<Vec<f32>> =
            rec["ref_logprobs"].as_array().unwrap().iter().map(f32s).collect();
        for (mu, its) in rec["iterations"].as_object().unwrap() {
            let mu: usize = mu.parse().unwrap();
            let examples: Vec<Example> = completions
                .iter()
                .enumerate()
                .map(|(s, comp)| {
                    let prompt = &prompts[s / g];
                    let mut ids = prompt.clone();
                    ids.extend(comp);
                    let mut assistant = vec![false; prompt.len()];
                    assistant.extend(vec![true; comp.len()]);
                    let rl = RlTargets {
                        start: prompt.len(),
                        advantage: adv[s] as f32,
                        weight: tw[s],
                        old_logprobs: if mu == 1 {
                            vec![f32::NAN; comp.len()]
                        } else {
                            old[s].clone()
                        },
                        ref_logprobs: if beta > 0.0 { reference[s].clone() } else { vec![] },
                    };
                    Example {
                        id: "s".into(),
                        prompt_id: "p".into(),
                        ids,
                        assistant,
                        kd: None,
                        rl: Some(rl),
                    }
                })
                .collect();
            // One row per completion, as TRL's padded batch.
            let len = examples.iter().map(|e| e.ids.len()).max().unwrap();
            let rows: Vec<Vec<usize>> = (0..examples.len()).map(|i| vec![i]).collect();
            let batch = pack::build(&examples, &rows, len, 0);
            assert_eq!(batch.rl.len(), lens.iter().sum::<usize>());
            let loaded = hf::load_model::<B>(&dir, &dev).unwrap();
            let mut model = loaded.model;
            let rope = Rope::<B>::new(&loaded.config, &dev);
            let mut opt = AdamW::new(OptimConfig {
                max_grad_norm: 0.0,
                weight_decay: 0.0,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                ..OptimConfig::default()
            });
            let spec = StepSpec {
                kd_weight: 0.0,
                max_grad_norm: 0.0,
                lr,
                compute: DType::F32,
                objective: Some(Objective::Policy(policy)),
            };
            for (it, want) in its.as_array().unwrap().iter().enumerate() {
                let what = format!("{name} {key} μ={mu} iteration {it}");
                if it == 1 {
                    // The second iteration at torch's weights after the AdamW step (Adam moves an
                    // entry whose gradient is float noise by ±lr; the optimizer has its own test).
                    model = moved(&dir, key, &loaded.config, &dev);
                }
                let out = single_step(
                    &mut model,
                    &rope,
                    &mut opt,
                    std::slice::from_ref(&batch),
                    &spec,
                    &dev,
                );
                let wl = want["loss"].as_f64().unwrap();
                assert!(
                    rel(out.loss, wl) < 1e-4 || (out.loss - wl).abs() < 1e-6,
                    "{what}: loss {} vs torch {wl}",
                    out.loss
                );
                let clip = out.policy.clipped / out.policy.tokens;
                let want_clip = want["clip_fraction"].as_f64().unwrap();
                assert!(
                    (clip - want_clip).abs() < 1e-9,
                    "{what}: clip fraction {clip} vs {want_clip}"
                );
                let kl = out.policy.kl / out.policy.tokens;
                let want_kl = want["kl"].as_f64().unwrap();
                assert!(
                    rel(kl, want_kl) < 1e-4 || (kl - want_kl).abs() < 1e-7,
                    "{what}: KL {kl} vs {want_kl}"
                );
                let wn = want["global_norm"].as_f64().unwrap();
                assert!(
                    rel(out.grad_norm, wn) < 1e-4,
                    "{what}: global norm {} vs {wn}",
                    out.grad_norm
                );
                for (t, v) in want["grad_norms"].as_object().unwrap() {
                    let got = out.grad_norms[t];
                    let v = v.as_f64().unwrap();
                    assert!(
                        rel(got, v) < 1e-4 || (got - v).abs() < 1e-7,
                        "{what}: {t} grad norm {got} vs torch {v}"
                    );
                }
            }
        }
    }
}

/// The weights torch's AdamW step left for `key`'s μ = 2 run.
fn moved(
    dir: &Path,
    key: &str,
    config: &distill_models::ModelConfig,
    dev: &CpuDevice,
) -> distill_models::model::CausalLm<B> {
    let ck = Checkpoint::open_files(&[dir.join("grpo-weights.safetensors")]).unwrap();
    let tensors = param_specs(config)
        .into_iter()
        .map(|p| {
            let data = ck.read_f32(&format!("{key}/{}", p.name), &p.shape).unwrap();
            (p.name, (p.shape, data))
        })
        .collect();
    let mut src = MapSource { tensors, origin: "grpo-weights.safetensors".into() };
    distill_models::model::CausalLm::load(config, &mut src, dev).unwrap()
}

#[test]
fn tiny_llama_matches_trl() {
    check("tiny-llama");
}

#[test]
fn tiny_qwen2_matches_trl() {
    check("tiny-qwen2");
}
