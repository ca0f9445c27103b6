//! The `hub` target: `distill fetch` (the release's own binary, beside this one) against an
//! in-process fake Hugging Face Hub whose answers are the input. What a hostile or broken server
//! sends may fail the fetch, but only with a clean error (exit 1 and a message); never a panic or
//! a signal, a file outside the cache (`HF_HOME`), a link out of it, the token on another host,
//! or the token in the output.
//!
//! An input is four raw HTTP/1.1 answers separated by [`SEP`], for the requests of a fetch of
//! `test-org/tiny` (a small file and an LFS file):
//! 0. `/api/models/test-org/tiny/revision/main` (the listing);
//! 1. `/…/resolve/…/config.json` (the small file: HEAD, then GET);
//! 2. any other `/resolve/` (the LFS file: a redirect to its bytes);
//! 3. anything else (the LFS bytes, at the redirect's target).
//!
//! In an answer, `{SELF}` becomes the fake Hub's `host:port`, `{OTHER}` that of a second
//! listener on 127.0.0.2 (another host, which must never see the token) and `{ROOT}` the scratch
//! directory (where a file of the user's lies). Each connection gets one answer and is closed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SEP: &[u8] = b"\n~~~~\n";
pub const TOKEN: &str = "hf_fuzz_token_5678";
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const VICTIM: &str = "the user's own file";
/// A fetch that runs longer is a hang (the fake Hub answers at once and closes).
const LIMIT: Duration = Duration::from_secs(15);

/// (the address a request came to, its path, whether it carried `Authorization`)
type Log = Arc<Mutex<Vec<(String, String, bool)>>>;

pub fn run(data: &[u8], dir: &Path) -> Result<(), String> {
    let distill = std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("distill");
    if !distill.exists() {
        return Err(format!("no distill binary beside distill-fuzz ({})", distill.display()));
    }
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, VICTIM).map_err(|e| e.to_string())?;
    let (home, cwd) = (dir.join("hf-home"), dir.join("cwd"));
    std::fs::create_dir_all(&cwd).map_err(|e| e.to_string())?;

    let main = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let other = TcpListener::bind("127.0.0.2:0").map_err(|e| e.to_string())?;
    let (main_at, other_at) = (addr(&main), addr(&other));
    let root = dir.display().to_string();
    let answers: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..4)
            .map(|i| {
                let a = split(data)
                    .get(i)
                    .copied()
                    .unwrap_or(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                let a = replace(a, b"{SELF}", main_at.as_bytes());
                let a = replace(&a, b"{OTHER}", other_at.as_bytes());
                replace(&a, b"{ROOT}", root.as_bytes())
            })
            .collect(),
    );
    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = [main, other]
        .into_iter()
        .map(|l| {
            let (answers, log, stop) = (answers.clone(), log.clone(), stop.clone());
            std::thread::spawn(move || serve(l, &answers, &log, &stop))
        })
        .collect();

    let out = std::fs::File::create(dir.join("out.txt")).map_err(|e| e.to_string())?;
    let err = std::fs::File::create(dir.join("err.txt")).map_err(|e| e.to_string())?;
    let mut child = Command::new(&distill)
        .args(["fetch", "test-org/tiny"])
        .env("HF_ENDPOINT", format!("http://{main_at}"))
        .env("HF_HOME", &home)
        .env_remove("HF_HUB_CACHE")
        .env("HF_TOKEN", TOKEN)
        .env("DISTILL_PROGRESS_EVERY_S", "0")
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", distill.display()))?;
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(s);
        }
        if t0.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    let text = format!(
        "{}{}",
        std::fs::read_to_string(dir.join("out.txt")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("err.txt")).unwrap_or_default()
    );
    let tail: String = text.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
    let Some(status) = status else {
        panic!("distill fetch ran longer than {LIMIT:?}: {tail}");
    };
    // The invariants: each a panic here, which the harness records as BROKEN.
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        panic!("distill fetch died of signal {sig}: {tail}");
    }
    match status.code() {
        Some(0 | 1) => {}
        c => panic!("distill fetch exited {c:?} (a panic is 101): {tail}"),
    }
    assert!(!text.contains(TOKEN), "the token was printed: {tail}");
    let seen = log.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|(at, _, auth)| at == "127.0.0.2" && *auth),
        "the token went to another host: {seen:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&victim).ok().as_deref(),
        Some(VICTIM),
        "victim.txt changed"
    );
    let cwd_files = std::fs::read_dir(&cwd).map(|d| d.count()).unwrap_or(0);
    assert_eq!(cwd_files, 0, "distill fetch wrote into its working directory");
    let allowed = ["victim.txt", "hf-home", "cwd", "out.txt", "err.txt"];
    for e in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        assert!(allowed.contains(&name.as_str()), "a file outside the cache: {name}");
    }
    links_stay_inside(&home, &home);
    if status.success() { Ok(()) } else { Err(tail) }
}

