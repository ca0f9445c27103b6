//! Eval scoring on the real benchmark files: the gold answers fed back as predictions score 100%,
//! a shuffled answer key about 0%, and a killed eval resumes without redoing finished problems.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use distill_data::prompts::{ReadOptions, read_prompts};
use distill_data::{EndpointKind, FinishReason};
use distill_teacher::BackendError;
use distill_teacher::backend::{ChatRequest, Choice, Completion, SamplingSpec, Teacher};
use distill_teacher::eval::{BenchSpec, EvalConfig, evaluate, fields_for, majority};
use distill_teacher::run::{BackendConfig, RetryConfig};

/// Answers each problem with a fixed `\boxed{…}`, looked up by the prompt text.
struct Oracle {
    answers: HashMap<String, String>,
    calls: AtomicUsize,
    fail_after: Option<usize>,
}

impl Teacher for Oracle {
    fn complete(&self, req: &ChatRequest) -> Result<Completion, BackendError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_after.is_some_and(|f| n >= f) {
            return Err(BackendError::Fatal("stopped".into()));
        }
        let q = &req.messages.last().unwrap().content;
        let a = self.answers.get(q).cloned().unwrap_or_default();
        let choice = Choice {
            content: format!("<think>\nthinking\n</think>\n\nThe answer is $\\boxed{{{a}}}$."),
            reasoning: None,
            finish_reason: FinishReason::Stop,
            logprobs: None,
            completion_tokens: Some(9),
        };
        Ok(Completion {
            cached_prompt_tokens: 0,
            cost_usd: None,
            choices: vec![choice; req.n as usize],
            prompt_tokens: 10,
            completion_tokens: 9 * req.n as u64,
            model: "oracle".into(),
        })
    }
    fn kind(&self) -> EndpointKind {
        EndpointKind::Synthetic
    }
    fn model(&self) -> String {
        "oracle".into()
    }
    fn describe(&self) -> String {
        "oracle".into()
    }
}

fn benches() -> Option<Vec<BenchSpec>> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/eval");
    d.exists().then(|| {
        vec![
            BenchSpec {
                name: "aime24".into(),
                file: d.join("aime24.jsonl"),
                fields: None,
                limit: None,
            },
            BenchSpec {
                name: "math500".into(),
                file: d.join("math500.jsonl"),
                fields: None,
                limit: Some(50),
            },
        ]
    })
}

fn cfg(out: PathBuf, benchmarks: Vec<BenchSpec>) -> EvalConfig {
    EvalConfig {
        benchmarks,
        k: 2,
        sampling: SamplingSpec::default(),
        backend: BackendConfig::Openai { endpoints: vec![] },
        retry: RetryConfig { max_attempts: 1, ..Default::default() },
        output: out,
        math: None,
    }
}

/// prompt text → gold answer, shifted by `shift` problems for a wrong key.
fn key(benches: &[BenchSpec], shift: usize) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for b in benches {
        let (ps, _) =
            read_prompts(&b.file, &b.name, &fields_for(b).unwrap(), &ReadOptions::default())
                .unwrap();
        let ps: Vec<_> = ps.into_iter().take(b.limit.unwrap_or(usize::MAX)).collect();
        for (i, p) in ps.iter().enumerate() {
            let gold = ps[(i + shift) % ps.len()].reference.clone().unwrap();
            m.insert(p.messages.last().unwrap().content.clone(), gold);
        }
    }
    m
}

