//! `distill fetch` and `hf:` recipes against a local server in the Hugging Face Hub's URL layout:
//! `/api/models/ID/revision/REV`, `/ID/resolve/REV/FILE` (small files with a git-sha1 ETag; LFS
//! files by a 302 to a CDN path with `X-Linked-Etag` = sha256), range requests, a gated
//! repository that answers 401 without a token, and one download cut off halfway.
//!
//! The server is also hostile, one way at a time (issue: hardening, part 2): file names, ETags
//! and commit headers that would be paths outside the cache, a redirect to another host (which
//! must not get the token), a redirect loop, an endless body and odd statuses.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use common::{text, tiny_student};
use sha1::Digest as _;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_test_token_1234";

struct File {
    data: Vec<u8>,
    lfs: bool,
}

#[derive(Default)]
struct State {
    /// repo id ("models/org/name" or "datasets/org/name") → files
    repos: HashMap<String, Vec<(String, File)>>,
    gated: Vec<String>,
    /// Requests seen: (path, Range header).
    log: Vec<(String, Option<String>)>,
    /// CDN paths still to be cut off halfway on their next full-body answer.
    cut_next: Vec<String>,
    /// Serve this CDN path's bytes corrupted.
    corrupt: Vec<String>,
    /// One way of being hostile, or none.
    hostile: Option<Hostile>,
    /// `IP:PORT` of the second listener (127.0.0.2): another host, for LFS redirects.
    other_host: String,
    /// Every request: (the address it came to, its path, whether it carried Authorization).
    seen: Vec<(String, String, bool)>,
}

#[derive(Clone, Debug)]
enum Hostile {
    /// This ETag on every small (non-LFS) file.
    Etag(String),
    /// These names added to every listing.
    Names(Vec<String>),
    /// This listing commit.
    ListingSha(String),
    /// This X-Repo-Commit on every resolve.
    Commit(String),
    /// LFS redirects go to the second listener, another host.
    OtherHost,
    /// Every resolve redirects to itself, with a relative Location.
    Loop,
    /// LFS bodies never end (chunked, until the client hangs up).
    Endless,
    /// Every resolve answers this status line, with no Location.
    Status(String),
    /// Not hostile: a repository renamed from the first to the second id; the old id's listing
    /// and files redirect (307, a relative Location) to the new one's, as the Hub does.
    Renamed(String, String),
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256(b: &[u8]) -> String {
    hex(&sha2::Sha256::digest(b))
}

fn git_sha1(b: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    hex(&h.finalize())
}

struct Hub {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Hub {
    fn start(mut state: State) -> Hub {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut listeners = vec![l];
        if matches!(state.hostile, Some(Hostile::OtherHost)) {
            // The same files under another host: 127.0.0.2 is loopback too on Linux.
            let l2 = TcpListener::bind("127.0.0.2:0").unwrap();
            state.other_host = l2.local_addr().unwrap().to_string();
            listeners.push(l2);
        }
        let state = Arc::new(Mutex::new(state));
        for l in listeners {
            let st = state.clone();
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    let st = st.clone();
                    std::thread::spawn(move || serve(s, port, &st));
                }
            });
        }
        Hub { port, state }
    }

    fn seen(&self) -> Vec<(String, String, bool)> {
        self.state.lock().unwrap().seen.clone()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().unwrap().log.clone()
    }
}

fn serve(s: TcpStream, port: u16, st: &Mutex<State>) {
    let at = s.local_addr().unwrap().ip().to_string();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let head = line.starts_with("HEAD ");
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let range = headers.get("range").cloned();
        {
            let mut s = st.lock().unwrap();
            s.log.push((path.clone(), range.clone()));
            s.seen.push((at.clone(), path.clone(), headers.contains_key("authorization")));
        }
        let authed = headers.get("authorization").is_some_and(|a| a == &format!("Bearer {TOKEN}"));
        if !answer(&mut w, &path, range.as_deref(), authed, head, port, st) {
            return;
        }
    }
}