/// Every symbolic link under `dir` points, lexically, inside `home`.
fn links_stay_inside(dir: &Path, home: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.file_type().is_symlink() {
            let to = std::fs::read_link(&p).unwrap_or_default();
            let lands = lexical(&p.parent().unwrap().join(&to));
            assert!(!to.is_absolute() && lands.starts_with(home), "{p:?} -> {to:?}");
        } else if m.is_dir() {
            links_stay_inside(&p, home);
        }
    }
}

/// `p` with `.` and `..` resolved without the file system.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

fn addr(l: &TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

pub fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(SEP.len()).position(|w| w == SEP) {
        parts.push(&rest[..i]);
        rest = &rest[i + SEP.len()..];
    }
    parts.push(rest);
    parts
}

fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

fn serve(l: TcpListener, answers: &[Vec<u8>], log: &Log, stop: &AtomicBool) {
    if l.set_nonblocking(true).is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => answer(s, answers, log),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(_) => return,
        }
    }
}

/// Reads one request's head, logs it, writes the answer for its path and closes.
fn answer(mut s: TcpStream, answers: &[Vec<u8>], log: &Log) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let at = s.local_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 1 << 16 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => req.extend_from_slice(&buf[..k]),
        }
    }
    let head = String::from_utf8_lossy(&req);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let auth = head.lines().any(|l| l.to_ascii_lowercase().starts_with("authorization:"));
    log.lock().unwrap().push((at, path.clone(), auth));
    let i = if path.starts_with("/api/") {
        0
    } else if path.contains("/resolve/") {
        if path.ends_with("/config.json") { 1 } else { 2 }
    } else {
        3
    };
    let _ = s.write_all(&answers[i]);
    let _ = s.flush();
    let _ = s.shutdown(Shutdown::Both);
}

/// The seeds: a valid fetch (the LFS bytes on the Hub's own host, then on another host), and
/// hostile answers that must end in clean errors.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use sha1::Digest as _;
    let small = br#"{"model_type": "llama", "hidden_size": 8}"#.to_vec();
    let lfs = b"fuzz: the bytes of an LFS file, 0123456789".to_vec();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let git_sha1 = {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", small.len()).as_bytes());
        h.update(&small);
        hex(&h.finalize())
    };
    let sha256 = hex(&sha2::Sha256::digest(&lfs));
    let http = |status: &str, headers: &[(&str, String)], body: &[u8]| -> Vec<u8> {
        let mut h = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut out = h.into_bytes();
        out.extend_from_slice(body);
        out
    };
    let listing_body = |names: &[&str]| {
        let siblings: Vec<_> = names.iter().map(|n| serde_json::json!({"rfilename": n})).collect();
        serde_json::json!({"id": "test-org/tiny", "sha": COMMIT, "siblings": siblings}).to_string()
    };
    let listing = |names: &[&str]| {
        http(
            "200 OK",
            &[("Content-Type", "application/json".into())],
            listing_body(names).as_bytes(),
        )
    };
    // A listing whose body ends with the connection (no Content-Length): `{ROOT}` changes its
    // length when it is filled in.
    let open_listing = |names: &[&str]| {
        let head = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n\r\n";
        format!("{head}{}", listing_body(names)).into_bytes()
    };
    let files = ["config.json", "model.safetensors"];
    let small_answer = |etag: &str, commit: &str| {
        http("200 OK", &[("ETag", format!("\"{etag}\"")), ("X-Repo-Commit", commit.into())], &small)
    };
    let redirect = |host: &str| {
        http(
            "302 Found",
            &[
                ("Location", format!("http://{host}/cdn/{sha256}")),
                ("X-Repo-Commit", COMMIT.into()),
                ("X-Linked-Etag", format!("\"{sha256}\"")),
                ("X-Linked-Size", lfs.len().to_string()),
            ],
            b"",
        )
    };
    let bytes = http("200 OK", &[], &lfs);
    let join = |parts: [Vec<u8>; 4]| parts.join(SEP);
    // A valid fetch whose LFS bytes are on `host`.
    let valid = |host: &str| {
        join([listing(&files), small_answer(&git_sha1, COMMIT), redirect(host), bytes.clone()])
    };
    vec![
        ("00-valid.http", valid("{SELF}")),
        ("01-lfs-on-another-host.http", valid("{OTHER}")),
        (
            "02-etag-a-path.http",
            join([
                listing(&files),
                small_answer("{ROOT}/victim.txt", COMMIT),
                redirect("{SELF}"),
                bytes.clone(),
            ]),
        ),
        (
            "03-names-and-commit-paths.http",
            join([
                open_listing(&["config.json", "../x.json", "{ROOT}/victim.txt", "sub/../y.json"]),
                small_answer(&git_sha1, "../../../{ROOT}"),
                redirect("{SELF}"),
                bytes.clone(),
            ]),
        ),
        (
            "04-redirects.http",
            join([
                listing(&files),
                http(
                    "302 Found",
                    &[("Location", "/test-org/tiny/resolve/x/config.json".into())],
                    b"",
                ),
                http("300 Multiple Choices", &[], b""),
                http("200 OK", &[], &lfs[..lfs.len() / 2]),
            ]),
        ),
    ]
}
