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
/// sparse layers, routing, MLA dimensions and YaRN scaling (so the same softmax scale).
#[test]
fn moe_and_mla_models_export_and_reload_the_same_model() {
    let dev = CpuDevice::default();
    for name in ["tiny-qwen3moe-a", "tiny-deepseek-v3-a", "tiny-deepseek-v2-group"] {
        let a = hf::load_model::<Cpu>(&fixture(name), &dev).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("export");
        let opts = hf::ExportOptions {
            dtype: distill_models::checkpoint::SaveDtype::F32,
            ..Default::default()
        };
        hf::export(&a.model, &a.config, &hf::Assets::default(), &out, &opts).unwrap();
        let b = hf::load_model::<Cpu>(&out, &dev).unwrap();
        assert_eq!(b.config.moe, a.config.moe, "{name}");
        assert_eq!(b.config.mla, a.config.mla, "{name}");
        assert_eq!(b.config.rope_scaling, a.config.rope_scaling, "{name}");
        assert_eq!(b.model.dims(), a.model.dims(), "{name}");
        assert!(b.unused.is_empty(), "{name}: {:?}", b.unused);
    }
    let a = hf::load_model::<Cpu>(&fixture("tiny-qwen3moe-a"), &dev).unwrap();
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

#[test]
fn deepseek_v3_with_q_lora_yarn_group_limited_routing_and_a_dense_first_layer_matches_transformers()
{
    check("tiny-deepseek-v3-a", &[1, 2]);
}

#[test]
fn deepseek_v3_without_q_lora_with_two_shared_experts_matches_transformers() {
    check("tiny-deepseek-v3-b", &[0, 1, 2]);
}

#[test]
fn deepseek_v2_softmax_greedy_routing_matches_transformers() {
    check("tiny-deepseek-v2", &[1, 2]);
}

#[test]
fn deepseek_v2_group_limited_greedy_with_yarn_mscale_matches_transformers() {
    check("tiny-deepseek-v2-group", &[0, 1, 2]);
}

/// MLA's compressed cache: greedy decoding with the cache (the latent and the rotary key per
/// token) gives the tokens a full forward over the whole sequence gives at every step, and the
/// cache holds `kv_lora_rank + qk_rope_head_dim` values per token and layer.
#[test]
fn mla_compressed_cache_decodes_like_full_forwards_and_is_small() {
    let dev = CpuDevice::default();
    let m = hf::load_model::<Cpu>(&fixture("tiny-deepseek-v3-a"), &dev).unwrap();
    let rope = Rope::<Cpu>::new(&m.config, &dev);
    let prompt = vec![5u32, 17, 42, 8, 77, 3];
    let engine = Engine::new(&m.model, &m.config, None, dev);
    let out = engine
        .generate(
            std::slice::from_ref(&prompt),
            &SamplingParams { max_tokens: 20, stop_ids: vec![], ..Default::default() },
            |_| {},
        )
        .unwrap();
    let mut seq = prompt.clone();
    for &tok in &out[0].ids {
        let n = seq.len();
        let ids = Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(seq.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, n]),
            &dev,
        );
        let l: Vec<f32> = m
            .model
            .forward(ids, masks::positions(1, n, 0, &dev), &rope, &AttnMask::Causal)
            .narrow(1, n - 1, 1)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap();
        let best = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as u32;
        assert_eq!(tok, best, "after {} tokens", n - prompt.len());
        seq.push(tok);
    }
    let mla = m.config.mla.unwrap();
    let full = m.config.num_attention_heads * (mla.qk_head() + mla.v_head);
    eprintln!(
        "MLA cache: {} values per token and layer, against {full} for full keys and values ({:.1}×)",
        mla.cache_per_token(),
        full as f64 / mla.cache_per_token() as f64
    );
    assert_eq!(mla.cache_per_token(), 16 + 8);
    assert_eq!(full, 4 * (24 + 16));
}

/// Bad DeepSeek configs are refused naming the field.
#[test]
fn impossible_deepseek_routing_is_refused_naming_the_field() {
    let base = std::fs::read_to_string(fixture("tiny-deepseek-v3-a").join("config.json")).unwrap();
    let bad = |key: &str, v: serde_json::Value| {
        let mut c: serde_json::Value = serde_json::from_str(&base).unwrap();
        c[key] = v;
        distill_models::ModelConfig::from_json(&c.to_string()).unwrap_err().0
    };
    assert!(bad("n_group", 3.into()).contains("n_group (3) must divide n_routed_experts (8)"));
    assert!(bad("num_experts_per_tok", 9.into()).contains("num_experts_per_tok (9)"));
    assert!(bad("topk_group", 5.into()).contains("topk_group (5)"));
    let mut c: serde_json::Value = serde_json::from_str(&base).unwrap();
    c.as_object_mut().unwrap().remove("kv_lora_rank");
    let e = distill_models::ModelConfig::from_json(&c.to_string()).unwrap_err();
    assert!(e.0.contains("missing required key `kv_lora_rank`"), "{e}");
}