/// One answer; false when the connection was cut.
fn answer(
    w: &mut TcpStream,
    path: &str,
    range: Option<&str>,
    authed: bool,
    head: bool,
    port: u16,
    st: &Mutex<State>,
) -> bool {
    // A HEAD answer has the GET answer's headers and no body.
    let reply = |w: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]| {
        let mut h = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        w.write_all(h.as_bytes()).unwrap();
        if !head {
            w.write_all(body).unwrap();
        }
        true
    };
    let renamed = match &st.lock().unwrap().hostile {
        Some(Hostile::Renamed(from, to)) => Some((format!("/{from}/"), format!("/{to}/"))),
        _ => None,
    };
    if let Some((from, to)) = renamed
        && path.contains(&from)
    {
        return reply(
            w,
            "307 Temporary Redirect",
            &[("Location", path.replacen(&from, &to, 1))],
            b"",
        );
    }
    // /api/{models|datasets}/ORG/NAME/revision/REV
    if let Some(rest) = path.strip_prefix("/api/") {
        let (kind, rest) = rest.split_once('/').unwrap();
        let id = rest.split("/revision/").next().unwrap();
        let key = format!("{kind}/{id}");
        let s = st.lock().unwrap();
        let Some(files) = s.repos.get(&key) else {
            return reply(w, "404 Not Found", &[], b"{\"error\":\"Repository not found\"}");
        };
        let mut siblings: Vec<_> =
            files.iter().map(|(n, _)| serde_json::json!({ "rfilename": n })).collect();
        if let Some(Hostile::Names(names)) = &s.hostile {
            siblings.extend(names.iter().map(|n| serde_json::json!({ "rfilename": n })));
        }
        let sha = match &s.hostile {
            Some(Hostile::ListingSha(x)) => x.clone(),
            _ => COMMIT.to_string(),
        };
        let body = serde_json::json!({"id": id, "sha": sha, "siblings": siblings});
        return reply(w, "200 OK", &[], body.to_string().as_bytes());
    }
    // /cdn/SHA256: LFS content, range requests honoured.
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let mut s = st.lock().unwrap();
        let mut data = None;
        for files in s.repos.values() {
            for (_, f) in files {
                if f.lfs && sha256(&f.data) == sha {
                    data = Some(f.data.clone());
                }
            }
        }
        let Some(mut data) = data else { return reply(w, "404 Not Found", &[], b"") };
        if matches!(s.hostile, Some(Hostile::Endless)) {
            drop(s);
            // Chunks until the client hangs up (bounded, so the test cannot hang on it).
            w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
            let chunk = vec![b'x'; 1 << 16];
            for _ in 0..4096 {
                let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
                c.extend_from_slice(&chunk);
                c.extend_from_slice(b"\r\n");
                if w.write_all(&c).is_err() {
                    break;
                }
            }
            return false;
        }
        if s.corrupt.iter().any(|c| c == sha) {
            data[10] ^= 0xff;
        }
        let start: usize = range
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let end = match range.and_then(|r| r.split('-').nth(1)).filter(|e| !e.is_empty()) {
            Some(e) => e.parse::<usize>().unwrap() + 1,
            None => data.len(),
        };
        let body = &data[start..end.min(data.len())];
        let cr = format!("bytes {start}-{}/{}", end.min(data.len()) - 1, data.len());
        let cut = body.len() > 1 && s.cut_next.iter().any(|c| c == sha);
        if cut {
            s.cut_next.retain(|c| c != sha);
            drop(s);
            // The promised length, then half the bytes, then a closed connection.
            let h = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: {cr}\r\n\r\n",
                body.len()
            );
            w.write_all(h.as_bytes()).unwrap();
            w.write_all(&body[..body.len() / 2]).unwrap();
            w.flush().unwrap();
            let _ = w.shutdown(std::net::Shutdown::Both);
            return false;
        }
        return reply(w, "206 Partial Content", &[("Content-Range", cr)], body);
    }
    // /[datasets/]ORG/NAME/resolve/REV/FILE
    let (key, file) = match path.split_once("/resolve/") {
        Some((repo, rest)) => {
            let repo = repo.trim_start_matches('/');
            let key = if repo.starts_with("datasets/") {
                repo.to_string()
            } else {
                format!("models/{repo}")
            };
            (key, rest.split_once('/').map(|x| x.1).unwrap_or("").to_string())
        }
        None => return reply(w, "404 Not Found", &[], b""),
    };
    let s = st.lock().unwrap();
    match s.hostile.clone() {
        Some(Hostile::Loop) => {
            let loc = path.to_string();
            drop(s);
            return reply(w, "302 Found", &[("Location", loc)], b"");
        }
        Some(Hostile::Status(line)) => {
            let h = format!("HTTP/1.1 {line}\r\nContent-Length: 0\r\n\r\n");
            w.write_all(h.as_bytes()).unwrap();
            return true;
        }
        _ => {}
    }
    let commit = match &s.hostile {
        Some(Hostile::Commit(c)) => c.clone(),
        _ => COMMIT.to_string(),
    };
    if s.gated.contains(&key) && !authed {
        let msg = format!(
            "Access to model {key} is restricted. You must have access to it and be authenticated to access it. Please log in."
        );
        return reply(
            w,
            "401 Unauthorized",
            &[("X-Error-Code", "GatedRepo".into())],
            msg.as_bytes(),
        );
    }
    let Some(f) = s.repos.get(&key).and_then(|fs| fs.iter().find(|(n, _)| *n == file)) else {
        return reply(w, "404 Not Found", &[("X-Error-Code", "EntryNotFound".into())], b"");
    };
    let f = &f.1;
    if f.lfs {
        let sha = sha256(&f.data);
        let host = match &s.hostile {
            Some(Hostile::OtherHost) => s.other_host.clone(),
            _ => format!("127.0.0.1:{port}"),
        };
        let loc = format!("http://{host}/cdn/{sha}");
        return reply(
            w,
            "302 Found",
            &[
                ("Location", loc),
                ("X-Repo-Commit", commit),
                ("X-Linked-Etag", format!("\"{sha}\"")),
                ("X-Linked-Size", f.data.len().to_string()),
            ],
            b"",
        );
    }
    let etag = match &s.hostile {
        Some(Hostile::Etag(e)) => e.clone(),
        _ => format!("\"{}\"", git_sha1(&f.data)),
    };
    let data = f.data.clone();
    drop(s);
    match range.and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b = if b.is_empty() { data.len() - 1 } else { b.parse::<usize>().unwrap() };
            let b = b.min(data.len() - 1);
            let cr = format!("bytes {a}-{b}/{}", data.len());
            reply(
                w,
                "206 Partial Content",
                &[("ETag", etag), ("X-Repo-Commit", commit), ("Content-Range", cr)],
                &data[a..=b],
            )
        }
        None => reply(w, "200 OK", &[("ETag", etag), ("X-Repo-Commit", commit)], &data),
    }
}

