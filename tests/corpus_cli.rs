//! The `distill corpus` commands end to end, including a writer killed with SIGKILL.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use distill_data::synth::{self, Rng};
use distill_data::{Corpus, Trace};

fn distill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill")).args(args).output().expect("run distill")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn write_jsonl(path: &Path, traces: &[Trace]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for t in traces {
        writeln!(f, "{}", t.to_json()).unwrap();
    }
}

/// Every record readable, none twice, each equal to its source; returns the ids.
fn check_corpus(dir: &Path, source: &HashMap<String, Trace>) -> HashSet<String> {
    let c = Corpus::open(dir).expect("a killed writer must leave a readable corpus");
    let mut ids = HashSet::new();
    for t in c.iter() {
        let t = t.expect("no partial record may be visible");
        assert_eq!(Some(&t), source.get(&t.id), "record {} differs from its source", t.id);
        assert!(ids.insert(t.id.clone()), "record {} appears twice", t.id);
    }
    assert_eq!(ids.len() as u64, c.len());
    ids
}

#[test]
fn import_killed_at_random_moments_loses_and_duplicates_nothing() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("traces.jsonl");
    let corpus = d.path().join("corpus");
    let traces: Vec<Trace> = synth::traces(5, 2000, 2).collect();
    write_jsonl(&input, &traces);
    let source: HashMap<String, Trace> = traces.iter().map(|t| (t.id.clone(), t.clone())).collect();
    let (inp, out) = (input.to_str().unwrap(), corpus.to_str().unwrap());
    let args = [
        "corpus",
        "import",
        inp,
        "--out",
        out,
        "--commit-every",
        "40",
        "--frame-records",
        "8",
        "--shard-records",
        "64",
    ];

    let mut rng = Rng::new(42);
    let mut committed = HashSet::new();
    let mut kills = 0;
    for round in 0..60 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.range(1, 40)));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        if !finished {
            kills += 1;
        }
        if !corpus.join("manifest.json").exists() {
            continue; // killed before the corpus was created
        }
        let ids = check_corpus(&corpus, &source);
        assert!(committed.is_subset(&ids), "round {round}: a committed record was lost");
        committed = ids;
        if kills >= 20 && committed.len() < traces.len() {
            break;
        }
    }
    assert!(kills >= 20, "only {kills} runs were killed mid-way");
    let o = distill(&args);
    assert!(o.status.success(), "{}", text(&o));
    let ids = check_corpus(&corpus, &source);
    assert_eq!(ids, source.keys().cloned().collect::<HashSet<_>>());
    let v = distill(&["corpus", "verify", out]);
    assert!(v.status.success(), "{}", text(&v));
}

