//! The on-policy losses against PyTorch (scripts/reference/onpolicy_loss.py): on a tiny Llama and
//! Qwen2, two student samples scored by a synthetic teacher — the sampled-token reverse KL and
//! GKD's generalised JSD at beta 0, 0.5 and 1 over the teacher's top-k (one position padded):
//! the loss, every per-tensor gradient norm and the global norm within 1e-4 relative.

use std::path::Path;

use burn::tensor::DType;
use distill_models::device::{Autodiff, Cpu, CpuDevice};
use distill_models::hf;
use distill_models::rope::Rope;
use distill_student::train::data::{Example, KdTargets};
use distill_student::train::divergence::Divergence;
use distill_student::train::optim::{AdamW, OptimConfig};
use distill_student::train::pack;
use distill_student::train::{StepSpec, single_step};
use serde_json::Value;

type B = Autodiff<Cpu>;

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-6)
}

fn check(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(name);
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("onpolicy-loss.json")).unwrap())
            .unwrap();
    let k = r["k"].as_u64().unwrap() as usize;
    let dev = CpuDevice::default();
    let loaded = hf::load_model::<B>(&dir, &dev).unwrap();
    let mut model = loaded.model;
    let rope = Rope::<B>::new(&loaded.config, &dev);
    let u32s = |v: &Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    // Each sample is one document: its completion tokens are the targets and carry the teacher's
    // scores (token `start + j` is predicted at position `start + j - 1`).
    let examples: Vec<Example> = r["samples"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["teacher"].as_array().unwrap())
        .map(|(s, t)| {
            let (prompt, comp) = (u32s(&s[0]), u32s(&s[1]));
            let mut ids = prompt.clone();
            ids.extend(&comp);
            let mut assistant = vec![false; prompt.len()];
            assistant.extend(vec![true; comp.len()]);
            let (mut tids, mut tlps, mut tok) = (vec![], vec![], vec![]);
            for row in t.as_array().unwrap() {
                tok.push(row[0].as_f64().unwrap() as f32);
                for (i, l) in row[1].as_array().unwrap().iter().zip(row[2].as_array().unwrap()) {
                    tids.push(i.as_u64().map_or(u32::MAX, |i| i as u32));
                    tlps.push(l.as_f64().map_or(f32::NEG_INFINITY, |l| l as f32));
                }
            }
            let kd = KdTargets {
                start: prompt.len(),
                k,
                ids: tids,
                logprobs: tlps,
                token_logprobs: tok,
            };
            Example {
                id: "s".into(),
                prompt_id: "p".into(),
                ids,
                assistant,
                kd: Some(kd),
                rl: None,
            }
        })
        .collect();
    let len: usize = examples.iter().map(|e| e.ids.len()).sum();
    let batch = pack::build(&examples, &[vec![0, 1]], len, 0);
    assert_eq!(batch.kd.len(), batch.kd_token.len());
    for (key, div) in [
        ("reverse_kl", Divergence::ReverseKl),
        ("gkd_beta0", Divergence::Gkd { beta: 0.0 }),
        ("gkd_beta0.5", Divergence::Gkd { beta: 0.5 }),
        ("gkd_beta1", Divergence::Gkd { beta: 1.0 }),
    ] {
        let want = &r["losses"][key];
        // lr 0 and no clipping: the step only measures.
        let mut opt = AdamW::new(OptimConfig { max_grad_norm: 0.0, ..OptimConfig::default() });
        let spec = StepSpec {
            kd_weight: 0.0,
            max_grad_norm: 0.0,
            lr: 0.0,
            compute: DType::F32,
            objective: Some(div.into()),
        };
        let out =
            single_step(&mut model, &rope, &mut opt, std::slice::from_ref(&batch), &spec, &dev);
        let wl = want["loss"].as_f64().unwrap();
        assert!(
            rel(out.loss, wl) < 1e-4 || (out.loss - wl).abs() < 1e-6,
            "{name} {key}: loss {} vs torch {wl}",
            out.loss
        );
        let wn = want["global_norm"].as_f64().unwrap();
        assert!(
            rel(out.grad_norm, wn) < 1e-4,
            "{name} {key}: global norm {} vs torch {wn}",
            out.grad_norm
        );
        for (t, v) in want["grad_norms"].as_object().unwrap() {
            let got = out.grad_norms[t];
            let v = v.as_f64().unwrap();
            assert!(
                rel(got, v) < 1e-4 || (got - v).abs() < 1e-7,
                "{name} {key}: {t} grad norm {got} vs torch {v}"
            );
        }
    }
}

#[test]
fn tiny_llama_matches_torch() {
    check("tiny-llama");
}

#[test]
fn tiny_qwen2_matches_torch() {
    check("tiny-qwen2");
}