#[test]
fn gold_scores_100_and_a_shuffled_key_about_0() {
    let Some(b) = benches() else {
        return distill_data::testing::fixture_missing("../shared not present");
    };
    let d = tempfile::tempdir().unwrap();
    let gold: Arc<dyn Teacher> =
        Arc::new(Oracle { answers: key(&b, 0), calls: AtomicUsize::new(0), fail_after: None });
    let s = evaluate(&cfg(d.path().join("gold"), b.clone()), &[gold], |_, _, _| {}).unwrap();
    assert_eq!(s.iter().map(|x| x.problems).collect::<Vec<_>>(), vec![30, 50]);
    for x in &s {
        assert_eq!((x.pass_at_1, x.cons_at_k), (1.0, 1.0), "{}", x.name);
    }
    let wrong: Arc<dyn Teacher> =
        Arc::new(Oracle { answers: key(&b, 7), calls: AtomicUsize::new(0), fail_after: None });
    let s = evaluate(&cfg(d.path().join("shuffled"), b.clone()), &[wrong], |_, _, _| {}).unwrap();
    for x in &s {
        assert!(x.pass_at_1 < 0.05, "{}: shuffled key scored {}", x.name, x.pass_at_1);
    }
    // Well-formed per-problem output.
    let lines = std::fs::read_to_string(d.path().join("gold/aime24.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["samples"].as_array().unwrap().len(), 2);
    assert!(first["majority_answer"].is_string());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("gold/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["benchmarks"][0]["pass_at_1"], 1.0);
}

#[test]
fn a_stopped_eval_resumes_where_it_stopped() {
    let Some(b) = benches() else {
        return distill_data::testing::fixture_missing("../shared not present");
    };
    let b = vec![b[0].clone()];
    let d = tempfile::tempdir().unwrap();
    let first =
        Arc::new(Oracle { answers: key(&b, 0), calls: AtomicUsize::new(0), fail_after: Some(12) });
    let s = evaluate(
        &cfg(d.path().to_path_buf(), b.clone()),
        &[first.clone() as Arc<dyn Teacher>],
        |_, _, _| {},
    )
    .unwrap();
    assert_eq!(s[0].problems, 12);
    // A torn last line (a crash mid-write) is dropped, not trusted.
    let p = d.path().join("aime24.jsonl");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str("{\"id\": \"aime24/tor");
    std::fs::write(&p, text).unwrap();
    let second =
        Arc::new(Oracle { answers: key(&b, 0), calls: AtomicUsize::new(0), fail_after: None });
    let s = evaluate(
        &cfg(d.path().to_path_buf(), b),
        &[second.clone() as Arc<dyn Teacher>],
        |_, _, _| {},
    )
    .unwrap();
    assert_eq!(s[0].problems, 30);
    assert_eq!(
        second.calls.load(Ordering::SeqCst),
        18,
        "only the unfinished problems are asked again"
    );
    assert_eq!(s[0].pass_at_1, 1.0);
}

#[test]
fn majority_votes_by_equivalence() {
    let v = |xs: &[&str]| xs.iter().map(|x| Some(x.to_string())).collect::<Vec<_>>();
    assert_eq!(majority(&v(&["1/2", "0.5", "3", "\\frac{1}{2}"])).as_deref(), Some("1/2"));
    assert_eq!(majority(&[None, None]), None);
}

/// A teacher that panics on every request (a token id past the embedding did this): eval fails
/// with the panic's message instead of exiting 0 with "problems 0, pass@1 -0.0%".
#[test]
fn a_panicking_teacher_fails_the_eval() {
    struct Panics;
    impl Teacher for Panics {
        fn complete(&self, _: &ChatRequest) -> Result<Completion, BackendError> {
            panic!("index out of bounds: the len is 49152 but the index is 50000")
        }
        fn kind(&self) -> EndpointKind {
            EndpointKind::Synthetic
        }
        fn model(&self) -> String {
            "panics".into()
        }
        fn describe(&self) -> String {
            "panics".into()
        }
    }
    let d = tempfile::tempdir().unwrap();
    let bench = d.path().join("b.jsonl");
    std::fs::write(&bench, "{\"problem\": \"1+1?\", \"answer\": \"2\"}\n").unwrap();
    let b = vec![BenchSpec { name: "b".into(), file: bench, fields: None, limit: None }];
    let e = evaluate(
        &cfg(d.path().join("out"), b),
        &[Arc::new(Panics) as Arc<dyn Teacher>],
        |_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("the teacher panicked: index out of bounds"), "{e}");
}