/// The tiny model's files as a repository (safetensors as LFS), plus files fetch must skip.
fn model_repo(dir: &Path) -> Vec<(String, File)> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let lfs = name.ends_with(".safetensors");
        files.push((name, File { data: std::fs::read(&p).unwrap(), lfs }));
    }
    files.push(("pytorch_model.bin".into(), File { data: b"not fetched".to_vec(), lfs: true }));
    files.push(("original/params.json".into(), File { data: b"{}".to_vec(), lfs: false }));
    // An empty file (a HEAD asks for its size; a range request could not).
    files.push(("empty.txt".into(), File { data: Vec::new(), lfs: false }));
    files
}

fn fetch(hub: &Hub, home: &Path, args: &[&str], token: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distill"));
    c.arg("fetch").args(args);
    c.env("HF_ENDPOINT", hub.url()).env("HF_HOME", home).env_remove("HF_HUB_CACHE");
    c.env("DISTILL_PROGRESS_EVERY_S", "0");
    match token {
        Some(t) => c.env("HF_TOKEN", t),
        None => c.env_remove("HF_TOKEN"),
    };
    c.output().unwrap()
}

/// `distill plan` on a training recipe whose model is `hf:SPEC` (the loader resolves it).
fn plan_hf(hub: &Hub, dir: &Path, spec: &str, home: &Path) -> Output {
    let model = format!("hf:{spec}");
    let recipe =
        common::train_recipe(dir, Path::new(&model), &dir.join("no-corpus"), &dir.join("out"), "");
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["plan", "--recipe"])
        .arg(&recipe)
        .env("HF_ENDPOINT", hub.url())
        .env("HF_HOME", home)
        .output()
        .unwrap()
}