/// A DeepSeek checkpoint without one expert's tensor names it.
#[test]
fn a_missing_expert_tensor_is_named() {
    let src = fixture("tiny-deepseek-v3-a");
    let d = tempfile::tempdir().unwrap();
    for f in ["config.json", "generation_config.json"] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let gone = "model.layers.2.mlp.experts.5.up_proj.weight";
    let kept: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| n != gone).collect();
    safetensors::serialize_to_file(kept, None, &d.path().join("model.safetensors")).unwrap();
    let e = hf::load_model::<Cpu>(d.path(), &CpuDevice::default()).err().unwrap().to_string();
    assert!(e.contains(gone), "{e}");
}

/// Expert load comes back from the forward pass per sparse layer (every token counted `top_k` times),
/// and DeepSeek-V3's bias update moves each expert's score-correction bias by the rate toward
/// balance: down for the overloaded, up for the idle.
#[test]
fn routing_load_is_recorded_and_the_v3_bias_moves_toward_balance() {
    let dev = CpuDevice::default();
    let mut m = hf::load_model::<Cpu>(&fixture("tiny-deepseek-v3-a"), &dev).unwrap();
    let rope = Rope::<Cpu>::new(&m.config, &dev);
    let (b, t) = (2, 9);
    let ids: Vec<i64> = (0..(b * t) as i64).map(|i| 3 + (i * 7) % 90).collect();
    let x = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(ids, [b, t]), &dev);
    let pos = || masks::positions(b, t, 0, &dev);
    let (_, load) = m.model.forward_hidden_routed(x.clone(), pos(), &rope, &AttnMask::Causal, None);
    assert_eq!(load.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    for counts in load.values() {
        assert_eq!(counts.len(), 8);
        assert_eq!(counts.iter().sum::<u64>(), (b * t * 2) as u64);
    }
    // Each pass returns its own counts: nothing carries over from the one before.
    let (_, again) = m.model.forward_hidden_routed(x, pos(), &rope, &AttnMask::Causal, None);
    assert_eq!(again, load);
    let FeedForward::Sparse(moe) = &mut m.model.model.layers[1].mlp else { panic!("sparse") };
    let before: Vec<f32> =
        moe.e_score_correction_bias.as_ref().unwrap().val().into_data().to_vec().unwrap();
    let l: Vec<f64> = load[&1].iter().map(|&c| c as f64).collect();
    moe.update_bias(&l, 0.01);
    let after: Vec<f32> =
        moe.e_score_correction_bias.as_ref().unwrap().val().into_data().to_vec().unwrap();
    let mean = l.iter().sum::<f64>() / 8.0;
    for e in 0..8 {
        let want = if l[e] > mean {
            -0.01
        } else if l[e] < mean {
            0.01
        } else {
            0.0
        };
        assert!(
            (after[e] - before[e] - want).abs() < 1e-6,
            "expert {e}: load {} mean {mean}",
            l[e]
        );
    }
}

#[test]
fn qwen3_moe_with_every_layer_sparse_matches_transformers() {
    check("tiny-qwen3moe-c", &[0, 1, 2]);
}

/// The HF checkpoint's tensors, by name.
fn hf_tensors(dir: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let ckpt = distill_models::checkpoint::Checkpoint::open(dir).unwrap();
    let names: Vec<String> = ckpt.names().map(str::to_string).collect();
    names
        .into_iter()
        .map(|n| {
            let shape = ckpt.shape(&n).unwrap().to_vec();
            let v = ckpt.read_f32(&n, &shape).unwrap();
            (n, v)
        })
        .collect()
}

