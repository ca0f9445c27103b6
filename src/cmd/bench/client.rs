//! `distill bench client`: the OpenAI client's own overhead. A stub server in a child process
//! answers every chat request instantly with a fixed completion; the client sends requests from
//! `--concurrency` threads with retries armed, and its CPU time is measured with getrusage.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use distill_data::{Message, Role};
use distill_teacher::backend::openai::{OpenAiClient, OpenAiConfig};
use distill_teacher::backend::retry::RetryPolicy;
use distill_teacher::backend::{ChatRequest, SamplingSpec, Teacher};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Run as the stub server on this port (used internally).
    #[arg(long, hide = true)]
    stub: Option<u16>,
}

const BODY: &str = r#"{"id":"x","object":"chat.completion","model":"stub","choices":[{"index":0,"message":{"role":"assistant","content":"<think>\nTwo plus two is four.\n</think>\n\nThe answer is \\boxed{4}."},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":18,"total_tokens":38}}"#;

fn serve(port: u16) -> ! {
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind stub port");
    for conn in l.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let mut w = conn.try_clone().unwrap();
            let mut r = BufReader::new(conn);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
                BODY.len()
            );
            loop {
                let mut len = 0usize;
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() || w.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
    std::process::exit(0)
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (getrusage without a libc dependency).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |x| x.1).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if let Some(port) = a.stub {
        serve(port);
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut stub = Command::new(std::env::current_exe()?)
        .args(["bench", "client", "--stub", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()?;
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "stub server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cfg = OpenAiConfig {
        concurrency: a.concurrency,
        timeout_s: 10.0,
        // The stub answers chat completions only: nothing to probe.
        engine: Some(distill_teacher::backend::openai::Engine::Vllm),
        ..OpenAiConfig::new(format!("http://127.0.0.1:{port}/v1"), "stub")
    };
    let client = Arc::new(OpenAiClient::new(cfg, None)?);
    let req = Arc::new(ChatRequest {
        messages: vec![Message::new(
            Role::User,
            "What is 2 + 2? Put the final answer in \\boxed{}.",
        )],
        n: 1,
        sampling: SamplingSpec { max_tokens: 64, ..Default::default() },
        seed: Some(1),
        logprobs: None,
    });
    let left = Arc::new(AtomicU64::new(a.requests));
    let errors = Arc::new(AtomicU64::new(0));
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let threads: Vec<_> = (0..a.concurrency)
        .map(|i| {
            let (client, req, left, errors) =
                (client.clone(), req.clone(), left.clone(), errors.clone());
            std::thread::spawn(move || {
                let policy = RetryPolicy::default();
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let (r, _) = policy.run(i as u64, || client.complete(&req));
                    if r.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let _ = stub.kill();
    let r = json!({
        "machine": super::machine(),
        "requests": a.requests,
        "concurrency": a.concurrency,
        "errors": errors.load(Ordering::Relaxed),
        "wall_s": wall,
        "requests_per_s": a.requests as f64 / wall,
        "client_cpu_s": cpu,
        "requests_per_client_cpu_s": a.requests as f64 / cpu.max(1e-9),
        "client_cpu_us_per_request": cpu * 1e6 / a.requests as f64,
    });
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(ExitCode::SUCCESS)
}
