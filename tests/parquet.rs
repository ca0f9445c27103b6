//! Parquet in and out, against files pyarrow writes (scripts/reference/openr1_parquet.py, laid out
//! like Open-R1's OpenR1-Math-220k and Mixture-of-Thoughts) and pyarrow's reading of distill's
//! exports: `corpus import` of both layouts, prompts from Parquet in a `generate` recipe, and
//! `corpus export --format parquet` equal to the JSONL chat export row for row.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{distill, text};
use distill_data::{Corpus, Role, Trace};
use serde_json::Value;

/// The venv Python with pyarrow (scripts/test makes it); `None` skips, unless the fixtures are
/// required (scripts/test), when its absence fails.
fn pyarrow() -> Option<PathBuf> {
    match std::env::var_os("DISTILL_PYARROW_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("DISTILL_REQUIRE_FIXTURES").is_ok_and(|v| v == "1") => {
            panic!("DISTILL_PYARROW_PYTHON is unset: run the suite through scripts/test")
        }
        None => {
            eprintln!("SKIPPED: DISTILL_PYARROW_PYTHON (a Python with pyarrow) is unset");
            None
        }
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference/openr1_parquet.py")
}

fn write_fixtures(py: &Path, dir: &Path) -> Value {
    let o = Command::new(py).arg(script()).arg("write").arg(dir).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

fn pyarrow_read(py: &Path, file: &Path) -> Value {
    let o = Command::new(py).arg(script()).arg("read").arg(file).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn traces(dir: &Path) -> Vec<Trace> {
    Corpus::open(dir).unwrap().iter().map(|t| t.unwrap()).collect()
}

fn import(file: &Path, format: &str, out: &Path) {
    let o = distill(&[
        "corpus",
        "import",
        file.to_str().unwrap(),
        "--format",
        format,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn open_r1_layouts_import_with_their_traces_and_verdicts() {
    let Some(py) = pyarrow() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let want = write_fixtures(&py, tmp.path());

    // OpenR1-Math: one trace per generation, its math-verify verdict, the reference answer.
    let c = tmp.path().join("openr1");
    import(&tmp.path().join("openr1-math.parquet"), "openr1", &c);
    let got = traces(&c);
    let want_r1 = want["openr1-math"].as_array().unwrap();
    assert_eq!(got.len(), want_r1.len());
    for (t, w) in got.iter().zip(want_r1) {
        assert_eq!(t.prompt_id, w["prompt_id"].as_str().unwrap());
        assert_eq!(t.sample as u64, w["sample"].as_u64().unwrap());
        assert_eq!(t.messages.len(), 1);
        assert_eq!(
            (t.messages[0].role, t.messages[0].content.as_str()),
            (Role::User, w["user"].as_str().unwrap())
        );
        assert_eq!(t.reasoning, w["reasoning"].as_str().unwrap());
        assert_eq!(t.answer, w["answer"].as_str().unwrap());
        assert_eq!(t.reference.as_deref(), w["reference"].as_str());
        assert_eq!(t.verdicts.len(), 1);
        assert_eq!(t.verdicts[0].passed, w["passed"].as_bool().unwrap(), "{}", t.id);
        assert_eq!(t.finish_reason.as_str(), w["finish_reason"].as_str().unwrap(), "{}", t.id);
        assert_eq!(t.metadata["solution"], w["solution"]);
    }

    // Mixture-of-Thoughts: the conversation before the last turn is the prompt (earlier
    // assistant turns included); the last turn's <think> is the reasoning.
    let c = tmp.path().join("mot");
    import(&tmp.path().join("mixture-of-thoughts.parquet"), "chat", &c);
    let got = traces(&c);
    let want_mot = want["mixture-of-thoughts"].as_array().unwrap();
    assert_eq!(got.len(), want_mot.len());
    for (t, w) in got.iter().zip(want_mot) {
        assert_eq!(t.prompt_id, w["prompt_id"].as_str().unwrap());
        let turns: Vec<(String, String)> =
            t.messages.iter().map(|m| (m.role.as_str().to_string(), m.content.clone())).collect();
        let want_turns: Vec<(String, String)> = serde_json::from_value(w["turns"].clone()).unwrap();
        assert_eq!(turns, want_turns);
        assert_eq!(t.reasoning, w["reasoning"].as_str().unwrap());
        assert_eq!(t.answer, w["answer"].as_str().unwrap());
    }

    // A bad row names the file and the row.
    let bad = distill(&[
        "corpus",
        "import",
        tmp.path().join("mixture-of-thoughts.parquet").to_str().unwrap(),
        "--format",
        "openr1",
        "--out",
        tmp.path().join("bad").to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("mixture-of-thoughts.parquet: row 0: missing string field 'problem'"),
        "{}",
        text(&bad)
    );
}

#[test]
fn parquet_export_equals_the_jsonl_export_and_reads_in_pyarrow() {
    let Some(py) = pyarrow() else { return };
    let tmp = tempfile::tempdir().unwrap();
    write_fixtures(&py, tmp.path());
    let c = tmp.path().join("mot");
    import(&tmp.path().join("mixture-of-thoughts.parquet"), "chat", &c);
    let r1 = tmp.path().join("openr1");
    import(&tmp.path().join("openr1-math.parquet"), "openr1", &r1);
    for corpus in [&c, &r1] {
        // Each corpus's exports under their own names (export never replaces a file).
        let name = corpus.file_name().unwrap().to_str().unwrap();
        let jsonl = tmp.path().join(format!("{name}-chat.jsonl"));
        let pq = tmp.path().join(format!("{name}-chat.parquet"));
        for (f, out) in [("chat", &jsonl), ("parquet", &pq)] {
            let o = distill(&[
                "corpus",
                "export",
                corpus.to_str().unwrap(),
                "--format",
                f,
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{}", text(&o));
        }
        let read = pyarrow_read(&py, &pq);
        assert_eq!(read["columns"], serde_json::json!(["id", "messages", "reference"]));
        assert_eq!(read["types"]["messages"], "list<item: struct<role: string, content: string>>");
        let rows = read["rows"].as_array().unwrap();
        let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), lines.len());
        for (r, l) in rows.iter().zip(&lines) {
            assert_eq!(r, l, "a Parquet row differs from its JSONL line");
        }

        // TRL's prompt-completion layout: the same turns, split before the reply.
        let pc = tmp.path().join(format!("{name}-pc.parquet"));
        let o = distill(&[
            "corpus",
            "export",
            corpus.to_str().unwrap(),
            "--format",
            "parquet",
            "--columns",
            "prompt-completion",
            "--out",
            pc.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let read = pyarrow_read(&py, &pc);
        assert_eq!(read["columns"], serde_json::json!(["id", "prompt", "completion", "reference"]));
        for (r, l) in read["rows"].as_array().unwrap().iter().zip(&lines) {
            let mut m = l["messages"].as_array().unwrap().clone();
            let reply = m.pop().unwrap();
            assert_eq!(r["prompt"], Value::Array(m));
            assert_eq!(r["completion"], serde_json::json!([reply]));
        }
    }
}

#[test]
fn prompts_run_from_parquet_in_a_recipe() {
    let Some(py) = pyarrow() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let want = write_fixtures(&py, tmp.path());
    let port = common::chat_stub(false);
    let prompts = tmp.path().join("prompts.parquet");
    for (fields, system) in [
        (r#"{ prompt = "problem", answer = "answer" }"#, None),
        (r#"{ messages = "messages", answer = "answer" }"#, Some("Be brief.")),
    ] {
        let dir = tempfile::tempdir_in(tmp.path()).unwrap();
        let r =
            common::openai_recipe(dir.path(), &prompts, &format!("http://127.0.0.1:{port}/v1"), "");
        let t = std::fs::read_to_string(&r).unwrap();
        let t = t
            .lines()
            .map(|l| {
                if l.starts_with("fields = ") {
                    format!("fields = {fields}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&r, t).unwrap();
        let o = distill(&["generate", "--recipe", r.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        let got = traces(&dir.path().join("corpus"));
        let want_p = want["prompts"].as_array().unwrap();
        assert_eq!(got.len(), want_p.len());
        let mut got_users: Vec<(String, Option<String>, String)> = got
            .iter()
            .map(|t| {
                let user = t.messages.iter().find(|m| m.role == Role::User).unwrap();
                let sys =
                    t.messages.iter().find(|m| m.role == Role::System).map(|m| m.content.clone());
                (user.content.clone(), sys, t.reference.clone().unwrap())
            })
            .collect();
        got_users.sort();
        let mut want_users: Vec<(String, Option<String>, String)> = want_p
            .iter()
            .map(|p| {
                (
                    p["problem"].as_str().unwrap().to_string(),
                    system.map(String::from),
                    p["answer"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        want_users.sort();
        assert_eq!(got_users, want_users);
        assert_eq!(got[0].source.dataset, "prompts");
    }
}
