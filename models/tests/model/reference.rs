//! The models against transformers: tiny random Llama (llama3 rope, untied head), Qwen2 (q/k/v
//! bias, tied) and Qwen3 (q/k norm), recorded by scripts/reference/tiny_models.py.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use distill_models::device::{Cpu, CpuDevice};
use distill_models::hf;
use distill_models::masks;
use distill_models::model::AttnMask;
use distill_models::rope::Rope;
use safetensors::SafeTensors;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Reference {
    ids: Vec<i64>,
    shape: Vec<usize>,
    logits: Vec<f32>,
}

fn reference(dir: &Path, which: &str) -> Reference {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor(&format!("ids_{which}")).unwrap();
    let logits = st.tensor(&format!("logits_{which}")).unwrap();
    Reference {
        ids: ids
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        shape: ids.shape().to_vec(),
        logits: logits
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn to_vec(t: Tensor<Cpu, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

fn check(name: &str) {
    let dir = fixture(name);
    let dev = CpuDevice::default();
    let loaded = hf::load_model::<Cpu>(&dir, &dev).unwrap();
    assert!(loaded.unused.is_empty(), "unused tensors: {:?}", loaded.unused);
    let model = loaded.model;
    let rope = Rope::<Cpu>::new(&loaded.config, &dev);

    // Two independent rows, plain causal attention.
    let r = reference(&dir, "batch");
    let (b, t) = (r.shape[0], r.shape[1]);
    let ids = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(r.ids.clone(), [b, t]), &dev);
    let got = to_vec(model.forward(ids, masks::positions(b, t, 0, &dev), &rope, &AttnMask::Causal));
    let err = max_abs(&got, &r.logits);
    eprintln!("{name}: batch err {err}, {} values", got.len());
    assert!(err <= 1e-4, "{name}: batch logits differ from transformers by {err}");

    // The three documents packed into one row (block-diagonal mask, positions restarting)
    // give the logits transformers gives for each document alone.
    let r = reference(&dir, "docs");
    let (n, len) = (r.shape[0], r.shape[1]);
    let ids = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(r.ids.clone(), [1, n * len]), &dev);
    let doc_ids: Vec<u32> = (0..n * len).map(|i| (i / len) as u32).collect();
    let (mask, pos) = masks::packed::<Cpu>(&[doc_ids], &dev);
    let got = to_vec(model.forward(ids, pos, &rope, &mask));
    let err = max_abs(&got, &r.logits);
    eprintln!("{name}: packed err {err}");
    assert!(err <= 1e-4, "{name}: packed logits differ from transformers by {err}");
}

#[test]
fn tiny_llama_matches_transformers() {
    check("tiny-llama");
}

#[test]
fn tiny_qwen2_matches_transformers() {
    check("tiny-qwen2");
}

#[test]
fn tiny_qwen3_matches_transformers() {
    check("tiny-qwen3");
}