fn snapshot(o: &Output) -> PathBuf {
    assert!(o.status.success(), "{}", text(o));
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

#[test]
fn fetch_verifies_resumes_and_lands_in_the_hub_cache_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_student(tmp.path());
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    let wsha = sha256(&weights);
    let mut repos = HashMap::new();
    repos.insert("models/test-org/tiny".to_string(), model_repo(&model));
    let hub = Hub::start(State { repos, cut_next: vec![wsha.clone()], ..Default::default() });
    let home = tmp.path().join("hf-home");

    let out = fetch(&hub, &home, &["test-org/tiny"], None);
    let snap = snapshot(&out);
    // The standard layout transformers reads: hub/models--ORG--NAME/snapshots/COMMIT, refs/main.
    let repo_dir = home.join("hub/models--test-org--tiny");
    assert_eq!(snap, repo_dir.join("snapshots").join(COMMIT));
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), COMMIT);
    assert!(repo_dir.join("blobs").join(&wsha).exists(), "LFS blob named by its sha256");
    for e in std::fs::read_dir(&model).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        assert_eq!(std::fs::read(snap.join(name)).unwrap(), std::fs::read(&p).unwrap(), "{name:?}");
    }
    assert_eq!(std::fs::read(snap.join("empty.txt")).unwrap(), b"");
    assert!(!snap.join("pytorch_model.bin").exists(), "a .bin beside safetensors is skipped");
    // Snapshot files are relative links into blobs/, as huggingface_hub makes them.
    let link = std::fs::read_link(snap.join("model.safetensors")).unwrap();
    assert_eq!(link, PathBuf::from(format!("../../blobs/{wsha}")));
    assert!(!snap.join("original").exists(), "subfolders only with --include");
    // The cut download was resumed with a range request from where it stopped, not restarted.
    let cdn: Vec<_> = hub.log().into_iter().filter(|(p, _)| p.starts_with("/cdn/")).collect();
    let resumed = cdn.iter().any(|(_, r)| {
        r.as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|a| a.parse::<usize>().ok())
            .is_some_and(|a| a > 0 && a < weights.len())
    });
    assert!(resumed, "no resuming range request in {cdn:?}");
    assert!(!repo_dir.join("refs").join(COMMIT).exists(), "no stray ref for the pinned commit");

    // A second fetch is served from the cache: no downloads.
    let before = hub.log().iter().filter(|(p, _)| p.contains("/resolve/")).count();
    let again = snapshot(&fetch(&hub, &home, &["test-org/tiny"], None));
    assert_eq!(again, snap);
    let after = hub.log().iter().filter(|(p, _)| p.contains("/resolve/")).count();
    assert_eq!(before, after, "cached files were downloaded again");

    // A recipe names the model as hf:ORG/NAME and the loader reads the cached snapshot.
    let plan = plan_hf(&hub, tmp.path(), "test-org/tiny", &home);
    assert!(plan.status.success(), "{}", text(&plan));
    assert!(text(&plan).contains("parameters"), "{}", text(&plan));
}

#[test]
fn a_corrupted_download_is_refused_and_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_student(tmp.path());
    let wsha = sha256(&std::fs::read(model.join("model.safetensors")).unwrap());
    let mut repos = HashMap::new();
    repos.insert("models/test-org/tiny".to_string(), model_repo(&model));
    let hub = Hub::start(State { repos, corrupt: vec![wsha.clone()], ..Default::default() });
    let home = tmp.path().join("hf-home");
    let out = fetch(&hub, &home, &["test-org/tiny"], None);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("checksum mismatch") && t.contains("model.safetensors"), "{t}");
    assert!(!home.join("hub/models--test-org--tiny/blobs").join(&wsha).exists());
}