#[test]
fn verify_names_the_damaged_shard_and_frame() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("t.jsonl");
    let corpus = d.path().join("c");
    write_jsonl(&input, &synth::traces(3, 40, 1).collect::<Vec<_>>());
    let out = corpus.to_str().unwrap();
    let o = distill(&[
        "corpus",
        "import",
        input.to_str().unwrap(),
        "--out",
        out,
        "--frame-records",
        "5",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let shard = corpus.join("shard-00000.jsonl.zst");
    let mut bytes = std::fs::read(&shard).unwrap();
    let c = Corpus::open(&corpus).unwrap();
    let entry = distill_data::corpus::reader::load_index(&corpus, &c.manifest().shards[0]).unwrap();
    let f3 = &entry.frames[3];
    bytes[(f3.offset + f3.compressed as u64 / 2) as usize] ^= 0x20;
    std::fs::write(&shard, bytes).unwrap();
    let v = distill(&["corpus", "verify", out]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(text(&v).contains("DAMAGED shard-00000.jsonl.zst frame 3"), "{}", text(&v));
    // Other frames still read by index.
    let g = distill(&["corpus", "get", out, "--index", "0", "--raw"]);
    assert!(g.status.success(), "{}", text(&g));
    let g = distill(&["corpus", "get", out, "--index", "16"]);
    assert!(!g.status.success());
    assert!(text(&g).contains("shard-00000.jsonl.zst, frame 3"), "{}", text(&g));
}

#[test]
fn export_then_import_reproduces_the_corpus_and_cat_get_agree() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("t.jsonl");
    let traces: Vec<Trace> = synth::traces(8, 30, 2).collect();
    write_jsonl(&input, &traces);
    let (a, b, exported) = (d.path().join("a"), d.path().join("b"), d.path().join("e.jsonl"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    assert!(distill(&["corpus", "import", &s(&input), "--out", &s(&a)]).status.success());
    let o = distill(&["corpus", "export", &s(&a), "--out", &s(&exported)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&exported).unwrap(), std::fs::read(&input).unwrap());
    // stderr is not a terminal here: progress still shows, as plain lines (a log, CI, nohup).
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines().any(|l| l.contains(" records (") && !l.contains('\r')),
        "no progress line in a log:\n{err}"
    );
    assert!(distill(&["corpus", "import", &s(&exported), "--out", &s(&b)]).status.success());
    let cat = distill(&["corpus", "cat", &s(&b)]);
    assert_eq!(cat.stdout, std::fs::read(&input).unwrap());
    let cat = distill(&["corpus", "cat", &s(&b), "--skip", "10", "--limit", "3"]);
    let lines: Vec<&str> = std::str::from_utf8(&cat.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(Trace::from_json(lines[0]).unwrap(), traces[10]);
    let get = distill(&["corpus", "get", &s(&b), &traces[17].id, "--raw"]);
    assert_eq!(String::from_utf8(get.stdout).unwrap().trim_end(), traces[17].to_json());

    let chat = d.path().join("chat.jsonl");
    assert!(
        distill(&["corpus", "export", &s(&a), "--format", "chat", "--out", &s(&chat)])
            .status
            .success()
    );
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&chat).unwrap().lines().next().unwrap())
            .unwrap();
    let reply = first["messages"][1]["content"].as_str().unwrap();
    assert!(reply.starts_with("<think>\n") && reply.contains("\n</think>\n\n"), "{reply}");
    let st = distill(&["corpus", "stats", &s(&a)]);
    assert!(text(&st).contains("records     60 in 1 shards"), "{}", text(&st));
}

#[test]
fn import_reports_bad_lines_by_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("mixed.jsonl");
    let good = synth::traces(1, 2, 1).map(|t| t.to_json()).collect::<Vec<_>>();
    std::fs::write(&input, format!("{}\n{{not json\n{}\n", good[0], good[1])).unwrap();
    let out = d.path().join("c");
    let o = distill(&["corpus", "import", input.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains(&format!("{}:2:", input.display())), "{}", text(&o));
    let o = distill(&[
        "corpus",
        "import",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--skip-bad",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("imported 2 records") && text(&o).contains("1 bad lines"),
        "{}",
        text(&o)
    );
}

#[test]
fn import_reads_chat_and_openr1_rows() {
    let d = tempfile::tempdir().unwrap();
    let chat = d.path().join("chat.jsonl");
    std::fs::write(&chat, r#"{"id": "q1", "answer": "4", "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\ntwo and two\n</think>\n\n\\boxed{4}"}]}
{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "reasoning_content": "greet back"}]}
"#).unwrap();
    let r1 = d.path().join("openr1.jsonl");
    std::fs::write(&r1, r#"{"uuid": "u-7", "problem": "1+1?", "answer": "2", "generations": ["<think>one plus one</think>2", "<think>hmm"], "correctness_math_verify": [true, false], "finish_reasons": ["stop", "length"]}
"#).unwrap();
    let out = d.path().join("c");
    let o = distill(&[
        "corpus",
        "import",
        chat.to_str().unwrap(),
        "--format",
        "chat",
        "--out",
        out.to_str().unwrap(),
        "--model",
        "r1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = distill(&[
        "corpus",
        "import",
        r1.to_str().unwrap(),
        "--format",
        "openr1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let c = Corpus::open(&out).unwrap();
    let t = c.get_by_id("chat/q1#0").unwrap().unwrap();
    assert_eq!(
        (t.reasoning.as_str(), t.answer.as_str(), t.reference.as_deref()),
        ("two and two", "\\boxed{4}", Some("4"))
    );
    assert_eq!(t.teacher.model, "r1");
    let t = c.get(1).unwrap();
    assert_eq!((t.reasoning.as_str(), t.answer.as_str()), ("greet back", "hello"));
    let t = c.get_by_id("openr1/u-7#1").unwrap().unwrap();
    assert!(!t.passed());
    assert_eq!(t.finish_reason, distill_data::FinishReason::Length);
    assert_eq!(c.len(), 4);
}

/// `distill corpus decontaminate` (the same routine as the `filter` stage): a trace whose problem
/// (its user turn) shares an 8-gram with an eval problem is dropped and reported with the eval
/// file, line and shared words; text outside the user turns (here a system message) is not the
/// problem and does not count; a second run over the same destination resumes.
#[test]
fn decontaminate_drops_copied_problems_with_one_report_schema() {
    use distill_data::{CorpusWriter, Message, Role, WriterOptions};
    let d = tempfile::tempdir().unwrap();
    let eval = d.path().join("eval.jsonl");
    std::fs::write(
        &eval,
        "{\"problem\": \"Find the number of ordered pairs of integers such that both are positive and sum to ten\"}\n{\"problem\": \"What is the area of a circle of radius three\"}\n",
    )
    .unwrap();
    let src = d.path().join("src");
    let mut w = CorpusWriter::open(&src, WriterOptions::default()).unwrap();
    let base: Vec<Trace> = synth::traces(5, 3, 1).collect();
    let texts = [
        (
            None,
            "Please find the number of ordered pairs of integers such that both are positive and sum to ten.",
        ),
        (
            Some(
                "Find the number of ordered pairs of integers such that both are positive and sum to ten",
            ),
            "What is 2 + 2?",
        ),
        (None, "What is 3 + 4?"),
    ];
    for (mut t, (system, user)) in base.into_iter().zip(texts) {
        t.messages = system
            .map(|s| Message::new(Role::System, s))
            .into_iter()
            .chain([Message::new(Role::User, user)])
            .collect();
        w.append(t).unwrap();
    }
    w.commit().unwrap();
    let out = d.path().join("clean");
    let args = [
        "corpus",
        "decontaminate",
        src.to_str().unwrap(),
        "--against",
        eval.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let o = distill(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("decontamination.json")).unwrap())
            .unwrap();
    assert_eq!(rep["kept"], 2, "{rep}");
    assert_eq!(rep["ngram"], 8);
    assert_eq!(rep["eval_problems"], 2);
    let dropped = rep["dropped"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "{rep}");
    assert_eq!(dropped[0]["eval_line"], 1);
    assert!(dropped[0]["shared_ngram"].as_str().unwrap().split(' ').count() == 8, "{rep}");
    assert!(dropped[0]["eval_file"].as_str().unwrap().ends_with("eval.jsonl"));
    assert_eq!(Corpus::open(&out).unwrap().len(), 2);
    // Again over the same destination: nothing new, both already present.
    let o = distill(&args);
    assert!(o.status.success());
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("decontamination.json")).unwrap())
            .unwrap();
    assert_eq!(
        (rep["kept"].as_u64(), rep["already_present"].as_u64()),
        (Some(0), Some(2)),
        "{rep}"
    );
}

/// `distill corpus cat … | head -1`: the reader leaves after one line and distill ends quietly
/// (killed by SIGPIPE, as Unix tools are), not with a panic.
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("c");
    let mut w = distill_data::CorpusWriter::open(&src, Default::default()).unwrap();
    for t in synth::traces(9, 2000, 1) {
        w.append(t).unwrap();
    }
    w.commit().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["corpus", "cat", src.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    // The read end is dropped here; distill's next writes hit a closed pipe.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?} {stderr}", out.status);
}

/// An I/O error says its cause once, after the path.
#[test]
fn a_missing_corpus_names_the_path_and_the_cause_once() {
    let o = distill(&["corpus", "stats", "/nonexistent-distill-corpus"]);
    let t = text(&o);
    assert!(!o.status.success());
    assert!(t.contains("/nonexistent-distill-corpus/manifest.json"), "{t}");
    assert_eq!(t.matches("os error 2").count(), 1, "{t}");
}

/// A record whose id holds a newline is refused with the file and line it came from.
#[test]
fn a_bad_id_in_an_import_names_its_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("in.jsonl");
    std::fs::write(
        &src,
        "{\"id\": \"ok\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n{\"id\": \"bad\\nid\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n",
    )
    .unwrap();
    let out = d.path().join("c");
    let o = distill(&[
        "corpus",
        "import",
        "--format",
        "chat",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains(&format!("{}:2", src.display())) && t.contains("newline"), "{t}");

    // With --skip-bad the row is skipped and named, not the end of the import (it stopped it);
    // an id over 255 bytes likewise (it imported, then `verify` called the fresh corpus DAMAGED:
    // the writer and the reader disagreed on the limit).
    let long = "x".repeat(300);
    let mut rows = std::fs::read_to_string(&src).unwrap();
    rows.push_str(&format!(
        "{{\"id\": \"{long}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}, {{\"role\": \"assistant\", \"content\": \"yo\"}}]}}\n"
    ));
    std::fs::write(&src, rows).unwrap();
    let out = d.path().join("c2");
    let args = ["corpus", "import", "--format", "chat", "--skip-bad", src.to_str().unwrap()];
    let o = distill(&[&args[..], &["--out", out.to_str().unwrap()]].concat());
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("2 bad lines") && t.contains(":2") && t.contains(":3"), "{t}");
    assert!(t.contains("at most 255 bytes"), "{t}");
    assert_eq!(Corpus::open(&out).unwrap().len(), 1);
    let v = distill(&["corpus", "verify", out.to_str().unwrap()]);
    assert!(v.status.success(), "{}", text(&v));
}

/// Issue 11's salvage promise, with a fixed seed: a 2-shard corpus gets one random truncation,
/// byte flip or deletion at each of 100 places (a fresh copy each time). Every time, `repair`
/// recovers every record of every frame the damage did not touch (and nothing else), `verify`
/// names every damaged frame, and no command panics.
#[test]
fn random_damage_is_named_by_verify_and_repair_recovers_every_intact_frame() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("t.jsonl");
    let pristine = d.path().join("pristine");
    let traces: Vec<Trace> = synth::traces(11, 60, 2).collect();
    write_jsonl(&input, &traces);
    let source: HashMap<String, Trace> = traces.iter().map(|t| (t.id.clone(), t.clone())).collect();
    let o = distill(&[
        "corpus",
        "import",
        input.to_str().unwrap(),
        "--out",
        pristine.to_str().unwrap(),
        "--frame-records",
        "8",
        "--shard-records",
        "64",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let c = Corpus::open(&pristine).unwrap();
    assert_eq!(c.manifest().shards.len(), 2);
    // Per shard: its bytes and its frames' byte ranges and ids.
    // (file name, bytes, per frame: start, end, ids)
    type Frames = Vec<(u64, u64, Vec<String>)>;
    let shards: Vec<(String, Vec<u8>, Frames)> = c
        .manifest()
        .shards
        .iter()
        .map(|e| {
            let ix = distill_data::corpus::reader::load_index(&pristine, e).unwrap();
            let frames = (0..ix.frames.len())
                .map(|i| {
                    let f = &ix.frames[i];
                    let ids = ix.ids[ix.starts[i] as usize..ix.starts[i + 1] as usize].to_vec();
                    (f.offset, f.offset + f.compressed as u64, ids)
                })
                .collect();
            (e.file.clone(), std::fs::read(pristine.join(&e.file)).unwrap(), frames)
        })
        .collect();

    let mut rng = Rng::new(2026);
    let mut kinds = [0usize; 3];
    for trial in 0..100 {
        let dir = d.path().join(format!("t{trial}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(pristine.join("manifest.json"), dir.join("manifest.json")).unwrap();
        for (name, bytes, _) in &shards {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let s = rng.below(2) as usize;
        let (name, bytes, frames) = &shards[s];
        let pos = rng.below(bytes.len() as u64);
        let kind = rng.below(3) as usize;
        kinds[kind] += 1;
        let mut b = bytes.clone();
        // The byte range the damage touches, and a description for failures.
        let (hit, what) = match kind {
            0 => {
                b.truncate(pos as usize);
                (pos..u64::MAX, format!("{name} truncated at {pos}"))
            }
            1 => {
                b[pos as usize] ^= rng.range(1, 256) as u8;
                (pos..pos + 1, format!("{name} byte {pos} flipped"))
            }
            _ => {
                let n = rng.range(1, 17).min(bytes.len() as u64 - pos);
                b.drain(pos as usize..(pos + n) as usize);
                (pos..pos + n, format!("{name} bytes {pos}..{} deleted", pos + n))
            }
        };
        std::fs::write(dir.join(name), &b).unwrap();
        let damaged: Vec<usize> = frames
            .iter()
            .enumerate()
            .filter(|(_, (a, e, _))| hit.start < *e && *a < hit.end)
            .map(|(i, _)| i)
            .collect();
        let intact: HashSet<String> = shards
            .iter()
            .enumerate()
            .flat_map(|(si, (_, _, fr))| {
                let damaged = &damaged;
                fr.iter()
                    .enumerate()
                    .filter(move |(fi, _)| si != s || !damaged.contains(fi))
                    .flat_map(|(_, (_, _, ids))| ids.iter().cloned())
            })
            .collect();

        let dir_s = dir.to_str().unwrap();
        let fixed = d.path().join(format!("r{trial}"));
        let runs = [
            distill(&["corpus", "verify", dir_s, "--json"]),
            distill(&["corpus", "repair", dir_s, "--out", fixed.to_str().unwrap()]),
            distill(&["corpus", "stats", dir_s, "--json"]),
            distill(&["corpus", "cat", dir_s, "--skip-damaged"]),
            distill(&["corpus", "get", dir_s, &traces[0].id]),
            distill(&["corpus", "cat", dir_s]),
        ];
        for (i, r) in runs.iter().enumerate() {
            assert!(
                r.status.code().is_some_and(|c| c == 0 || c == 1),
                "{what}: command {i} crashed: {}",
                text(r)
            );
            assert!(!text(r).contains("panicked"), "{what}: command {i}: {}", text(r));
        }

        // verify: damaged (the shard's checksum differs), and every damaged frame named.
        let v: serde_json::Value = serde_json::from_slice(&runs[0].stdout).unwrap();
        assert_eq!(runs[0].status.code(), Some(1), "{what}");
        let named: HashSet<(String, u64)> = v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| Some((p["shard"].as_str()?.to_string(), p["frame"].as_u64()?)))
            .collect();
        let must_name = if kind == 0 {
            damaged.first().copied().into_iter().collect()
        } else {
            damaged.clone()
        };
        for f in must_name {
            assert!(named.contains(&(name.clone(), f as u64)), "{what}: frame {f} not named: {v}");
        }

        // repair: every record of every intact frame, equal to its source; nothing invented.
        let fixed_corpus = Corpus::open(&fixed).unwrap();
        let mut got = HashSet::new();
        for t in fixed_corpus.iter() {
            let t = t.unwrap();
            assert_eq!(Some(&t), source.get(&t.id), "{what}: record {} differs", t.id);
            got.insert(t.id);
        }
        let missing: Vec<&String> = intact.difference(&got).collect();
        assert!(missing.is_empty(), "{what}: intact records not recovered: {missing:?}");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixed.join("repair-report.json")).unwrap())
                .unwrap();
        assert_eq!(report["recovered"].as_u64(), Some(got.len() as u64), "{what}");
        if got.len() < traces.len() {
            assert_eq!(runs[1].status.code(), Some(1), "{what}: loss must not exit 0");
        }
        // A flip leaves the index intact: the lost ids are named exactly.
        if kind == 1 && !damaged.is_empty() {
            let lost: HashSet<String> = report["damage"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|d| d["lost_ids"].as_array().unwrap().iter())
                .map(|x| x.as_str().unwrap().to_string())
                .collect();
            let expect: HashSet<String> =
                source.keys().filter(|k| !got.contains(*k)).cloned().collect();
            assert_eq!(lost, expect, "{what}");
        }
    }
    assert!(kinds.iter().all(|&k| k >= 20), "{kinds:?}");
}

/// Issue 11, item 3: one shard truncated mid-frame no longer makes the whole corpus unreadable.
/// Strict readers name the shard and point at the salvage options; stats, get, and the
/// `--skip-damaged` readers read everything else; with `manifest.json` gone too, repair still
/// finds the shards.
#[test]
fn a_truncated_shard_leaves_the_rest_readable() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("t.jsonl");
    let corpus = d.path().join("c");
    let traces: Vec<Trace> = synth::traces(5, 30, 1).collect();
    write_jsonl(&input, &traces);
    let out = corpus.to_str().unwrap();
    let o = distill(&[
        "corpus",
        "import",
        input.to_str().unwrap(),
        "--out",
        out,
        "--frame-records",
        "5",
        "--shard-records",
        "15",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let shard0 = corpus.join("shard-00000.jsonl.zst");
    let bytes = std::fs::read(&shard0).unwrap();
    let ix = distill_data::corpus::reader::load_index(
        &corpus,
        &Corpus::open(&corpus).unwrap().manifest().shards[0],
    )
    .unwrap();
    // Cut in the middle of frame 1: frame 0 (5 records) survives, frames 1 and 2 are lost.
    let f1 = &ix.frames[1];
    std::fs::write(&shard0, &bytes[..(f1.offset + f1.compressed as u64 / 2) as usize]).unwrap();

    let strict = distill(&["corpus", "cat", out]);
    assert_eq!(strict.status.code(), Some(1), "{}", text(&strict));
    assert!(text(&strict).contains("shard-00000.jsonl.zst"), "{}", text(&strict));
    assert!(text(&strict).contains("--skip-damaged"), "{}", text(&strict));

    let cat = distill(&["corpus", "cat", out, "--skip-damaged"]);
    assert!(cat.status.success(), "{}", text(&cat));
    assert_eq!(String::from_utf8_lossy(&cat.stdout).lines().count(), 20);
    assert!(String::from_utf8_lossy(&cat.stderr).contains("10 records lost"), "{}", text(&cat));

    let stats = distill(&["corpus", "stats", out]);
    assert!(stats.status.success(), "{}", text(&stats));
    assert!(text(&stats).contains("records     20 "), "{}", text(&stats));
    let get = distill(&["corpus", "get", out, &traces[20].id]);
    assert!(get.status.success(), "an id in the intact shard: {}", text(&get));

    let jsonl = d.path().join("e.jsonl");
    let e = distill(&["corpus", "export", out, "--out", jsonl.to_str().unwrap(), "--skip-damaged"]);
    assert!(e.status.success(), "{}", text(&e));
    assert_eq!(std::fs::read_to_string(&jsonl).unwrap().lines().count(), 20);
    let merged = d.path().join("m");
    let m = distill(&["corpus", "merge", out, "--out", merged.to_str().unwrap(), "--skip-damaged"]);
    assert!(m.status.success(), "{}", text(&m));
    assert_eq!(Corpus::open(&merged).unwrap().len(), 20);

    std::fs::remove_file(corpus.join("manifest.json")).unwrap();
    let fixed = d.path().join("fixed");
    let r = distill(&["corpus", "repair", out, "--out", fixed.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1), "records were lost: {}", text(&r));
    assert!(text(&r).contains("manifest.json"), "{}", text(&r));
    let c = Corpus::open(&fixed).unwrap();
    assert_eq!(c.len(), 20);
    for t in c.iter() {
        let t = t.unwrap();
        assert!(traces.contains(&t), "{}", t.id);
    }
}

/// `corpus export` never replaces a file without `--force`, and never writes inside a corpus
/// (`--out CORPUS/manifest.json` left the corpus unreadable; `--out CORPUS/shard-00000.jsonl.zst`
/// destroyed its records). `corpus import --out DIR` never starts a corpus in someone else's
/// directory, nor deletes its `*.tmp` files.
#[test]
fn exports_and_imports_never_replace_or_delete_what_is_not_theirs() {
    let d = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let input = d.path().join("t.jsonl");
    let traces: Vec<Trace> = synth::traces(5, 5, 1).collect();
    write_jsonl(&input, &traces);
    let c = d.path().join("c");
    assert!(distill(&["corpus", "import", &s(&input), "--out", &s(&c)]).status.success());

    let mine = d.path().join("mine.jsonl");
    std::fs::write(&mine, "the user's own file").unwrap();
    let o = distill(&["corpus", "export", &s(&c), "--out", &s(&mine)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--force"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "the user's own file");
    let o = distill(&["corpus", "export", &s(&c), "--out", &s(&mine), "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&mine).unwrap().lines().count(), 5);

    for inside in ["manifest.json", "shard-00000.jsonl.zst", "new.jsonl"] {
        for fmt in ["jsonl", "parquet"] {
            let out = c.join(inside);
            let args = ["corpus", "export", &s(&c), "--out", &s(&out), "--format", fmt, "--force"];
            let o = distill(&args);
            assert_eq!(o.status.code(), Some(1), "{inside}: {}", text(&o));
            assert!(text(&o).contains("is a corpus"), "{}", text(&o));
        }
    }
    assert!(!c.join("new.jsonl").exists());
    let v = distill(&["corpus", "verify", &s(&c)]);
    assert!(v.status.success(), "the corpus is intact: {}", text(&v));
    assert_eq!(Corpus::open(&c).unwrap().len(), 5);

    let theirs = d.path().join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("thesis.tmp"), "chapter 1").unwrap();
    let o = distill(&["corpus", "import", &s(&input), "--out", &s(&theirs)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not a distill corpus"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(theirs.join("thesis.tmp")).unwrap(), "chapter 1");

    // A kill between the first manifest's write and its rename leaves only
    // `manifest.json.tmp` (and the lock): that directory is distill's own new corpus.
    let cut = d.path().join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    std::fs::write(cut.join(".lock"), "").unwrap();
    std::fs::write(cut.join("manifest.json.tmp"), "{\"sch").unwrap();
    let o = distill(&["corpus", "import", &s(&input), "--out", &s(&cut)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!cut.join("manifest.json.tmp").exists());
    assert_eq!(Corpus::open(&cut).unwrap().len(), 5);
}
