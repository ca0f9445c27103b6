//! On-policy distillation end to end on CPU: a tiny random student with SmolLM2's tokenizer
//! learns from SmolLM2-135M-Instruct on its own samples; the held-out reverse KL of the student's
//! samples under the teacher falls; every sample is kept with the teacher's scores; a SIGKILL and
//! `--resume` repeat no committed sample; a teacher with another vocabulary is refused.

use std::path::{Path, PathBuf};

use crate::common::{distill, smollm2, text};

fn recipe(dir: &Path, student: &Path, teacher: &Path, out: &Path, extra: &str) -> PathBuf {
    recipe_steps(dir, student, teacher, out, extra, 12)
}

fn recipe_steps(
    dir: &Path,
    student: &Path,
    teacher: &Path,
    out: &Path,
    extra: &str,
    steps: usize,
) -> PathBuf {
    let r = dir.join(format!("onpolicy-{}.toml", out.file_name().unwrap().to_string_lossy()));
    let prompts =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/data/quickstart-prompts.jsonl");
    std::fs::write(
        &r,
        format!(
            r#"[train]
model = "{}"
output = "{}"
max_steps = {steps}
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
fields = {{ prompt = "question", id = "id", answer = "answer", require_answer = false }}
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
    // Reverse KL trains for 8 steps and must fall; GKD (its loss is checked against TRL's
    // formula in student/tests/onpolicy_loss.rs) runs 2 steps here, for the loop's mechanics
    // with that loss: its metrics, its samples and their scores.
    let arms = [("gkd", "loss = \"gkd\"\nbeta = 0.5", 2), ("rkl", "loss = \"reverse_kl\"", 8)];
    for (name, extra, n) in arms {
        let out = d.path().join(name);
        let r = recipe_steps(d.path(), &student, &teacher, &out, extra, n);
        let o = distill(&["train", "--recipe", r.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        let m = metrics(&out);
        let rkl = eval_rkl(&m);
        let losses: Vec<String> =
            m.iter().filter_map(|v| v["loss"].as_f64()).map(|l| format!("{l:.3}")).collect();
        eprintln!("{name}: held-out reverse KL {rkl:?}; step losses {}", losses.join(" "));
        // Per step: the samples' reverse KL, the teacher's NLL of them, their length, the share
        // ending in EOS, and the verifier's pass rate (the arithmetic prompts have answers).
        let steps: Vec<&serde_json::Value> = m.iter().filter(|v| v.get("loss").is_some()).collect();
        assert_eq!(steps.len(), n);
        for v in &steps {
            for k in ["sample_reverse_kl", "teacher_nll", "sample_tokens", "eos_fraction"] {
                assert!(v[k].is_number(), "{k} missing in {v}");
            }
        }
        assert!(steps.iter().any(|v| v["pass_rate"].is_number()), "no pass rate in {steps:?}");
        if name == "rkl" {
            // For reverse_kl the loss is the same per-token estimate.
            let v = steps[0];
            assert!(
                (v["loss"].as_f64().unwrap() - v["sample_reverse_kl"].as_f64().unwrap()).abs()
                    < 1e-3,
                "{v}"
            );
        }
        // Every sample is kept, with the teacher's scores of exactly its tokens.
        let c = distill_data::Corpus::open(&out.join("on-policy")).unwrap();
        assert_eq!(c.len(), n as u64 * 8);
        for t in c.iter() {
            let t = t.unwrap();
            assert_eq!(t.metadata["kind"], "on-policy");
            let lp = t.logprobs.as_ref().expect("teacher scores");
            assert_eq!(lp.k, 8);
            assert_eq!(lp.len() as u64, t.usage.completion_tokens);
            assert!(lp.token_logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
        }
        assert!(rkl.len() >= 2 && rkl.iter().all(|r| r.is_finite()), "{name}: {rkl:?}");
        assert!(steps.iter().all(|v| v["loss"].as_f64().unwrap().is_finite()), "{name}");
        if name == "rkl" {
            assert!(rkl.last().unwrap() < rkl.first().unwrap(), "{name}: {rkl:?}");
        }
    }
}

/// Issue 28: on-policy distillation runs in the one training loop, so it runs data parallel with
/// its sampling split over the ranks: 2 and 3 CPU peers, with whole (`none`) or sharded
/// (`parameters`) weights, give the one-device run's step losses, sample figures and held-out
/// reverse KL within 1e-6 (gradient norms within 1e-5). The prompts are sampled in groups of `batch` = 2, group g on rank
/// g mod world, and the 6 samples of a step make 3 micro-batches of 2.
#[test]
fn on_policy_on_two_and_three_peers_gives_the_one_device_run() {
    let (_, full) = smollm2();
    let d = tempfile::tempdir().unwrap();
    let cut = |layers: &[usize], name: &str| {
        let dir = d.path().join(name);
        let f32 = distill_models::checkpoint::SaveDtype::F32;
        distill_models::prune::prune_layers(&full, layers, &dir, f32).unwrap();
        dir
    };
    let (teacher, student) = (cut(&[0, 1, 28, 29], "teacher"), cut(&[0, 29], "student"));
    let run = |name: &str, devices: &str, shard: &str| -> Vec<serde_json::Value> {
        let out = d.path().join(name);
        let r = recipe_steps(d.path(), &student, &teacher, &out, "", 2);
        let mut args: Vec<String> =
            ["train", "--recipe", r.to_str().unwrap(), "--devices", devices]
                .map(String::from)
                .into();
        for set in [
            "train.micro_batch=2",
            "train.eval_every=0",
            "train.save_every=0",
            "train.on_policy.prompts_per_step=6",
            "train.on_policy.batch=2",
            "train.on_policy.max_tokens=10",
            "train.on_policy.eval_prompts=4",
            &format!("train.parallel.shard=\"{shard}\""),
        ] {
            args.extend(["--set".to_string(), set.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = distill(&args);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let samples = distill_data::Corpus::open(&out.join("on-policy")).unwrap();
        assert_eq!(samples.len(), 12, "{name}: every sample committed once");
        if shard == "parameters" {
            let shards = out.join("checkpoints/step-000002/optimizer/shards.json");
            let s = std::fs::read_to_string(&shards).unwrap();
            assert!(s.contains("parameters"), "{name} did not run sharded: {s}");
        }
        metrics(&out)
    };
    let base = run("one", "cpu", "none");
    let figures = |m: &[serde_json::Value]| -> Vec<(u64, String, f64)> {
        let keys = ["loss", "grad_norm", "sample_reverse_kl", "teacher_nll", "eval_reverse_kl"];
        m.iter()
            .flat_map(|v| {
                keys.iter().filter_map(move |k| {
                    v[*k].as_f64().map(|x| (v["step"].as_u64().unwrap(), k.to_string(), x))
                })
            })
            .collect()
    };
    let want = figures(&base);
    assert_eq!(want.iter().filter(|(_, k, _)| k == "loss").count(), 2);
    assert_eq!(want.iter().filter(|(_, k, _)| k == "eval_reverse_kl").count(), 2, "{want:?}");
    for (devices, world) in [("cpu:2", 2), ("cpu:3", 3)] {
        for shard in ["none", "parameters"] {
            let name = format!("{shard}-{world}");
            let m = run(&name, devices, shard);
            let got = figures(&m);
            assert_eq!(got.len(), want.len(), "{name}: {got:?} against {want:?}");
            for ((s, k, x), (s2, k2, y)) in want.iter().zip(&got) {
                assert_eq!((s, k), (s2, k2), "{name}");
                // The gradient norm sums squares over ranks in the collective's order: 1e-5.
                let tol = if k == "grad_norm" { 1e-5 } else { 1e-6 };
                let rel = (x - y).abs() / x.abs().max(1e-12);
                assert!(rel <= tol, "{name}: step {s} {k}: {y} against one device's {x}");
            }
            assert!(m.iter().filter(|v| v.get("loss").is_some()).all(|v| v["world"] == world));
        }
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
    // 8 steps: a checkpoint at step 4, the kill after step 6's samples, steps 7 and 8 fresh.
    let r = recipe_steps(d.path(), &student, &teacher, &out, "loss = \"reverse_kl\"", 8);
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
    assert_eq!(after.len(), 8 * 8);
    assert_eq!(by_id.len(), after.len());
    let m = metrics(&out);
    for step in 5..=(before.len() / 8) as u64 {
        let line = m.iter().find(|v| v["step"] == step && v.get("loss").is_some()).unwrap();
        assert_eq!(line["samples_reused"], true, "step {step}: {line}");
    }
    let last = m.iter().rev().find(|v| v.get("loss").is_some()).unwrap();
    assert_eq!(last["step"], 8);
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
    assert!(t.contains("different vocabularies") && t.contains("first differing id is 253"), "{t}");
    assert!(!out.join("checkpoints").exists() && !out.join("on-policy").exists(), "work was done");
}

/// A vLLM-like `/v1/completions` that scores prompts with `prompt_logprobs`, backed by distill's
/// local engine on the teacher (so its answers can be checked against the local scorer). It
/// answers `/version` as vLLM does and counts the scoring requests.
fn vllm_scoring_stub(
    teacher: PathBuf,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> u16 {
    use std::io::{BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // One thread holds the teacher and scores; each connection has its own thread (the client
    // keeps several connections open at once).
    type Job = (Vec<u32>, usize, std::sync::mpsc::Sender<distill_data::TokenLogprobs>);
    let (jobs, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::spawn(move || {
        use distill_models::device::{Cpu, CpuDevice};
        use distill_models::score::{LocalScorer, ScoreRequest, Scorer};
        let dev = CpuDevice::default();
        let t = distill_models::hf::load_model::<Cpu>(&teacher, &dev).unwrap();
        let scorer = LocalScorer::new(t.model, &t.config, dev, "teacher".into());
        for (ids, k, back) in rx {
            let req = ScoreRequest { prompt: ids[..1].to_vec(), completion: ids[1..].to_vec() };
            let _ = back.send(scorer.score(&[req], k).unwrap().pop().unwrap());
        }
    });
    let jobs = std::sync::Mutex::new(jobs);
    let jobs = std::sync::Arc::new(jobs);
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let (count, jobs) = (count.clone(), jobs.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                while let Some((head, body)) = crate::common::read_request(&mut reader) {
                    let reply = if head.starts_with("GET /version") {
                        r#"{"version": "0.10.1.1"}"#.to_string()
                    } else if head.starts_with("POST /v1/completions") {
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        assert_eq!(req["return_tokens_as_token_ids"], true);
                        let ids: Vec<u32> = req["prompt"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_u64().unwrap() as u32)
                            .collect();
                        let k = req["prompt_logprobs"].as_u64().unwrap() as usize;
                        let (tx, back) = std::sync::mpsc::channel();
                        jobs.lock().unwrap().send((ids.clone(), k, tx)).unwrap();
                        let s = back.recv().unwrap();
                        let mut entries = vec![serde_json::Value::Null];
                        for (j, &tok) in ids[1..].iter().enumerate() {
                            let mut m = serde_json::Map::new();
                            let entry = |l: f32, rank: usize, id: u32| serde_json::json!({"logprob": l, "rank": rank, "decoded_token": format!("token_id:{id}")});
                            for (r, (id, l)) in s.top(j).enumerate() {
                                m.insert(id.to_string(), entry(l, r + 1, id));
                            }
                            m.entry(tok.to_string())
                                .or_insert_with(|| entry(s.token_logprobs[j], k + 1, tok));
                            entries.push(serde_json::Value::Object(m));
                        }
                        serde_json::json!({"id": "cmpl", "object": "text_completion", "model": "teacher",
                        "choices": [{"index": 0, "text": "x", "finish_reason": "length", "prompt_logprobs": entries}],
                        "usage": {"prompt_tokens": ids.len(), "completion_tokens": 1}})
                    .to_string()
                    } else {
                        r#"{"detail": "Not Found"}"#.to_string()
                    };
                    let status =
                        if reply.contains("Not Found") { "404 Not Found" } else { "200 OK" };
                    let out = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
                        reply.len()
                    );
                    if conn.write_all(out.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn an_endpoint_teacher_scores_as_the_local_engine_does() {
    use distill_models::device::{Cpu, CpuDevice};
    use distill_models::score::{LocalScorer, ScoreRequest, Scorer};
    use distill_teacher::backend::openai::{OpenAiClient, OpenAiConfig};
    use distill_teacher::backend::score::EndpointScorer;
    let (_, teacher) = smollm2();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let port = vllm_scoring_stub(teacher.clone(), count.clone());
    let base = format!("http://127.0.0.1:{port}/v1");
    let endpoint = EndpointScorer {
        client: OpenAiClient::new(OpenAiConfig::new(&base, "teacher"), None).unwrap(),
        policy: Default::default(),
    };
    let dev = CpuDevice::default();
    let t = distill_models::hf::load_model::<Cpu>(&teacher, &dev).unwrap();
    let local = LocalScorer::new(t.model, &t.config, dev, "teacher".into());
    let reqs = vec![
        ScoreRequest {
            prompt: vec![1, 4093, 198, 504, 314, 216],
            completion: vec![260, 3558, 30, 2],
        },
        ScoreRequest { prompt: vec![1, 9690], completion: vec![198, 1780, 4093, 253, 1113] },
    ];
    let a = endpoint.score(&reqs, 5).unwrap();
    let b = local.score(&reqs, 5).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.tokens, y.tokens);
        assert_eq!(x.top_ids, y.top_ids);
        for (p, q) in x
            .token_logprobs
            .iter()
            .chain(&x.top_logprobs)
            .zip(y.token_logprobs.iter().chain(&y.top_logprobs))
        {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
    }
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);

    // A short on-policy run with the teacher behind the endpoint: one scoring request per sample.
    let d = tempfile::tempdir().unwrap();
    let student = warm_student(d.path(), &teacher);
    let out = d.path().join("run");
    let extra = format!(
        "[train.on_policy.endpoint]\nbase_url = \"{base}\"\nmodel = \"teacher\"\nconcurrency = 2\n"
    );
    let r = recipe(d.path(), &student, &teacher, &out, "");
    let text_r =
        std::fs::read_to_string(&r).unwrap().replace("max_steps = 12", "max_steps = 2") + &extra;
    std::fs::write(&r, text_r).unwrap();
    count.store(0, std::sync::atomic::Ordering::SeqCst);
    let o = distill(&["train", "--recipe", r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // 2 steps × 8 prompts, and the held-out metric's 8 samples before and after.
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2 * 8 + 2 * 8);
    let c = distill_data::Corpus::open(&out.join("on-policy")).unwrap();
    let traces: Vec<distill_data::Trace> = c.iter().map(|t| t.unwrap()).collect();
    assert_eq!(traces.len(), 16);
    for t in &traces {
        assert_eq!(t.teacher.endpoint, distill_data::EndpointKind::OpenaiChat);
        let lp = t.logprobs.as_ref().unwrap();
        assert_eq!(lp.len() as u64, t.usage.completion_tokens);
        assert!(lp.token_logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
    }
}

/// `recipes/quickstart-onpolicy.toml`, shrunk: SFT, then on-policy steps and an SFT arm given the
/// same seconds of optimizer steps, then the three students measured on the same held-out
/// prompts; the report shows the comparison; a rerun skips what is done; a changed arm is refused
/// rather than silently reused.
#[test]
fn the_quickstart_onpolicy_recipe_compares_sft_and_on_policy_at_equal_time() {
    smollm2();
    let d = tempfile::tempdir().unwrap();
    let run_dir = d.path().join("run");
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/quickstart-onpolicy.toml");
    let sets = [
        format!("recipe.run_dir=\"{}\"", run_dir.display()),
        "generate.limit=24".into(),
        "generate.sampling.max_tokens=48".into(),
        "train.epochs=1".into(),
        "train.micro_batch=2".into(),
        "train.grad_accum=1".into(),
        "on_policy.max_steps=2".into(),
        "on_policy.micro_batch=4".into(),
        "on_policy.max_traces=8".into(),
        "on_policy.policy.prompts_per_step=4".into(),
        "on_policy.policy.max_tokens=16".into(),
        "on_policy.policy.eval_prompts=4".into(),
    ];
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a = vec!["run".to_string(), recipe.display().to_string()];
        for s in &sets {
            a.push("--set".into());
            a.push(s.clone());
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        distill(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run(&[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("[on-policy] done"), "{t}");

    let c: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run_dir.join("eval/on-policy-comparison.json")).unwrap(),
    )
    .unwrap();
    let students = c["students"].as_array().unwrap();
    let names: Vec<&str> = students.iter().map(|s| s["student"].as_str().unwrap()).collect();
    assert_eq!(names, ["after SFT", "+ SFT (equal time)", "+ on-policy"], "{c}");
    assert_eq!(c["held_out_prompts"], 4);
    for s in students {
        let h = &s["held_out"];
        assert!(h["reverse_kl"].as_f64().unwrap().is_finite(), "{s}");
        assert!(h["teacher_nll"].as_f64().unwrap() > 0.0, "{s}");
        let eos = h["eos_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&eos), "{s}");
        assert!(h["sample_tokens"].as_f64().unwrap() > 0.0, "{s}");
        let a = &s["agreement"];
        assert!(a["next_token_accuracy"].as_f64().unwrap() > 0.0, "{s}");
        assert_eq!(a["traces"].as_u64(), students[0]["agreement"]["traces"].as_u64(), "{s}");
    }
    // Three different students: the arms moved their weights.
    let rkl: Vec<f64> =
        students.iter().map(|s| s["held_out"]["reverse_kl"].as_f64().unwrap()).collect();
    assert!(rkl[0] != rkl[2] && rkl[0] != rkl[1], "{rkl:?}");

    // Equal time: the SFT arm stopped at the step count nearest the on-policy steps' seconds.
    let (on_s, sft_s) = (
        c["arms"]["on_policy"]["step_seconds"].as_f64().unwrap(),
        c["arms"]["sft"]["step_seconds"].as_f64().unwrap(),
    );
    assert_eq!(c["arms"]["on_policy"]["steps"], 2);
    let sft_steps = c["arms"]["sft"]["steps"].as_f64().unwrap();
    let mean = sft_s / sft_steps;
    assert!((sft_s - on_s).abs() <= mean / 2.0 + 1e-6 || sft_steps == 1.0, "{c}");
    // Each arm's metrics: per-step seconds, and for on-policy the sample figures.
    let on_m = metrics(&run_dir.join("on-policy"));
    let on_steps: Vec<&serde_json::Value> =
        on_m.iter().filter(|v| v.get("loss").is_some()).collect();
    assert_eq!(on_steps.len(), 2);
    let summed: f64 = on_steps.iter().map(|v| v["step_s"].as_f64().unwrap()).sum();
    assert!((summed - on_s).abs() < 1e-6, "{summed} vs {on_s}");
    assert!(on_steps.iter().all(|v| v["sample_reverse_kl"].is_number()));
    // The on-policy arm started from the SFT export, at the constant on-policy learning rate.
    assert!(on_steps.iter().all(|v| (v["lr"].as_f64().unwrap() - 3e-5).abs() < 1e-12));
    let sft_m = metrics(&run_dir.join("sft-arm"));
    assert!(
        sft_m
            .iter()
            .filter(|v| v.get("loss").is_some())
            .all(|v| (v["lr"].as_f64().unwrap() - 3e-5).abs() < 1e-12)
    );

    // The report shows the comparison and the on-policy curves.
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(html.contains("On-policy distillation"), "no section");
    assert!(html.contains("+ SFT (equal time)") && html.contains("+ on-policy"));
    assert!(html.contains("alt=\"on-policy curves\""));

    // A rerun skips every stage; a changed on-policy arm is refused, not reused.
    let o = run(&[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("[on-policy] done earlier, skipped"), "{t}");
    let mut changed = args(&["--from", "on-policy"]);
    changed.extend(["--set".to_string(), "on_policy.max_steps=3".to_string()]);
    let o = distill(&changed.iter().map(String::as_str).collect::<Vec<_>>());
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("trained with another configuration"), "{t}");
}
