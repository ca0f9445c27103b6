//! On-policy distillation end to end on CPU: a tiny random student with SmolLM2's tokenizer
//! learns from SmolLM2-135M-Instruct on its own samples; the held-out reverse KL of the student's
//! samples under the teacher falls; every sample is kept with the teacher's scores; a SIGKILL and
//! `--resume` repeat no committed sample; a teacher with another vocabulary is refused.

mod common;

use std::path::{Path, PathBuf};

use common::{distill, smollm2, text};

fn recipe(dir: &Path, student: &Path, teacher: &Path, out: &Path, extra: &str) -> PathBuf {
    let r = dir.join(format!("onpolicy-{}.toml", out.file_name().unwrap().to_string_lossy()));
    let prompts =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/data/quickstart-prompts.jsonl");
    std::fs::write(
        &r,
        format!(
            r#"[train]
model = "{}"
output = "{}"
max_steps = 12
micro_batch = 8
save_every = 4
eval_every = 0
[train.data]
corpus = []
max_seq_len = 160
[train.optim]
lr = 1e-4
warmup_steps = 1
max_grad_norm = 1.0
weight_decay = 0.0
[train.on_policy]
prompts = "{}"
fields = {{ prompt = "question", id = "id", require_answer = false }}
teacher = "{}"
prompts_per_step = 8
max_tokens = 24
temperature = 1.0
top_k = 8
eval_prompts = 8
{extra}
"#,
            student.display(),
            out.display(),
            prompts.display(),
            teacher.display(),
        ),
    )
    .unwrap();
    r
}

/// A warm start, as on-policy distillation is used: SmolLM2 cut to 8 of its 30 layers.
fn warm_student(dir: &Path, teacher: &Path) -> PathBuf {
    let student = dir.join("student");
    distill_models::prune::prune_layers(
        teacher,
        &[0, 1, 2, 3, 26, 27, 28, 29],
        &student,
        distill_models::checkpoint::SaveDtype::F32,
    )
    .unwrap();
    student
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn eval_rkl(m: &[serde_json::Value]) -> Vec<f64> {
    m.iter().filter_map(|v| v["eval_reverse_kl"].as_f64()).collect()
}

#[test]
fn the_students_reverse_kl_falls_on_its_own_samples() {
    let (_, teacher) = smollm2();
    let d = tempfile::tempdir().unwrap();
    let student = warm_student(d.path(), &teacher);
    for (name, extra) in [("gkd", "loss = \"gkd\"\nbeta = 0.5"), ("rkl", "loss = \"reverse_kl\"")] {
        let out = d.path().join(name);
        let r = recipe(d.path(), &student, &teacher, &out, extra);
        let o = distill(&["train", "--recipe", r.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        let m = metrics(&out);
        let rkl = eval_rkl(&m);
        let losses: Vec<String> =
            m.iter().filter_map(|v| v["loss"].as_f64()).map(|l| format!("{l:.3}")).collect();
        eprintln!("{name}: held-out reverse KL {rkl:?}; step losses {}", losses.join(" "));
        // Every sample is kept, with the teacher's scores of exactly its tokens.
        let c = distill_data::Corpus::open(&out.join("on-policy")).unwrap();
        assert_eq!(c.len(), 12 * 8);
        for t in c.iter() {
            let t = t.unwrap();
            assert_eq!(t.metadata["kind"], "on-policy");
            let lp = t.logprobs.as_ref().expect("teacher scores");
            assert_eq!(lp.k, 8);
            assert_eq!(lp.len() as u64, t.usage.completion_tokens);
            assert!(lp.token_logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
        }
        assert!(rkl.len() >= 2);
        assert!(rkl.last().unwrap() < rkl.first().unwrap(), "{name}: {rkl:?}");
    }
}

#[test]
fn a_killed_run_resumes_without_repeating_or_losing_a_committed_sample() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let (_, teacher) = smollm2();
    let d = tempfile::tempdir().unwrap();
    let student = warm_student(d.path(), &teacher);
    let out = d.path().join("run");
    let r = recipe(d.path(), &student, &teacher, &out, "loss = \"reverse_kl\"");
    // SIGKILL once step 6's samples are committed (after the step-4 checkpoint).
    let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["train", "--recipe", r.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let samples = out.join("on-policy");
    let committed = || distill_data::Corpus::open(&samples).map(|c| c.len()).unwrap_or(0);
    let t0 = Instant::now();
    while committed() < 6 * 8 && t0.elapsed() < Duration::from_secs(600) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before: Vec<distill_data::Trace> =
        distill_data::Corpus::open(&samples).unwrap().iter().map(|t| t.unwrap()).collect();
    assert!(before.len() >= 6 * 8);
    assert!(out.join("checkpoints/step-000004").exists());

    let o = distill(&["train", "--recipe", r.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", text(&o));
    let after: Vec<distill_data::Trace> =
        distill_data::Corpus::open(&samples).unwrap().iter().map(|t| t.unwrap()).collect();
    // Nothing lost: every sample committed before the kill is still there, unchanged.
    let by_id: std::collections::HashMap<&str, &distill_data::Trace> =
        after.iter().map(|t| (t.id.as_str(), t)).collect();
    for t in &before {
        assert_eq!(by_id.get(t.id.as_str()), Some(&t), "{} changed or vanished", t.id);
    }
    // Nothing repeated: one sample per prompt and step, and the repeated steps (5, 6) used the
    // committed samples instead of sampling and asking the teacher again.
    assert_eq!(after.len(), 12 * 8);
    assert_eq!(by_id.len(), after.len());
    let m = metrics(&out);
    for step in 5..=(before.len() / 8) as u64 {
        let line = m.iter().find(|v| v["step"] == step && v.get("loss").is_some()).unwrap();
        assert_eq!(line["samples_reused"], true, "step {step}: {line}");
    }
    let last = m.iter().rev().find(|v| v.get("loss").is_some()).unwrap();
    assert_eq!(last["step"], 12);
    assert_eq!(last["samples_reused"], false);
}

#[test]
fn a_teacher_with_another_vocabulary_is_refused_before_any_work() {
    let (_, teacher) = smollm2();
    let d = tempfile::tempdir().unwrap();
    let student = warm_student(d.path(), &teacher);
    // The same model with two token ids swapped in its tokenizer.
    let other = d.path().join("other-teacher");
    std::fs::create_dir_all(&other).unwrap();
    for e in std::fs::read_dir(&teacher).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        if name != "tokenizer.json" {
            std::os::unix::fs::symlink(&p, other.join(name)).unwrap();
        }
    }
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(teacher.join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = (vocab["Ġthe"].clone(), vocab["Ġa"].clone());
    vocab.insert("Ġthe".into(), b);
    vocab.insert("Ġa".into(), a);
    std::fs::write(other.join("tokenizer.json"), tok.to_string()).unwrap();
    let out = d.path().join("run");
    let r = recipe(d.path(), &student, &other, &out, "");
    let o = distill(&["train", "--recipe", r.to_str().unwrap()]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("different vocabularies") && t.contains("Ġthe"), "{t}");
    assert!(!out.join("checkpoints").exists() && !out.join("on-policy").exists(), "work was done");
}
