//! `distill run` end to end on the tiny recipe (the quickstart, shrunk): killed during generation
//! and during training, it resumes without redoing finished stages; the student's agreement with
//! the teacher rises; the report renders in a real headless browser. Bad recipes fail early.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn run_args(run_dir: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "recipes/tiny.toml".into(),
        "--set".into(),
        format!("recipe.run_dir=\"{}\"", run_dir.display()),
    ]
}

/// Start `distill run`, wait until `file` appears, SIGKILL it; returns whether it was still running.
fn kill_when(args: &[String], file: &Path) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !file.exists() && t0.elapsed() < Duration::from_secs(900) {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let running = child.try_wait().unwrap().is_none();
    child.kill().ok();
    child.wait().unwrap();
    running
}

/// `distill ARGS` with stdout and stderr read line by line as they arrive: (success, all output,
/// every line with its arrival time in seconds since the start, in arrival order).
fn run_timed(args: &[String]) -> (bool, String, Vec<(f64, String)>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let timed = |r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            std::io::BufReader::new(r)
                .lines()
                .map(|l| (t0.elapsed().as_secs_f64(), l.unwrap()))
                .collect::<Vec<_>>()
        })
    };
    let out = timed(Box::new(child.stdout.take().unwrap()));
    let err = timed(Box::new(child.stderr.take().unwrap()));
    let ok = child.wait().unwrap().success();
    let mut lines = out.join().unwrap();
    lines.extend(err.join().unwrap());
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    let all = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    (ok, all, lines)
}

fn run_in_repo(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[test]
fn the_tiny_pipeline_survives_kills_improves_the_student_and_reports() {
    smollm2();
    let d = tempfile::tempdir().unwrap();
    let run_dir = d.path().join("tiny");
    let args = run_args(&run_dir);

    // Killed once the corpus has its first committed shard, mid-generation.
    assert!(
        kill_when(&args, &run_dir.join("corpus/shard-00000.jsonl.zst")),
        "generation finished before the kill"
    );
    assert!(run_dir.join("stages/prepare.json").exists());
    assert!(!run_dir.join("stages/generate.json").exists());
    // Killed again once training has written its first checkpoint.
    assert!(
        kill_when(&args, &run_dir.join("train/checkpoints/step-000002/state.json")),
        "training finished before the kill"
    );
    assert!(
        run_dir.join("stages/generate.json").exists()
            && !run_dir.join("stages/train.json").exists()
    );
    // stderr is a pipe here, as in a log file: the train and agreement stages still say where they
    // are, a line at least every 15 s (the default interval is 10 s), each line timed as it arrives.
    let (ok, out, lines) = run_timed(&args);
    assert!(ok, "{out}");
    for stage in ["train", "agreement"] {
        let start = format!("[{stage}] …");
        let end = format!("[{stage}] done");
        let part: Vec<&(f64, String)> = lines
            .iter()
            .skip_while(|(_, l)| *l != start)
            .take_while(|(_, l)| !l.starts_with(&end))
            .collect();
        assert!(!part.is_empty(), "no [{stage}] lines in {lines:?}");
        let worst = part.windows(2).map(|w| w[1].0 - w[0].0).fold(0.0, f64::max);
        assert!(worst <= 15.0, "{worst:.1} s without a line during {stage}: {part:?}");
    }
    assert!(
        out.contains("[prepare] done earlier, skipped")
            && out.contains("[generate] done earlier, skipped"),
        "{out}"
    );
    assert!(out.contains("report:"), "{out}");

    // Every (prompt, sample) once; the student moved toward the teacher.
    let c = distill_data::Corpus::open(&run_dir.join("corpus")).unwrap();
    let ids: std::collections::HashSet<&str> = c.ids().collect();
    assert_eq!(ids.len() as u64, c.len());
    let a: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("eval/agreement.json")).unwrap(),
    )
    .unwrap();
    let f = |k: &str, w: &str| a[k][w].as_f64().unwrap();
    eprintln!("agreement before {} after {}", a["before"], a["after"]);
    assert!(f("after", "kl") < f("before", "kl"), "KL to the teacher must fall");
    assert!(
        f("after", "next_token_accuracy") > f("before", "next_token_accuracy"),
        "next-token accuracy must rise"
    );
    assert!(
        run_dir.join("train/export/model.safetensors").exists()
            || run_dir.join("train/export/model.safetensors.index.json").exists()
    );

    // --only reruns one stage.
    let mut only = args.clone();
    only.extend(["--only".into(), "report".into()]);
    let o = run_in_repo(&only);
    assert!(o.status.success() && !text(&o).contains("[train]"), "{}", text(&o));

    check_report_in_browser(&run_dir.join("report.html"));
}