#[test]
fn a_gated_repository_needs_hf_token() {
    let tmp = tempfile::tempdir().unwrap();
    let mut repos = HashMap::new();
    let cfg = br#"{"model_type": "llama"}"#.to_vec();
    repos.insert(
        "models/meta-llama/Gated-1B".to_string(),
        vec![("config.json".into(), File { data: cfg.clone(), lfs: false })],
    );
    let hub = Hub::start(State {
        repos,
        gated: vec!["models/meta-llama/Gated-1B".into()],
        ..Default::default()
    });
    let home = tmp.path().join("hf-home");
    let out = fetch(&hub, &home, &["meta-llama/Gated-1B"], None);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("401") && t.contains("HF_TOKEN") && t.contains("gated"), "{t}");

    let wrong = fetch(&hub, &home, &["meta-llama/Gated-1B"], Some("hf_wrong"));
    assert!(!wrong.status.success());
    assert!(text(&wrong).contains("HF_TOKEN is set but has no access"), "{}", text(&wrong));
    assert!(!text(&wrong).contains("hf_wrong"), "the token is never printed");

    let snap = snapshot(&fetch(&hub, &home, &["meta-llama/Gated-1B"], Some(TOKEN)));
    assert_eq!(std::fs::read(snap.join("config.json")).unwrap(), cfg);

    let missing = fetch(&hub, &home, &["nobody/nothing"], None);
    assert!(text(&missing).contains("404"), "{}", text(&missing));
}

#[test]
fn datasets_and_single_files() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = b"{\"problem\": \"1+1\", \"answer\": \"2\"}\n".to_vec();
    let mut repos = HashMap::new();
    repos.insert(
        "datasets/open-r1/tiny-math".to_string(),
        vec![
            ("data/train.jsonl".into(), File { data: rows.clone(), lfs: true }),
            ("README.md".into(), File { data: b"# tiny".to_vec(), lfs: false }),
        ],
    );
    let hub = Hub::start(State { repos, ..Default::default() });
    let home = tmp.path().join("hf-home");
    let snap = snapshot(&fetch(
        &hub,
        &home,
        &["open-r1/tiny-math", "--dataset", "--include", "data/*"],
        None,
    ));
    assert_eq!(snap, home.join("hub/datasets--open-r1--tiny-math/snapshots").join(COMMIT));
    assert_eq!(std::fs::read(snap.join("data/train.jsonl")).unwrap(), rows);
    assert!(!snap.join("README.md").exists());

    // A recipe reads prompts straight from hf://datasets/ORG/NAME/PATH (fetched into a fresh
    // cache here, so the address is resolved through the server).
    let port = common::chat_stub(false);
    let dir = tmp.path().join("gen");
    std::fs::create_dir_all(&dir).unwrap();
    let r = common::openai_recipe(
        &dir,
        Path::new("hf://datasets/open-r1/tiny-math/data/train.jsonl"),
        &format!("http://127.0.0.1:{port}/v1"),
        "",
    );
    let t = std::fs::read_to_string(&r).unwrap();
    let t: Vec<String> = t
        .lines()
        .map(|l| {
            if l.starts_with("fields = ") {
                r#"fields = { prompt = "problem", answer = "answer" }"#.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&r, t.join("\n")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["generate", "--recipe", r.to_str().unwrap()])
        .env("HF_ENDPOINT", hub.url())
        .env("HF_HOME", tmp.path().join("hf-home-2"))
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let c = distill_data::Corpus::open(&dir.join("corpus")).unwrap();
    let traces: Vec<_> = c.iter().map(|t| t.unwrap()).collect();
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0].messages[0].content, "1+1");
    assert_eq!(traces[0].reference.as_deref(), Some("2"));
}

