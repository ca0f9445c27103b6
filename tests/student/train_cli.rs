//! `distill train` end to end: resume after SIGKILL reproduces the uninterrupted run bit for bit,
//! bad input fails clearly, and SmolLM2 learns from its own answers.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn losses(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("loss").map(|x| format!("{}:{}", v["step"], x))
        })
        .collect()
}

#[test]
fn a_killed_run_resumes_to_the_same_losses_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_student(d.path());
    let corpus = short_corpus(d.path(), 40, true);
    let a = d.path().join("run-a");
    let ra = train_recipe(d.path(), &model, &corpus, &a, "");
    let ra_text = std::fs::read_to_string(&ra).unwrap().replace("max_steps = 8", "max_steps = 16");
    std::fs::write(&ra, ra_text).unwrap();
    let o = distill(&["train", "--recipe", ra.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let want = losses(&a.join("metrics.jsonl"));
    assert_eq!(want.len(), 16);

    let b = d.path().join("run-b");
    let rb = train_recipe(d.path(), &model, &corpus, &b, "");
    let rb_text = std::fs::read_to_string(&rb).unwrap().replace("max_steps = 8", "max_steps = 16");
    std::fs::write(&rb, rb_text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["train", "--recipe", rb.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !b.join("checkpoints/step-000004").exists() && t0.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL, mid-run
    child.wait().unwrap();
    assert!(
        still_running && !b.join("export").exists(),
        "the run finished before it could be killed"
    );
    let o = distill(&["train", "--recipe", rb.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        losses(&b.join("metrics.jsonl")),
        want,
        "resumed losses differ from the uninterrupted run"
    );
    // Without --resume an existing run is not overwritten.
    let o = distill(&["train", "--recipe", rb.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("--resume"), "{}", text(&o));
    // The export says what it was distilled from.
    let prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("export/distill.json")).unwrap())
            .unwrap();
    let manifest = distill_data::Corpus::open(&corpus).unwrap();
    assert_eq!(prov["corpus_manifest_blake3"][0], manifest.manifest_checksum());
    assert!(a.join("loss.png").exists());
}

#[test]
fn bad_input_fails_clearly() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_student(d.path());
    let run = |recipe: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["train", "--recipe", recipe.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = distill(&args);
        assert!(!o.status.success(), "should fail: {}", text(&o));
        text(&o)
    };
    // An empty corpus.
    let empty = d.path().join("empty");
    distill_data::CorpusWriter::open(&empty, Default::default()).unwrap().commit().unwrap();
    let e = run(&train_recipe(d.path(), &model, &empty, &d.path().join("r1"), ""), &[]);
    assert!(e.contains("holds no traces"), "{e}");
    // Every trace filtered out.
    let failed = short_corpus(d.path(), 10, false);
    let e = run(&train_recipe(d.path(), &model, &failed, &d.path().join("r2"), ""), &[]);
    assert!(e.contains("no training examples") && e.contains("10 failed verification"), "{e}");
    // An unknown field and a bad value.
    let good = short_corpus(d.path(), 20, true);
    let e = run(
        &train_recipe(d.path(), &model, &good, &d.path().join("r3"), "learning_rate = 1e-4"),
        &[],
    );
    assert!(e.contains("unknown field `learning_rate`"), "{e}");
    let r4 = train_recipe(d.path(), &model, &good, &d.path().join("r4"), "");
    let e = run(&r4, &["--set", "train.optim.lr=-1"]);
    assert!(e.contains("[train.optim]") && e.contains("out-of-range"), "{e}");
    // Values that used to train without learning, or run a step that was not asked for, and a
    // misspelled section, which used to be ignored by `distill train`.
    for set in ["train.optim.eps=inf", "train.optim.lr=inf", "train.optim.lr=nan"] {
        let e = run(&r4, &["--set", set]);
        assert!(e.contains("[train.optim]") && e.contains("out-of-range"), "{set}: {e}");
    }
    // Counts no run can hold: refused at once (4294967296 reserved 652 GB before).
    for set in
        ["train.grad_accum=4294967296", "train.grad_accum=1000000", "train.micro_batch=100000"]
    {
        let e = run(&r4, &["--set", set]);
        assert!(e.contains("beyond any run"), "{set}: {e}");
    }
    let e = run(&r4, &["--set", "train.max_steps=0"]);
    assert!(e.contains("max_steps = 0"), "{e}");
    let e = run(&r4, &["--set", "trian.optim.lr=5"]);
    assert!(e.contains("unknown field `trian`"), "{e}");
    let e = run(&r4, &["--set", "=3"]);
    assert!(e.contains("is not a key"), "{e}");
    // A tokenizer without the template's special tokens.
    let broken = d.path().join("broken-student");
    std::fs::create_dir_all(&broken).unwrap();
    for f in std::fs::read_dir(&model).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), broken.join(f.file_name())).unwrap();
    }
    let tc = broken.join("tokenizer_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tc).unwrap()).unwrap();
    v["chat_template"] = "{% for m in messages %}<|turn|>{{ m['content'] }}<|im_end|>{% endfor %}{% if add_generation_prompt %}<|turn|>{% endif %}".into();
    std::fs::write(&tc, v.to_string()).unwrap();
    let e = run(&train_recipe(d.path(), &broken, &good, &d.path().join("r5"), ""), &[]);
    assert!(e.contains("<|turn|>") && e.contains("does not have"), "{e}");
    // A corrupt checkpoint on --resume.
    let r6 = train_recipe(d.path(), &model, &good, &d.path().join("r6"), "");
    let o = distill(&["train", "--recipe", r6.to_str().unwrap(), "--set", "train.max_steps=2"]);
    assert!(o.status.success(), "{}", text(&o));
    let ck = d.path().join("r6/checkpoints/step-000002/model.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &bytes[..bytes.len() / 3]).unwrap();
    let e = run(&r6, &["--resume", "--set", "train.max_steps=4"]);
    assert!(e.contains("step-000002") && e.contains("unusable") && e.contains("truncated"), "{e}");
    // Optimizer moments of the wrong shape (issue 11, item 6): half length, then a scalar.
    let r8 = train_recipe(d.path(), &model, &good, &d.path().join("r8"), "");
    let o = distill(&["train", "--recipe", r8.to_str().unwrap(), "--set", "train.max_steps=2"]);
    assert!(o.status.success(), "{}", text(&o));
    let opt = d.path().join("r8/checkpoints/step-000002/optimizer");
    for (what, cut) in [("[half]", 2usize), ("[]", 0)] {
        for f in std::fs::read_dir(&opt).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_none_or(|e| e != "safetensors") {
                continue;
            }
            let bytes = std::fs::read(&f).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut out: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
            for (name, t) in st.tensors() {
                let data = t.data();
                let (shape, data) = match t.shape()[0].checked_div(cut) {
                    None => (vec![], data[..4].to_vec()),
                    Some(n) => (vec![n], data[..4 * n].to_vec()),
                };
                out.push((name, shape, data));
            }
            let views: Vec<(String, safetensors::tensor::TensorView)> = out
                .iter()
                .map(|(n, s, d)| {
                    let v =
                        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                            .unwrap();
                    (n.clone(), v)
                })
                .collect();
            safetensors::serialize_to_file(views, None, &f).unwrap();
        }
        let e = run(&r8, &["--resume", "--set", "train.max_steps=4"]);
        assert!(
            e.contains("step-000002") && e.contains("unusable") && e.contains("exp_avg"),
            "{what}: {e}"
        );
    }
    // --resume with nothing to resume.
    let e = run(&train_recipe(d.path(), &model, &good, &d.path().join("r7"), ""), &["--resume"]);
    assert!(e.contains("no checkpoint"), "{e}");
}