/// Open the report in headless Chromium: it renders, every image decodes, no script errors.
fn check_report_in_browser(report: &Path) {
    let Ok(chromium) = which("chromium") else {
        assert!(
            std::env::var_os("DISTILL_REQUIRE_BROWSER").is_none(),
            "chromium is required (scripts/test installs it)"
        );
        eprintln!("skipping the browser check: chromium is not installed");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", report.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    let body = dom.split("<body").nth(1).and_then(|b| b.split('>').next()).unwrap_or("");
    let images =
        body.split("data-images=\"").nth(1).and_then(|x| x.split('"').next()).unwrap_or("?");
    let (ok, total) = images.split_once('/').unwrap_or(("0", "?"));
    assert!(total != "0" && ok == total, "images loaded: {images} (body attributes: {body})");
    assert!(body.contains("data-errors=\"0\""), "script errors: {body}");
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        !log.lines()
            .any(|l| l.contains("CONSOLE") && (l.contains("Error") || l.contains("Uncaught"))),
        "console errors:\n{log}"
    );
}

fn which(cmd: &str) -> Result<String, ()> {
    let o =
        Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().map_err(|_| ())?;
    let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if o.status.success() && !p.is_empty() { Ok(p) } else { Err(()) }
}

#[test]
fn bad_recipes_fail_before_any_long_work() {
    let d = tempfile::tempdir().unwrap();
    let base =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/tiny.toml"))
            .unwrap();
    let check = |name: &str, recipe: String, want: &str| {
        let p = d.path().join(format!("{name}.toml"));
        std::fs::write(&p, recipe).unwrap();
        let t0 = Instant::now();
        let o = run_in_repo(&[
            "run".into(),
            p.display().to_string(),
            "--set".into(),
            format!("recipe.run_dir=\"{}\"", d.path().join(name).display()),
        ]);
        assert!(!o.status.success(), "{name}: should fail");
        assert!(text(&o).contains(want), "{name}: expected '{want}' in:\n{}", text(&o));
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{name}: failed only after {:?}",
            t0.elapsed()
        );
        assert!(!d.path().join(name).join("stages").exists(), "{name}: no stage may have started");
    };
    check(
        "missing-model",
        base.replace("teacher = \"smollm2\"", "teacher = \"/no/such/model\""),
        "/no/such/model",
    );
    let empty = d.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    check(
        "empty-prompts",
        base.replace("recipes/data/quickstart-prompts.jsonl", &empty.display().to_string()),
        "no prompts",
    );
    let port = free_port();
    let openai = base.replace(
        "kind = \"local\"\nlocal = { model_dir = \"{teacher}\", batch = 16 }",
        &format!("kind = \"openai\"\n[[generate.backend.endpoints]]\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmodel = \"x\""),
    );
    check("unreachable-endpoint", openai, "unreachable");
}