/// Everything under `dir`, as relative paths (symlinks not followed).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `..` parts resolved without the file system.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// A fetch against a hostile server: it fails cleanly with exit 1 (an error, never a panic's 101
/// or a signal) or, when `ok`, succeeds; either way the output says `why`, the user's file beside
/// the cache is untouched, nothing new is outside the cache, and no link points out of it.
fn guarded(hub: &Hub, tmp: &Path, args: &[&str], ok: bool, why: &[&str]) -> String {
    let victim = tmp.join("victim.txt");
    std::fs::write(&victim, "the user's own file").unwrap();
    let home = tmp.join("hf-home");
    let outside = |t: &[PathBuf]| -> Vec<PathBuf> {
        t.iter().filter(|p| !p.starts_with("hf-home")).cloned().collect()
    };
    let before = outside(&tree(tmp));
    let o = fetch(hub, &home, args, Some(TOKEN));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(if ok { 0 } else { 1 }), "{t}");
    for w in why {
        assert!(t.contains(w), "{w:?} not in: {t}");
    }
    assert!(!t.contains(TOKEN), "the token is never printed: {t}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "the user's own file");
    assert_eq!(outside(&tree(tmp)), before, "{args:?} made files outside the cache");
    for p in tree(&home) {
        let p = home.join(p);
        if let Ok(to) = std::fs::read_link(&p) {
            let lands = lexical(&p.parent().unwrap().join(&to));
            assert!(!to.is_absolute() && lands.starts_with(&home), "{p:?} -> {to:?}");
        }
    }
    t
}

fn refused(hub: &Hub, tmp: &Path, args: &[&str], why: &[&str]) -> String {
    guarded(hub, tmp, args, false, why)
}

fn tiny_hub(tmp: &Path, hostile: Hostile) -> Hub {
    let model = tiny_student(tmp);
    let mut repos = HashMap::new();
    repos.insert("models/test-org/tiny".to_string(), model_repo(&model));
    Hub::start(State { repos, hostile: Some(hostile), ..Default::default() })
}

#[test]
fn names_hashes_and_commits_from_the_server_never_become_paths_outside_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "the user's own file").unwrap();
    let v = victim.display().to_string();
    let cases: Vec<(Hostile, &[&str])> = vec![
        // An ETag is a blob's file name: an absolute one overwrote the user's file (hf-hub).
        (Hostile::Etag(format!("\"{v}\"")), &["ETag", "not a sha1 or sha256"]),
        (Hostile::Etag("\"../../../../victim.txt\"".into()), &["ETag"]),
        // Commits become snapshot folders.
        (Hostile::ListingSha("../../../victim".into()), &["not a 40-digit hash"]),
        (Hostile::Commit("../../../victim".into()), &["answered for commit"]),
    ];
    for (i, (hostile, why)) in cases.into_iter().enumerate() {
        let d = tmp.path().join(format!("case-{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let hub = tiny_hub(&d, hostile.clone());
        eprintln!("{hostile:?}");
        refused(&hub, &d, &["test-org/tiny"], why);
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "the user's own file");
}

#[test]
fn unsafe_listed_names_are_skipped_and_never_become_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "the user's own file").unwrap();
    let v = victim.display().to_string();
    // hf-hub made a link at an absolute name, and at `../x` (then panicked), and panicked on
    // `sub/../x`. Here every such name is skipped with a warning; the rest of the repository is
    // fetched (`--include '*'` selects every name, the hostile ones too).
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (vec![v.clone()], &["absolute"]),
        (vec!["../victim.txt".into()], &["'..'"]),
        (vec!["sub/../../x".into(), "sub/../x".into()], &["2 unsafe"]),
        (vec!["a\u{0}b".into(), "./x".into(), "a//b".into()], &["3 unsafe", "control character"]),
    ];
    for (i, (names, why)) in cases.into_iter().enumerate() {
        let d = tmp.path().join(format!("case-{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let hub = tiny_hub(&d, Hostile::Names(names.clone()));
        let t = guarded(&hub, &d, &["test-org/tiny", "--include", "*"], true, why);
        assert!(t.contains("skipped"), "{t}");
        let snap = d.join("hf-home/hub/models--test-org--tiny/snapshots").join(COMMIT);
        assert!(
            snap.join("config.json").exists() && snap.join("original/params.json").exists(),
            "{t}"
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "the user's own file");
}

#[test]
fn a_renamed_gated_repository_keeps_the_token_on_its_own_origin() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_student(tmp.path());
    let mut repos = HashMap::new();
    repos.insert("models/test-org/tiny".to_string(), model_repo(&model));
    let hub = Hub::start(State {
        repos,
        gated: vec!["models/test-org/tiny".into()],
        hostile: Some(Hostile::Renamed("test-org/old".into(), "test-org/tiny".into())),
        ..Default::default()
    });
    let home = tmp.path().join("hf-home");
    let snap = snapshot(&fetch(&hub, &home, &["test-org/old"], Some(TOKEN)));
    assert_eq!(
        std::fs::read(snap.join("model.safetensors")).unwrap(),
        std::fs::read(model.join("model.safetensors")).unwrap()
    );
    let seen = hub.seen();
    assert!(
        seen.iter().any(|(_, p, auth)| p.starts_with("/test-org/tiny/resolve/") && *auth),
        "{seen:?}"
    );
}

#[test]
fn a_revision_is_a_git_ref_name_never_a_path() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tiny_hub(tmp.path(), Hostile::Names(vec![]));
    let target = tmp.path().join("x");
    let rev = format!("test-org/tiny@../../../../../../../..{}", target.display());
    let t = refused(&hub, tmp.path(), &[&rev], &["not a commit or a git ref name"]);
    assert!(hub.log().is_empty(), "refused before asking the server: {:?} {t}", hub.log());
    // Through a recipe's model (`distill plan` resolves it) too.
    let plan = plan_hf(&hub, tmp.path(), &rev, &tmp.path().join("hf-home"));
    assert_eq!(plan.status.code(), Some(1), "{}", text(&plan));
    assert!(text(&plan).contains("git ref name"), "{}", text(&plan));
    assert!(!target.exists());
    assert!(hub.log().is_empty());
    // A real ref with slashes is fine, and is escaped as one path segment.
    let o = fetch(&hub, &tmp.path().join("hf-home"), &["test-org/tiny@refs/pr/1"], None);
    snapshot(&o);
    assert!(
        hub.log().iter().any(|(p, _)| p.contains("/revision/refs%2Fpr%2F1")),
        "{:?}",
        hub.log()
    );
}

