//! Shared helpers for end-to-end tests: the distill binary, a real llama-server on loopback, and
//! a fault-injecting HTTP proxy in front of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn distill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill")).args(args).output().expect("run distill")
}

/// `distill` with extra environment variables for this process only: a test binary's own
/// environment is shared by every test in it, and `set_var` beside running threads is a data race.
pub fn distill_with_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distill"));
    c.args(args).envs(env.iter().copied());
    c.output().expect("run distill")
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub fn shared() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    d.exists().then_some(d)
}

/// SmolLM2's GGUF and its HF import (fetched and imported once, cached).
pub fn smollm2() -> (PathBuf, PathBuf) {
    let gguf = distill(&["fetch", "smollm2", "--gguf"]);
    assert!(gguf.status.success(), "{}", text(&gguf));
    let hf = distill(&["fetch", "smollm2"]);
    assert!(hf.status.success(), "{}", text(&hf));
    let p = |o: &Output| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    (p(&gguf), p(&hf))
}

/// Tests that start llama-server take turns: the machine has two cores.
pub static SERVER_LOCK: Mutex<()> = Mutex::new(());

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A llama-server on 127.0.0.1, killed on drop.
pub struct LlamaServer {
    child: Child,
    pub port: u16,
    /// Its stdout and stderr, kept for the message when it dies.
    log: tempfile::NamedTempFile,
}

impl LlamaServer {
    /// `None` when `DISTILL_LLAMA_SERVER_DIR` is unset (scripts/test builds the server and sets
    /// it); the caller skips with a message. Panics, naming the exit signal or status and the
    /// log's last lines, when the server exits before it is healthy (a binary built for another
    /// CPU dies with SIGILL while "initializing").
    pub fn start(gguf: &Path, slots: usize) -> Option<LlamaServer> {
        let dir = PathBuf::from(std::env::var_os("DISTILL_LLAMA_SERVER_DIR")?);
        Some(Self::start_in(&dir, gguf, slots))
    }

    /// The server in `dir` (the binary `dir/llama-server`).
    pub fn start_in(dir: &Path, gguf: &Path, slots: usize) -> LlamaServer {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("llama-server log file");
        // One open file for both streams (a dup shares the offset: neither overwrites the other).
        let out = log.reopen().expect("llama-server log");
        let child = Command::new(dir.join("llama-server"))
            .args(["-m"])
            .arg(gguf)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "-t",
                "2",
                "-c",
                "4096",
                "-np",
                &slots.to_string(),
            ])
            .stdout(out.try_clone().expect("llama-server log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", dir.join("llama-server").display()));
        let mut s = LlamaServer { child, port, log };
        let t0 = Instant::now();
        loop {
            if let Some(status) = s.child.try_wait().expect("llama-server status") {
                panic!(
                    "llama-server ({}) exited before it was healthy: {}\nits last log lines:\n{}",
                    dir.display(),
                    exit_description(status),
                    log_tail(s.log.path(), 15)
                );
            }
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
                let _ =
                    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut r = String::new();
                let _ = c.read_to_string(&mut r);
                if r.contains("\"ok\"") {
                    return s;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "llama-server did not become healthy in 120 s; its last log lines:\n{}",
                log_tail(s.log.path(), 15)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// "killed by signal 4 (SIGILL: an instruction this CPU lacks)" or "exit status 1".
pub fn exit_description(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(sig) => {
            let name = match sig {
                4 => "SIGILL: an instruction this CPU lacks; was it built for another CPU?",
                6 => "SIGABRT",
                7 => "SIGBUS",
                9 => "SIGKILL",
                11 => "SIGSEGV",
                _ => "",
            };
            if name.is_empty() {
                format!("killed by signal {sig}")
            } else {
                format!("killed by signal {sig} ({name})")
            }
        }
        None => format!("exit status {}", status.code().unwrap_or(-1)),
    }
}

/// The last `n` lines of a log file, or a note that it is empty.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "  (nothing)".into();
    }
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("  {l}\n")).collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    TooMany,
    ServerError,
    Reset,
    Stall,
    Truncated,
}