/// A run directory that distill did not make, and that holds files, is refused before anything
/// is written or deleted (a run there deleted `models/student/*` and overwrote `recipe.toml`);
/// `/` and the home directory are refused by `check-recipe` too.
#[test]
fn a_run_dir_that_is_not_distills_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mine = d.path().join("mine");
    std::fs::create_dir_all(mine.join("models/student")).unwrap();
    std::fs::write(mine.join("models/student/weights.bin"), "the user's weights").unwrap();
    std::fs::write(mine.join("recipe.toml"), "the user's recipe").unwrap();
    let o = run_in_repo(&[
        "run".into(),
        "recipes/tiny.toml".into(),
        "--set".into(),
        format!("recipe.run_dir=\"{}\"", mine.display()),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not a distill run directory"), "{}", text(&o));
    let read = |p: &str| std::fs::read_to_string(mine.join(p)).unwrap();
    assert_eq!(read("models/student/weights.bin"), "the user's weights");
    assert_eq!(read("recipe.toml"), "the user's recipe");
    assert!(!mine.join("stages").exists() && !mine.join(".distill-run.json").exists());

    let base =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/tiny.toml"))
            .unwrap();
    let home = std::env::var("HOME").unwrap();
    for (rd, want) in [("/", "root"), (home.as_str(), "home directory")] {
        let r = d.path().join("r.toml");
        std::fs::write(
            &r,
            base.replacen("run_dir = \"runs/tiny\"", &format!("run_dir = \"{rd}\""), 1),
        )
        .unwrap();
        let o = distill(&["check-recipe", r.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{rd}: {}", text(&o));
        assert!(text(&o).contains(want), "{rd}: {}", text(&o));
    }
}

/// `eval --bench NAME=FILE` writes `OUT/NAME.jsonl`: a NAME with `/` or `..` is refused, so it
/// cannot replace a file outside `--out` (it replaced the user's file before).
#[test]
fn an_eval_benchmark_name_never_writes_outside_out() {
    let d = tempfile::tempdir().unwrap();
    let bench = d.path().join("b.jsonl");
    std::fs::write(&bench, "{\"problem\": \"1+1\", \"answer\": \"2\"}\n").unwrap();
    let victim = d.path().join("victim.jsonl");
    std::fs::write(&victim, "the user's own file").unwrap();
    let out = d.path().join("out");
    for name in ["../victim", "sub/x", "/tmp/x"] {
        let o = distill(&[
            "eval",
            "--endpoint",
            "http://127.0.0.1:9/v1",
            "--bench",
            &format!("{name}={}", bench.display()),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("benchmark name"), "{}", text(&o));
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "the user's own file");
    assert!(!out.exists());
}

#[test]
fn eval_runs_on_aime_and_math500_locally_and_through_llama_server() {
    let _turn = SERVER_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(sh) = shared() else { return distill_data::testing::fixture_missing("no ../shared") };
    let (gguf, hf) = smollm2();
    let d = tempfile::tempdir().unwrap();
    let benches = [
        format!("aime24={}", sh.join("data/eval/aime24.jsonl").display()),
        format!("math500={}", sh.join("data/eval/math500.jsonl").display()),
    ];
    let mut common_args: Vec<String> = vec![
        "eval".into(),
        "--limit".into(),
        "8".into(),
        "--k".into(),
        "1".into(),
        "--max-tokens".into(),
        "24".into(),
    ];
    for b in &benches {
        common_args.extend(["--bench".into(), b.clone()]);
    }
    let check = |out: &Path| {
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        let b = s["benchmarks"].as_array().unwrap();
        assert_eq!((b[0]["name"].as_str(), b[0]["problems"].as_u64()), (Some("aime24"), Some(8)));
        assert_eq!((b[1]["name"].as_str(), b[1]["problems"].as_u64()), (Some("math500"), Some(8)));
        for x in b {
            let p = x["pass_at_1"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p));
        }
        let lines = std::fs::read_to_string(out.join("math500.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 8);
        for l in lines.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["samples"].as_array().unwrap().len(), 1);
            assert!(v["reference"].is_string() && v["pass_at_1"].is_number());
        }
    };
    let local = d.path().join("local");
    let mut args = common_args.clone();
    args.extend([
        "--model".into(),
        hf.display().to_string(),
        "--out".into(),
        local.display().to_string(),
    ]);
    let o = run_in_repo(&args);
    assert!(o.status.success(), "{}", text(&o));
    check(&local);
    let Some(srv) = LlamaServer::start(&gguf, 4) else {
        return distill_data::testing::fixture_missing(
            "llama-server for the second half: DISTILL_LLAMA_SERVER_DIR unset",
        );
    };
    let remote = d.path().join("server");
    let mut args = common_args;
    args.extend(["--endpoint".into(), srv.url(), "--out".into(), remote.display().to_string()]);
    let o = run_in_repo(&args);
    assert!(o.status.success(), "{}", text(&o));
    check(&remote);
}
