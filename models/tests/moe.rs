//! Mixture-of-Experts models against transformers: tiny random Qwen3-MoE configs recorded by
//! scripts/reference/moe_models.py — (a) a dense first layer (`mlp_only_layers`), top-2 of 8,
//! `norm_topk_prob`; (b) `decoder_sparse_step` 2, top-3 of 8, unnormalised weights. Logits within
//! 1e-4 of transformers' (f32), and 32 greedy tokens with the KV cache equal to transformers'
//! `generate`.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use distill_models::device::{Cpu, CpuDevice};
use distill_models::generate::{Engine, SamplingParams};
use distill_models::hf;
use distill_models::masks;
use distill_models::model::{AttnMask, FeedForward};
use distill_models::rope::Rope;
use safetensors::SafeTensors;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn ints(st: &SafeTensors, name: &str) -> (Vec<i64>, Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let v = t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    (v, t.shape().to_vec())
}

fn floats(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn check(name: &str, sparse_layers: &[usize]) {
    let dir = fixture(name);
    let dev = CpuDevice::default();
    let loaded = hf::load_model::<Cpu>(&dir, &dev).unwrap();
    assert!(loaded.unused.is_empty(), "{name}: unused tensors: {:?}", loaded.unused);
    let sparse: Vec<usize> = loaded
        .model
        .model
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(l.mlp, FeedForward::Sparse(_)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(sparse, sparse_layers, "{name}: sparse layers");
    let rope = Rope::<Cpu>::new(&loaded.config, &dev);
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();

    // Logits of two independent rows.
    let (ids, shape) = ints(&st, "ids_batch");
    let (b, t) = (shape[0], shape[1]);
    let x = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(ids, [b, t]), &dev);
    let got: Vec<f32> = loaded
        .model
        .forward(x, masks::positions(b, t, 0, &dev), &rope, &AttnMask::Causal)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap();
    let want = floats(&st, "logits_batch");
    assert_eq!(got.len(), want.len());
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("{name}: max |logit − transformers| = {err:.2e} over {} values", got.len());
    assert!(err <= 1e-4, "{name}: logits differ from transformers by {err}");

    // 32 greedy tokens with the KV cache, as transformers' generate made them.
    let (prompt, _) = ints(&st, "ids_prompt");
    let (greedy, _) = ints(&st, "greedy");
    let engine = Engine::new(&loaded.model, &loaded.config, None, dev);
    let prompt: Vec<u32> = prompt.iter().map(|&x| x as u32).collect();
    let out = engine
        .generate(
            std::slice::from_ref(&prompt),
            &SamplingParams { max_tokens: greedy.len(), stop_ids: vec![], ..Default::default() },
            |_| {},
        )
        .unwrap();
    let want: Vec<u32> = greedy.iter().map(|&x| x as u32).collect();
    assert_eq!(out[0].ids, want, "{name}: greedy continuation");
}

#[test]
fn qwen3_moe_with_a_dense_first_layer_and_normalised_top2_matches_transformers() {
    check("tiny-qwen3moe-a", &[1, 2]);
}

#[test]
fn qwen3_moe_with_sparse_step_2_and_unnormalised_top3_matches_transformers() {
    check("tiny-qwen3moe-b", &[1]);
}

/// A checkpoint exported by distill reloads to the same spec, and its config.json says the same
/// sparse layers and routing.
#[test]
fn qwen3_moe_exports_and_reloads_the_same_model() {
    let dev = CpuDevice::default();
    let src = fixture("tiny-qwen3moe-a");
    let a = hf::load_model::<Cpu>(&src, &dev).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    let opts = hf::ExportOptions {
        dtype: distill_models::checkpoint::SaveDtype::F32,
        ..Default::default()
    };
    hf::export(&a.model, &a.config, &hf::Assets::default(), &out, &opts).unwrap();
    let b = hf::load_model::<Cpu>(&out, &dev).unwrap();
    assert_eq!(b.config.moe, a.config.moe);
    assert_eq!(b.model.dims(), a.model.dims());
    assert!(b.unused.is_empty());
    let total = distill_models::spec::param_count(&a.config);
    let active = distill_models::spec::active_param_count(&a.config);
    // Two sparse layers of 8 experts, 2 active: 6 experts' SwiGLU (3·64·32) idle per layer.
    assert_eq!(total - active, 2 * 6 * 3 * 64 * 32);
}

/// Bad MoE configs are refused naming the field.
#[test]
fn impossible_routing_is_refused_naming_the_field() {
    let base = std::fs::read_to_string(fixture("tiny-qwen3moe-a").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
    v["num_experts_per_tok"] = 9.into();
    let e = distill_models::ModelConfig::from_json(&v.to_string()).unwrap_err();
    assert!(e.0.contains("num_experts_per_tok (9) must not exceed num_experts (8)"), "{e}");
    let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
    v.as_object_mut().unwrap().remove("moe_intermediate_size");
    let e = distill_models::ModelConfig::from_json(&v.to_string()).unwrap_err();
    assert!(e.0.contains("moe_intermediate_size"), "{e}");
}