/// A loopback HTTP proxy that forwards chat requests to `upstream` and, for a share of them,
/// answers with a fault instead. Counts requests per prompt (the last user message).
pub struct Proxy {
    pub port: u16,
    pub counts: Arc<Mutex<HashMap<String, u32>>>,
    pub faults: Arc<Mutex<Vec<Fault>>>,
    stop: Arc<AtomicBool>,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Proxy {
    pub fn start(upstream: u16, fault_rate: f64, kinds: &[Fault], seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let faults = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let rng = Arc::new(Mutex::new(Rng(seed | 1)));
        let kinds = kinds.to_vec();
        let (c2, f2, s2) = (counts.clone(), faults.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let (counts, faults, rng, kinds) =
                    (c2.clone(), f2.clone(), rng.clone(), kinds.clone());
                std::thread::spawn(move || {
                    handle(conn, upstream, fault_rate, &kinds, &rng, &counts, &faults)
                });
            }
        });
        Proxy { port, counts, faults, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn total(&self) -> u32 {
        self.counts.lock().unwrap().values().sum()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn read_request(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn handle(
    conn: TcpStream,
    upstream: u16,
    rate: f64,
    kinds: &[Fault],
    rng: &Mutex<Rng>,
    counts: &Mutex<HashMap<String, u32>>,
    faults: &Mutex<Vec<Fault>>,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    // One request per connection: every answer says `Connection: close`.
    if let Some((head, body)) = read_request(&mut reader) {
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let is_chat = path.ends_with("/chat/completions");
        if is_chat {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let prompt = v["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or("")
                .to_string();
            *counts.lock().unwrap().entry(prompt).or_default() += 1;
        }
        // Which requests fail is random; the kinds take turns, so every kind occurs.
        let fault = {
            let mut r = rng.lock().unwrap();
            let mut seen = faults.lock().unwrap();
            let f = (is_chat && !kinds.is_empty() && r.next() < rate)
                .then(|| kinds[seen.len() % kinds.len()]);
            seen.extend(f);
            f
        };
        match fault {
            Some(Fault::TooMany) => {
                let _ = conn.write_all(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                return;
            }
            Some(Fault::ServerError) => {
                let _ = conn.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!");
                return;
            }
            Some(Fault::Reset) => return,
            Some(Fault::Stall) => {
                std::thread::sleep(Duration::from_secs(10));
                return;
            }
            _ => {}
        }
        // Forward upstream, one connection per request.
        let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
        let head_fwd: String = head
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty())
            .map(|l| format!("{l}\r\n"))
            .collect::<String>()
            + "Connection: close\r\n\r\n";
        if up.write_all(head_fwd.as_bytes()).and_then(|_| up.write_all(&body)).is_err() {
            return;
        }
        let mut resp = Vec::new();
        let _ = up.read_to_end(&mut resp);
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n").map_or(resp.len(), |i| i + 4);
        let (h, b) = resp.split_at(split);
        let h = String::from_utf8_lossy(h);
        let status_line = h.lines().next().unwrap_or("HTTP/1.1 502 Bad Gateway").to_string();
        let ctype = h
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-type:"))
            .unwrap_or("Content-Type: application/json")
            .to_string();
        // llama-server may answer chunked; normalise to a plain body.
        let body = if h.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(b)
        } else {
            b.to_vec()
        };
        let body =
            if fault == Some(Fault::Truncated) { body[..body.len() / 2].to_vec() } else { body };
        let out = format!(
            "{status_line}\r\n{ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(out.as_bytes()).and_then(|_| conn.write_all(&body));
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
}

/// A teach recipe against `url`.
pub fn openai_recipe(dir: &Path, prompts: &Path, url: &str, extra: &str) -> PathBuf {
    let r = dir.join("teach.toml");
    std::fs::write(
        &r,
        format!(
            r#"[generate]
prompts = "{}"
output = "{}"
fields = {{ prompt = "question", answer = "answer", answer_style = "gsm8k", template = "{{prompt}}\nPut the final answer in \\boxed{{}}." }}
{extra}

[generate.backend]
kind = "openai"

[[generate.backend.endpoints]]
base_url = "{url}"
model = "smollm2"
concurrency = 4
timeout_s = 3

[generate.retry]
max_attempts = 10
base_ms = 50
cap_s = 1.0

[generate.verify]
require_reasoning = false
"#,
            prompts.display(),
            dir.join("corpus").display()
        ),
    )
    .unwrap();
    r
}

/// The first `n` GSM8K training prompts, from ../shared.
pub fn gsm8k_prompts(dir: &Path, n: usize) -> Option<PathBuf> {
    let src = shared()?.join("data/prompts/gsm8k-train.jsonl");
    let lines: Vec<String> =
        std::fs::read_to_string(src).ok()?.lines().take(n).map(str::to_string).collect();
    let p = dir.join("prompts.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    Some(p)
}

/// A tiny random student with SmolLM2's tokenizer and chat template (fast to train).
pub fn tiny_student(dir: &Path) -> PathBuf {
    tiny_student_with(dir, "tiny-student", 1, |_| {})
}

/// As [`tiny_student`], written to `dir/name`, with `edit` applied to the tiny config.
pub fn tiny_student_with(
    dir: &Path,
    name: &str,
    seed: u64,
    edit: impl FnOnce(&mut distill_models::ModelConfig),
) -> PathBuf {
    use distill_models::checkpoint::SaveDtype;
    use distill_models::device::{Cpu, CpuDevice};
    use distill_models::hf::{self, Assets, ExportOptions};
    use distill_models::weights::RandomSource;
    use distill_models::{CausalLm, ModelConfig};
    let (_, hf_dir) = smollm2();
    let mut cfg = ModelConfig::from_file(&hf_dir.join("config.json")).unwrap();
    cfg.hidden_size = 64;
    cfg.intermediate_size = 128;
    cfg.num_hidden_layers = 2;
    cfg.num_attention_heads = 4;
    cfg.num_key_value_heads = 2;
    cfg.head_dim = 16;
    edit(&mut cfg);
    let model =
        CausalLm::<Cpu>::load(&cfg, &mut RandomSource::new(seed), &CpuDevice::default()).unwrap();
    let out = dir.join(name);
    let opts = ExportOptions { dtype: SaveDtype::F32, ..Default::default() };
    hf::export(&model, &cfg, &Assets::read(&hf_dir).unwrap(), &out, &opts).unwrap();
    out
}

/// A corpus of short arithmetic traces; `passed` sets their verdict.
pub fn short_corpus(dir: &Path, n: usize, passed: bool) -> PathBuf {
    use distill_data::*;
    let out = dir.join(format!("corpus-{n}-{passed}"));
    let mut w = CorpusWriter::open(&out, WriterOptions::default()).unwrap();
    for i in 0..n {
        let (a, b) = (i % 17 + 2, i % 11 + 3);
        let prompt_id = format!("arith/{i}");
        w.append(Trace {
            schema: SCHEMA_VERSION,
            id: Trace::make_id(&prompt_id, 0),
            prompt_id,
            sample: 0,
            source: Source { dataset: "arith".into(), row: i as u64 },
            messages: vec![Message::new(Role::User, format!("What is {a} + {b}?"))],
            reasoning: format!("We add {a} and {b}."),
            answer: format!("{a} + {b} = {}.", a + b),
            finish_reason: FinishReason::Stop,
            teacher: Teacher {
                model: "test".into(),
                endpoint: EndpointKind::Synthetic,
                sampling: Sampling {
                    temperature: None,
                    top_p: None,
                    top_k: None,
                    max_tokens: None,
                    seed: None,
                },
            },
            usage: Usage { prompt_tokens: 10, completion_tokens: 12 },
            verdicts: vec![Verdict {
                verifier: "math".into(),
                passed,
                extracted: None,
                reason: None,
            }],
            reference: Some((a + b).to_string()),
            logprobs: None,
            metadata: Default::default(),
        })
        .unwrap();
    }
    w.commit().unwrap();
    out
}

/// A [train] recipe.
pub fn train_recipe(
    dir: &Path,
    model: &Path,
    corpus: &Path,
    output: &Path,
    extra: &str,
) -> PathBuf {
    let r = dir.join(format!("train-{}.toml", output.file_name().unwrap().to_string_lossy()));
    std::fs::write(
        &r,
        format!(
            r#"[train]
model = "{}"
output = "{}"
max_steps = 8
micro_batch = 2
grad_accum = 2
save_every = 2
keep_checkpoints = 3
{extra}
[train.data]
corpus = ["{}"]
max_seq_len = 128
eval_fraction = 0.1
seed = 3
[train.optim]
lr = 1e-3
warmup_steps = 2
max_grad_norm = 1.0
weight_decay = 0.01
[train.export]
dtype = "f32"
"#,
            model.display(),
            output.display(),
            corpus.display()
        ),
    )
    .unwrap();
    r
}

/// A stub OpenAI-compatible endpoint: `/models` answers; chat completions answer `2` in a box
/// (`echo = false`) or fail with a 500 whose body echoes the request head (`echo = true`).
pub fn chat_stub(echo: bool) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || chat_answer(conn, echo));
        }
    });
    port
}

fn chat_answer(conn: TcpStream, echo: bool) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    while let Some((head, _body)) = read_request(&mut reader) {
        let (status, body) = if !head.contains("/chat/completions") {
            ("200 OK", "{\"data\": []}".to_string())
        } else if echo {
            ("500 Internal Server Error", format!("server error; your request was:\n{head}"))
        } else {
            (
                "200 OK",
                r#"{"id": "c", "object": "chat.completion", "model": "stub", "choices": [{"index": 0, "message": {"role": "assistant", "content": "1 + 1 = 2, so \\boxed{2}."}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}"#.to_string(),
            )
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// `scripts/gpu-check MODE` (`--cpu`, `--wgpu`) with this build's distill, writing into `out`:
/// (its output, as text; success; the step rows; the generation rows).
pub fn gpu_check(
    mode: &str,
    out: &Path,
) -> (String, bool, Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("bash")
        .arg(root.join("scripts/gpu-check"))
        .arg(mode)
        .env("DISTILL_BIN", env!("CARGO_BIN_EXE_distill"))
        .env("OUT", out)
        .output()
        .unwrap();
    let rows = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(out.join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    (text(&o), o.status.success(), rows("gpu-check.jsonl"), rows("gpu-check-gen.jsonl"))
}
