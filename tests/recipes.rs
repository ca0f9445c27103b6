//! Every shipped recipe parses and validates, and the R1 recipes' memory claims agree with the
//! trainer's own estimate for their base model's published architecture.

mod common;

use std::path::{Path, PathBuf};

use common::{distill, text};
use distill_student::config::ModelConfig;
use distill_student::sft::train::estimate_memory_gb;

fn shipped() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    v.sort();
    v
}

#[test]
fn every_shipped_recipe_validates() {
    let recipes = shipped();
    assert!(recipes.len() >= 10, "expected the R1, tiny, quickstart and self-distill recipes, found {recipes:?}");
    let args: Vec<String> = std::iter::once("check-recipe".to_string()).chain(recipes.iter().map(|p| p.display().to_string())).collect();
    let out = distill(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(t.lines().filter(|l| l.starts_with("ok ")).count(), recipes.len(), "{t}");
}

/// The base models' published `config.json` architecture fields (Hugging Face, as of 2025).
fn base_config(base: &str) -> ModelConfig {
    let (arch, h, i, layers, heads, kv, vocab, tied) = match base {
        "Qwen/Qwen2.5-Math-1.5B" => ("Qwen2ForCausalLM", 1536, 8960, 28, 12, 2, 151936, true),
        "Qwen/Qwen2.5-Math-7B" => ("Qwen2ForCausalLM", 3584, 18944, 28, 28, 4, 152064, false),
        "Qwen/Qwen2.5-14B" => ("Qwen2ForCausalLM", 5120, 13824, 48, 40, 8, 152064, false),
        "Qwen/Qwen2.5-32B" => ("Qwen2ForCausalLM", 5120, 27648, 64, 40, 8, 152064, false),
        "meta-llama/Llama-3.1-8B" => ("LlamaForCausalLM", 4096, 14336, 32, 32, 8, 128256, false),
        "meta-llama/Llama-3.3-70B-Instruct" => ("LlamaForCausalLM", 8192, 28672, 80, 64, 8, 128256, false),
        "Qwen/Qwen3-8B-Base" => ("Qwen3ForCausalLM", 4096, 12288, 36, 32, 8, 151936, false),
        other => panic!("no published config recorded for base model {other}"),
    };
    let json = serde_json::json!({
        "architectures": [arch], "hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab, "head_dim": 128,
        "tie_word_embeddings": tied, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 32768,
    });
    ModelConfig::from_json(&json.to_string()).unwrap()
}

#[test]
fn r1_recipes_state_the_memory_the_trainer_estimates() {
    let mut checked = 0;
    for path in shipped() {
        let r: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let Some(declared) = r["recipe"].get("memory_estimate_gb").and_then(toml::Value::as_float) else { continue };
        let base = r["recipe"]["base_model"].as_str().unwrap();
        let t = &r["train"];
        let (mb, seq, ckpt) = (
            t["micro_batch"].as_integer().unwrap() as usize,
            t["data"]["max_seq_len"].as_integer().unwrap() as usize,
            t.get("activation_checkpointing").and_then(toml::Value::as_bool).unwrap_or(false),
        );
        let est = estimate_memory_gb(&base_config(base), mb, seq, ckpt);
        assert!((est - declared).abs() < 0.1, "{}: declares {declared} GB, the trainer estimates {est:.1} GB", path.display());
        let device = r["recipe"]["device_memory_gb"].as_float().or_else(|| r["recipe"]["device_memory_gb"].as_integer().map(|x| x as f64)).unwrap();
        let fits = r["recipe"]["fits_one_device"].as_bool().unwrap();
        assert_eq!(fits, est <= device, "{}: fits_one_device = {fits}, but {est:.1} GB against {device} GB", path.display());
        checked += 1;
    }
    assert_eq!(checked, 7, "the seven R1-Distill recipes");
}