/// SmolLM2-135M, imported from its GGUF, trained on a small corpus of its own greedy answers:
/// the held-out loss falls.
#[test]
fn smollm2_learns_from_its_own_greedy_answers() {
    smollm2();
    let d = tempfile::tempdir().unwrap();
    let run_dir = d.path().join("self");
    let o = Command::new(env!("CARGO_BIN_EXE_distill"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "recipes/smollm2-self-distill.toml"])
        .args(["--set", &format!("recipe.run_dir=\"{}\"", run_dir.display())])
        .args([
            "--set",
            // 40 answers: 8 held out, 32 to train on, 4 steps of 8 (a short, cheap epoch).
            "generate.limit=40",
            "--set",
            "generate.sampling.max_tokens=32",
            "--set",
            "train.max_steps=4",
            "--set",
            "train.eval_every=2",
            "--set",
            "train.data.eval_fraction=0.2",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let evals: Vec<f64> = std::fs::read_to_string(run_dir.join("train/metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["eval_loss"].as_f64())
        .collect();
    eprintln!("held-out loss: {evals:?}");
    assert!(
        evals.len() >= 2 && evals.last().unwrap() < evals.first().unwrap(),
        "held-out loss did not fall: {evals:?}"
    );
}

/// `distill train` on the seed's own architecture: a tiny DeepSeek-V3 (MLA + MoE, imported from a
/// GGUF written by llama.cpp's converter) fine-tunes, reports its expert load every step, moves
/// its score-correction bias with `moe_bias_update`, and exports a model that loads.
#[test]
fn a_deepseek_moe_trains_reports_expert_load_and_balances_its_router() {
    let d = tempfile::tempdir().unwrap();
    let gguf = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/tests/fixtures/tiny-deepseek-v3-a/model-f32.gguf");
    let model = d.path().join("deepseek");
    let o = distill(&["import", "gguf", gguf.to_str().unwrap(), model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let corpus = short_corpus(d.path(), 40, true);
    let out = d.path().join("run");
    let r = train_recipe(d.path(), &model, &corpus, &out, "moe_bias_update = 0.01");
    let o = distill(&["train", "--recipe", r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|v| v.get("loss").is_some()).collect();
    assert_eq!(steps.len(), 8);
    for s in &steps {
        let m = &s["moe_load"];
        assert!(m["max_over_mean"].as_f64().unwrap() >= 1.0, "{s}");
        assert!(m["cv"].as_f64().unwrap() >= 0.0, "{s}");
        assert!(m["idle_experts"].as_u64().unwrap() <= 16, "{s}");
    }
    let first = steps[0]["loss"].as_f64().unwrap();
    let last = steps[7]["loss"].as_f64().unwrap();
    assert!(last < first, "loss {first} → {last}");
    // The bias moved by whole steps of 0.01 (8 updates at most), and nothing else was touched
    // by the update.
    let before = distill_models::checkpoint::Checkpoint::open(&model).unwrap();
    let after = distill_models::checkpoint::Checkpoint::open(&out.join("export")).unwrap();
    let name = "model.layers.1.mlp.gate.e_score_correction_bias";
    let (b, a) = (before.read_f32(name, &[8]).unwrap(), after.read_f32(name, &[8]).unwrap());
    let moved: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    assert!(moved.iter().any(|m| m.abs() > 0.005), "{moved:?}");
    // bf16 export: compare loosely.
    assert!(moved.iter().all(|m| m.abs() <= 0.08 + 0.01), "{moved:?}");
    let dev = distill_models::device::CpuDevice::default();
    distill_models::hf::load_model::<distill_models::device::Cpu>(&out.join("export"), &dev)
        .unwrap();
}