#[test]
fn the_token_never_goes_to_another_host() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tiny_hub(tmp.path(), Hostile::OtherHost);
    let o = fetch(&hub, &tmp.path().join("hf-home"), &["test-org/tiny"], Some(TOKEN));
    snapshot(&o);
    let seen = hub.seen();
    let other: Vec<_> = seen.iter().filter(|(at, _, _)| at == "127.0.0.2").collect();
    assert!(!other.is_empty(), "the LFS bytes came from the other host: {seen:?}");
    assert!(other.iter().all(|(_, _, auth)| !auth), "the token went to 127.0.0.2: {seen:?}");
    assert!(seen.iter().any(|(at, _, auth)| at == "127.0.0.1" && *auth), "{seen:?}");
}

#[test]
fn loops_endless_bodies_and_odd_statuses_end_in_clean_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("loop");
    std::fs::create_dir_all(&d).unwrap();
    let hub = tiny_hub(&d, Hostile::Loop);
    refused(&hub, &d, &["test-org/tiny"], &["more than 10 redirects"]);
    assert!(hub.log().len() <= 2 + 11, "{} requests", hub.log().len());

    let d = tmp.path().join("endless");
    std::fs::create_dir_all(&d).unwrap();
    let hub = tiny_hub(&d, Hostile::Endless);
    refused(&hub, &d, &["test-org/tiny"], &["more than the", "bytes it announced"]);
    let size = std::fs::metadata(d.join("tiny-student/model.safetensors")).unwrap().len();
    let blobs = d.join("hf-home/hub/models--test-org--tiny/blobs");
    for e in std::fs::read_dir(&blobs).unwrap() {
        let len = e.unwrap().metadata().unwrap().len();
        assert!(len <= size, "a blob of {len} bytes, {size} announced");
    }

    for status in ["300 Multiple Choices", "302 Found", "099 Odd", "999 Odd", "204 No Content"] {
        let d = tmp.path().join(format!("status-{}", &status[..3]));
        std::fs::create_dir_all(&d).unwrap();
        let hub = tiny_hub(&d, Hostile::Status(status.into()));
        let t = refused(&hub, &d, &["test-org/tiny"], &[]);
        eprintln!("{status}: {}", t.lines().last().unwrap_or(""));
    }
}