/// GGUFs written by llama.cpp's own converter (`scripts/reference/moe_gguf.py`, llama.cpp b11434)
/// from the tiny Qwen3-MoE and DeepSeek-V3/V2 checkpoints import to the same tensors — stacked
/// experts split, `exp_probs_b` back to the correction bias, `attn_k_b`/`attn_v_b` back into
/// `kv_b_proj` — and the same logits: F32 within 1e-4 of transformers, F16 within f16 rounding,
/// Q8_0's tensors within one quantisation step.
#[test]
fn llama_cpp_moe_ggufs_import_to_the_same_tensors_and_logits() {
    let dev = CpuDevice::default();
    for name in ["tiny-qwen3moe-c", "tiny-deepseek-v3-a", "tiny-deepseek-v2"] {
        let dir = fixture(name);
        let want = hf_tensors(&dir);
        let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let want_logits = floats(&st, "logits_batch");
        let (ids, shape) = ints(&st, "ids_batch");
        for (file, tensor_tol, logit_tol) in
            // Q8_0's logits are printed, not bounded: the tiny models' random weights (std 0.15)
            // turn one quantisation step into logit changes of order 1.
            [
                ("model-f32.gguf", 0.0, 1e-4),
                ("model-f16.gguf", 1.0, 2e-2),
                ("model-q8_0.gguf", 2.0, f32::INFINITY),
            ]
        {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("hf");
            let report = distill_models::gguf::import::import(
                &dir.join(file),
                &out,
                &hf::ExportOptions {
                    dtype: distill_models::checkpoint::SaveDtype::F32,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{name}/{file}: {e}"));
            let got = hf_tensors(&out);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{name}/{file}: tensor names"
            );
            // Per tensor: exact (f32); within f16's rounding of each value (f16: half an ulp,
            // 2⁻¹¹ relative); within Q8_0's step (a block's absmax / 127) — `tensor_tol` steps.
            for (n, w) in &want {
                let g = &got[n];
                let absmax = w.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (a, b) in g.iter().zip(w) {
                    let bound = match tensor_tol {
                        0.0 => 1e-6,
                        1.0 => b.abs() * 2f32.powi(-11) + 1e-7,
                        _ => absmax / 127.0 + b.abs() * 2f32.powi(-11),
                    };
                    assert!((a - b).abs() <= bound, "{name}/{file}: {n}: {a} vs {b}");
                }
            }
            let m = hf::load_model::<Cpu>(&out, &dev).unwrap();
            let rope = Rope::<Cpu>::new(&m.config, &dev);
            let (b, t) = (shape[0], shape[1]);
            let x = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(ids.clone(), [b, t]), &dev);
            let logits: Vec<f32> = m
                .model
                .forward(x, masks::positions(b, t, 0, &dev), &rope, &AttnMask::Causal)
                .into_data()
                .convert::<f32>()
                .into_vec()
                .unwrap();
            let err =
                logits.iter().zip(&want_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            eprintln!(
                "{name}/{file}: {} tensors, max |logit − transformers| {err:.2e}; {:?}",
                got.len(),
                report.warnings
            );
            assert!(err <= logit_tol, "{name}/{file}: logits differ by {err}");
        }
    }
}

/// DeepSeek-V3's release format: FP8 E4M3 weights with one f32 scale per 16×16 tile (some edge
/// tiles partial: 24-wide projections), dequantised on load to exactly what PyTorch computes
/// (`scripts/reference/fp8_dequant.py`, DeepSeek's `weight_dequant`), and the logits of the
/// dequantised model.
#[test]
fn fp8_block_quantised_weights_dequantise_like_pytorch() {
    let dir = fixture("tiny-deepseek-v3-fp8");
    let dev = CpuDevice::default();
    let m = hf::load_model::<Cpu>(&dir, &dev).unwrap();
    assert!(m.unused.is_empty(), "unused: {:?}", m.unused);
    let mut sink = distill_models::weights::Collect::default();
    m.model.export(&mut sink as &mut dyn distill_models::weights::WeightSink);
    let want =
        distill_models::checkpoint::Checkpoint::open_files(&[dir.join("dequant.safetensors")])
            .unwrap();
    let mut fp8 = 0;
    let raw = distill_models::checkpoint::Checkpoint::open(&dir).unwrap();
    for (n, shape, ours) in &sink.0 {
        let theirs = want.read_f32(n, shape).unwrap();
        let err = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err <= 1e-6, "{n}: dequantised weights differ from PyTorch's by {err}");
        fp8 += usize::from(raw.contains(&format!("{n}_scale_inv")));
    }
    assert_eq!(fp8, 72, "FP8 tensors");
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (ids, shape) = ints(&st, "ids_batch");
    let rope = Rope::<Cpu>::new(&m.config, &dev);
    let x = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(ids, [shape[0], shape[1]]), &dev);
    let got: Vec<f32> = m
        .model
        .forward(x, masks::positions(shape[0], shape[1], 0, &dev), &rope, &AttnMask::Causal)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap();
    let want = floats(&st, "logits_batch");
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("fp8: max |logit − transformers (dequantised)| = {err:.2e}");
    assert!(err <= 1e-4, "fp8 logits differ by {err}");
    // A missing scale is named.
    let d = tempfile::tempdir().unwrap();
    for f in ["config.json", "generation_config.json"] {
        std::fs::copy(dir.join(f), d.path().join(f)).unwrap();
    }
    let b = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&b).unwrap();
    let gone = "model.layers.1.self_attn.o_proj.weight_scale_inv";
    let kept: Vec<_> = st.tensors().into_iter().filter(|(n, _)| n != gone).collect();
    safetensors::serialize_to_file(kept, None, &d.path().join("model.safetensors")).unwrap();
    let e = hf::load_model::<Cpu>(d.path(), &dev).err().unwrap().to_string();
    assert!(e.contains(gone) && e.contains("FP8"), "{e}");
}
