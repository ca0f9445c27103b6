//! Generation on a tiny Llama: the KV-cache path agrees with full forwards (which match
//! transformers, see reference.rs), batching with left padding changes nothing, seeds reproduce,
//! and stop tokens, max tokens and log-probs behave.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::TensorData;
use distill_data::FinishReason;
use distill_models::device::{Cpu, CpuDevice};
use distill_models::generate::{Engine, SamplingParams};
use distill_models::hf;
use distill_models::masks;
use distill_models::model::AttnMask;

fn load() -> hf::Loaded<Cpu> {
    hf::load_model::<Cpu>(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama"),
        &CpuDevice::default(),
    )
    .unwrap()
}

fn full_logits(m: &hf::Loaded<Cpu>, ids: &[u32]) -> Vec<f32> {
    let dev = CpuDevice::default();
    let rope = distill_models::rope::Rope::<Cpu>::new(&m.config, &dev);
    let n = ids.len();
    let t = Tensor::<Cpu, 2, Int>::from_data(
        TensorData::new(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, n]),
        &dev,
    );
    let l = m.model.forward(t, masks::positions(1, n, 0, &dev), &rope, &AttnMask::Causal);
    l.narrow(1, n - 1, 1).into_data().convert::<f32>().into_vec().unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32
}

#[test]
fn cached_greedy_decoding_equals_recomputing_everything() {
    let m = load();
    let engine = Engine::new(&m.model, &m.config, None, CpuDevice::default());
    let prompt = vec![5u32, 17, 42, 8, 77, 3];
    let out = engine
        .generate(
            std::slice::from_ref(&prompt),
            &SamplingParams { max_tokens: 12, ..Default::default() },
            |_| {},
        )
        .unwrap();
    let mut seq = prompt.clone();
    for &t in &out[0].ids {
        assert_eq!(t, argmax(&full_logits(&m, &seq)), "after {} tokens", seq.len() - prompt.len());
        seq.push(t);
    }
    assert_eq!(out[0].finish_reason, FinishReason::Length);
    assert_eq!(out[0].ids.len(), 12);
}

/// The cache grows a block (KV_BLOCK = 128 positions) at a time, and decoding attends to the
/// whole buffer behind a mask: across two block boundaries, with left padding in the batch, every
/// token and its log-probability equal a full forward over the unpadded sequence.
#[test]
fn the_cache_crosses_block_boundaries_with_padding_and_stays_exact() {
    assert_eq!(distill_models::model::KV_BLOCK, 128);
    let m = load();
    let engine = Engine::new(&m.model, &m.config, None, CpuDevice::default());
    let prompts: Vec<Vec<u32>> = [120usize, 97]
        .iter()
        .map(|&n| (0..n as u32).map(|i| 3 + (i * 37) % 90).collect())
        .collect();
    let out = engine
        .generate(
            &prompts,
            &SamplingParams { max_tokens: 150, logprobs: 1, ..Default::default() },
            |_| {},
        )
        .unwrap();
    for (p, c) in prompts.iter().zip(&out) {
        assert_eq!(c.ids.len(), 150);
        let lp = c.logprobs.as_ref().unwrap();
        let mut seq = p.clone();
        for (i, &t) in c.ids.iter().enumerate() {
            let full = full_logits(&m, &seq);
            assert_eq!(t, argmax(&full), "prompt of {}, token {i}", p.len());
            let max = full.iter().cloned().fold(f32::MIN, f32::max);
            let lse = max + full.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
            assert!(
                (lp.token_logprobs[i] - (full[t as usize] - lse)).abs() < 1e-4,
                "prompt of {}, token {i}",
                p.len()
            );
            seq.push(t);
        }
    }
}

#[test]
fn left_padded_batches_give_the_same_tokens_as_single_prompts() {
    let m = load();
    let engine = Engine::new(&m.model, &m.config, None, CpuDevice::default());
    let prompts = vec![vec![5u32, 17, 42], vec![9u32, 10, 11, 12, 13, 14, 15, 16], vec![60u32]];
    let params = SamplingParams { max_tokens: 10, ..Default::default() };
    let batch = engine.generate(&prompts, &params, |_| {}).unwrap();
    for (p, b) in prompts.iter().zip(&batch) {
        let alone = engine.generate(std::slice::from_ref(p), &params, |_| {}).unwrap();
        assert_eq!(b.ids, alone[0].ids, "prompt {p:?}");
    }
}

#[test]
fn seeds_reproduce_and_sampling_knobs_work() {
    let m = load();
    let engine = Engine::new(&m.model, &m.config, None, CpuDevice::default());
    let prompts = vec![vec![5u32, 17, 42], vec![9u32, 10]];
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        max_tokens: 16,
        seed: 7,
        ..Default::default()
    };
    let a = engine.generate(&prompts, &p, |_| {}).unwrap();
    let b = engine.generate(&prompts, &p, |_| {}).unwrap();
    assert_eq!(
        a.iter().map(|c| &c.ids).collect::<Vec<_>>(),
        b.iter().map(|c| &c.ids).collect::<Vec<_>>()
    );
    let c = engine.generate(&prompts, &SamplingParams { seed: 8, ..p.clone() }, |_| {}).unwrap();
    assert_ne!(a[0].ids, c[0].ids, "another seed should sample differently");
    // top_k = 1 is greedy whatever the temperature.
    let greedy = engine
        .generate(&prompts, &SamplingParams { max_tokens: 16, ..Default::default() }, |_| {})
        .unwrap();
    let k1 = engine.generate(&prompts, &SamplingParams { top_k: 1, ..p }, |_| {}).unwrap();
    assert_eq!(greedy[0].ids, k1[0].ids);
}

#[test]
fn stop_ids_end_a_sequence_and_logprobs_are_the_models() {
    let m = load();
    let engine = Engine::new(&m.model, &m.config, None, CpuDevice::default());
    let prompt = vec![5u32, 17, 42, 8];
    let free = engine
        .generate(
            std::slice::from_ref(&prompt),
            &SamplingParams { max_tokens: 8, logprobs: 5, ..Default::default() },
            |_| {},
        )
        .unwrap();
    // Stop at the third generated token.
    let stop = free[0].ids[2];
    let first_stop = free[0].ids.iter().position(|&t| t == stop).unwrap();
    let stopped = engine
        .generate(
            std::slice::from_ref(&prompt),
            &SamplingParams { max_tokens: 8, stop_ids: vec![stop], ..Default::default() },
            |_| {},
        )
        .unwrap();
    assert_eq!(stopped[0].ids, free[0].ids[..=first_stop].to_vec());
    assert_eq!(stopped[0].finish_reason, FinishReason::Stop);

    let lp = free[0].logprobs.as_ref().unwrap();
    assert_eq!((lp.k, lp.len()), (5, 8));
    let mut seq = prompt.clone();
    for pos in 0..lp.len() {
        let logits = full_logits(&m, &seq);
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let lse = max + logits.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
        let top: Vec<(u32, f32)> = lp.top(pos).collect();
        assert_eq!(top[0].0, lp.tokens[pos], "greedy picks the top-1");
        for (id, l) in &top {
            assert!((l - (logits[*id as usize] - lse)).abs() < 1e-4, "pos {pos} id {id}");
        }
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
        seq.push(lp.tokens[pos]);
    }
}
