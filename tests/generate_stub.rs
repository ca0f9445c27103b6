//! `distill generate` against stub OpenAI-compatible endpoints: secrets never reach what distill
//! writes or prints (an API key, even when an endpoint echoes the Authorization header into an
//! error body, and the userinfo of an endpoint URL), and skipped prompt lines are listed.

mod common;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;

const KEY: &str = "sk-distill-test-93f1c0ffee";
const PASSWORD: &str = "hunter2pw";

fn recipe(dir: &Path, port: u16) -> std::path::PathBuf {
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"question\": \"What is 1 + 1?\", \"answer\": \"#### 2\"}\n{\"question\": \"What is 1 + 1 again?\", \"answer\": \"#### 2\"}\n").unwrap();
    let r = dir.join("teach.toml");
    std::fs::write(
        &r,
        format!(
            r#"[generate]
prompts = "{}"
output = "{}"
fields = {{ prompt = "question", answer = "answer", answer_style = "gsm8k" }}

[generate.backend]
kind = "openai"

[[generate.backend.endpoints]]
base_url = "http://alice:{PASSWORD}@127.0.0.1:{port}/v1"
model = "stub"
api_key_env = "DISTILL_TEST_KEY"

[generate.retry]
max_attempts = 1

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

/// Every file under `dir`, and the process's output, must be free of both secrets.
fn assert_clean(dir: &Path, output: &str) {
    assert!(!output.contains(KEY) && !output.contains(PASSWORD), "printed a secret:\n{output}");
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            assert_clean(&p, "");
        } else if let Ok(bytes) = std::fs::read(&p) {
            // Shards are compressed: read records through the corpus reader below instead.
            if p.extension().is_some_and(|x| x == "zst") {
                continue;
            }
            let t = String::from_utf8_lossy(&bytes);
            assert!(!t.contains(KEY) && !t.contains(PASSWORD), "{} holds a secret", p.display());
        }
    }
}

fn run(recipe: &Path) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["generate", "--recipe", recipe.to_str().unwrap()])
        .env("DISTILL_TEST_KEY", KEY)
        .output()
        .unwrap();
    let t = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.success(), t)
}

#[test]
fn keys_and_url_credentials_are_redacted_everywhere() {
    // A working endpoint: the traces' metadata, the report and the manifest name it without
    // its credentials.
    let d = tempfile::tempdir().unwrap();
    let r = recipe(d.path(), common::chat_stub(false));
    let (ok, out) = run(&r);
    assert!(ok, "{out}");
    let traces: Vec<distill_data::Trace> = distill_data::Corpus::open(&d.path().join("corpus"))
        .unwrap()
        .iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(traces.len(), 2, "{out}");
    for t in &traces {
        let meta = serde_json::to_string(&t.metadata).unwrap();
        assert!(meta.contains("http://***@127.0.0.1"), "{meta}");
        assert!(!meta.contains(PASSWORD) && !meta.contains(KEY), "{meta}");
    }
    std::fs::remove_file(&r).unwrap(); // the user's own recipe holds the password
    std::fs::remove_file(d.path().join("prompts.jsonl")).unwrap();
    assert_clean(d.path(), &out);

    // An endpoint that echoes the request (Authorization header and all) in its error body.
    let d = tempfile::tempdir().unwrap();
    let r = recipe(d.path(), common::chat_stub(true));
    let (_, out) = run(&r);
    let report = std::fs::read_to_string(d.path().join("corpus/generate-report.json")).unwrap();
    assert!(
        report.to_lowercase().contains("authorization: bearer ***"),
        "the echo was not recorded: {report}"
    );
    std::fs::remove_file(&r).unwrap();
    assert_clean(d.path(), &out);
}

/// With `skip_bad_lines`, the report lists each skipped line with why.
#[test]
fn skipped_prompt_lines_are_listed_in_the_report() {
    let d = tempfile::tempdir().unwrap();
    let r = recipe(d.path(), common::chat_stub(false));
    std::fs::write(
        d.path().join("prompts.jsonl"),
        "{\"question\": \"What is 1 + 1?\", \"answer\": \"#### 2\"}\nnot json\n{\"answer\": \"#### 2\"}\n{\"question\": \"And 1 + 1?\", \"answer\": \"#### 2\"}\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("[generate]\n", "[generate]\nskip_bad_lines = true\n");
    std::fs::write(&r, text).unwrap();
    let (ok, out) = run(&r);
    assert!(ok, "{out}");
    let rep: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("corpus/generate-report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rep["bad_lines"], 2, "{rep}");
    let lines: Vec<u64> = rep["skipped_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 3], "{rep}");
    assert!(rep["skipped_lines"][1]["error"].as_str().unwrap().contains("question"), "{rep}");
}

#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    /// vLLM 0.10+: `/version`; reasoning in `reasoning`; token strings unless the request asks
    /// for `return_tokens_as_token_ids`, then `token_id:N`.
    Vllm,
    /// SGLang: `/get_model_info`; reasoning in `reasoning_content`; token strings always.
    Sglang,
}

/// An endpoint answering as `flavor` does, with log-probs, streaming when asked (usage in a
/// last chunk with no choices, as both engines send it). It records each request body.
fn engine_stub(
    flavor: Flavor,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) -> u16 {
    use serde_json::json;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let bodies = bodies.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                while let Some((head, body)) = common::read_request(&mut reader) {
                    let reply = |conn: &mut TcpStream, status: &str, ctype: &str, body: &str| {
                        let out = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        conn.write_all(out.as_bytes()).is_ok()
                    };
                    if head.starts_with("GET ") {
                        let ok = match (flavor, head.split_whitespace().nth(1).unwrap_or("")) {
                            (Flavor::Vllm, "/version") => reply(
                                &mut conn,
                                "200 OK",
                                "application/json",
                                r#"{"version": "0.10.1.1"}"#,
                            ),
                            (Flavor::Sglang, "/get_model_info") => reply(
                                &mut conn,
                                "200 OK",
                                "application/json",
                                r#"{"model_path": "Qwen/Qwen3-8B", "is_generation": true}"#,
                            ),
                            _ => reply(
                                &mut conn,
                                "404 Not Found",
                                "application/json",
                                r#"{"detail": "Not Found"}"#,
                            ),
                        };
                        if !ok {
                            return;
                        }
                        continue;
                    }
                    let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let ids = flavor == Flavor::Vllm && req["return_tokens_as_token_ids"] == true;
                    let stream = req["stream"] == true;
                    bodies.lock().unwrap().push(req);
                    // SmolLM2's ids: " the" is 260 ("Ġthe"), " a" is 253 ("Ġa").
                    let tok = |s: &str, id: u32| {
                        if ids { format!("token_id:{id}") } else { s.to_string() }
                    };
                    let entry = json!({
                        "token": tok(" the", 260), "logprob": -0.1,
                        "top_logprobs": [
                            {"token": tok(" the", 260), "logprob": -0.1},
                            {"token": tok(" a", 253), "logprob": -2.5},
                        ],
                    });
                    let rkey =
                        if flavor == Flavor::Vllm { "reasoning" } else { "reasoning_content" };
                    let usage =
                        json!({"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6});
                    let ok = if stream {
                        let chunk = |v: serde_json::Value| format!("data: {v}\n\n");
                        let mut sse = String::new();
                        sse += &chunk(json!({"id": "c", "model": "stub", "choices": [
                            {"index": 0, "delta": {"role": "assistant", rkey: "Thinking."}, "finish_reason": null}]}));
                        sse += &chunk(json!({"id": "c", "model": "stub", "choices": [
                            {"index": 0, "delta": {"content": " the"}, "logprobs": {"content": [entry]}, "finish_reason": null}]}));
                        sse += &chunk(json!({"id": "c", "model": "stub", "choices": [
                            {"index": 0, "delta": {}, "finish_reason": "stop"}]}));
                        sse += &chunk(
                            json!({"id": "c", "model": "stub", "choices": [], "usage": usage}),
                        );
                        sse += "data: [DONE]\n\n";
                        reply(&mut conn, "200 OK", "text/event-stream", &sse)
                    } else {
                        let resp = json!({
                            "id": "c", "object": "chat.completion", "model": "stub",
                            "choices": [{"index": 0,
                                "message": {"role": "assistant", "content": " the", rkey: "Thinking."},
                                "finish_reason": "stop", "logprobs": {"content": [entry]}}],
                            "usage": usage,
                        });
                        reply(&mut conn, "200 OK", "application/json", &resp.to_string())
                    };
                    if !ok {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// "1 + 1?" asking for the top-2 log-probs.
fn logprob_request() -> distill_teacher::backend::ChatRequest {
    distill_teacher::backend::ChatRequest {
        messages: vec![distill_data::Message::new(distill_data::Role::User, "1 + 1?")],
        n: 1,
        sampling: distill_teacher::backend::SamplingSpec::default(),
        seed: Some(1),
        logprobs: Some(2),
    }
}

fn vllm_stub(bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) -> u16 {
    engine_stub(Flavor::Vllm, bodies)
}

#[test]
fn engines_are_detected_and_answered_as_they_really_answer() {
    use distill_teacher::backend::openai::{Engine, OpenAiClient, OpenAiConfig};
    use distill_teacher::backend::{ChatRequest, SamplingSpec, Teacher};
    let (_, hf) = common::smollm2();
    let req = logprob_request();
    for (flavor, engine) in [(Flavor::Vllm, Engine::Vllm), (Flavor::Sglang, Engine::Sglang)] {
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let port = engine_stub(flavor, bodies.clone());
        let base = format!("http://127.0.0.1:{port}/v1");
        for stream in [false, true] {
            let cfg = OpenAiConfig { stream, ..OpenAiConfig::new(&base, "stub") };
            let client = OpenAiClient::new(cfg.clone(), None).unwrap();
            assert_eq!(client.engine().unwrap(), engine);
            let sent_before = bodies.lock().unwrap().len();
            let got = client.complete(&req);
            if engine == Engine::Sglang {
                // String tokens only: without the teacher's tokenizer, refused before any request.
                let e = got.unwrap_err().to_string();
                assert!(e.contains("sglang") && e.contains("tokenizer"), "{e}");
                assert_eq!(bodies.lock().unwrap().len(), sent_before);
            }
            let cfg = OpenAiConfig { tokenizer: Some(hf.clone()), ..cfg };
            let c = OpenAiClient::new(cfg, None).unwrap().complete(&req).unwrap();
            let ch = &c.choices[0];
            let lp = ch.logprobs.as_ref().expect("log-probs kept");
            assert_eq!((lp.tokens.clone(), lp.top_ids.clone()), (vec![260], vec![260, 253]));
            assert_eq!(ch.reasoning.as_deref(), Some("Thinking."), "stream={stream}");
            assert_eq!(ch.content, " the");
            assert_eq!((c.prompt_tokens, c.completion_tokens), (5, 1), "usage from the last chunk");
            let sent = bodies.lock().unwrap().last().cloned().unwrap();
            // Ids are asked for only where the engine knows the field.
            assert_eq!(sent.get("return_tokens_as_token_ids").is_some(), engine == Engine::Vllm);
            assert_eq!(sent["stream"], stream);
            if stream {
                assert_eq!(sent["stream_options"]["include_usage"], true);
            }
        }
    }
    // Configured engines are not probed; `openai` refuses a field OpenAI's API does not have.
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let port = engine_stub(Flavor::Vllm, bodies.clone());
    let cfg = OpenAiConfig {
        engine: Some(Engine::Openai),
        tokenizer: Some(hf.clone()),
        ..OpenAiConfig::new(format!("http://127.0.0.1:{port}/v1"), "stub")
    };
    let client = OpenAiClient::new(cfg, None).unwrap();
    assert_eq!(client.engine().unwrap(), Engine::Openai);
    let top_k = ChatRequest {
        sampling: SamplingSpec { top_k: Some(20), ..SamplingSpec::default() },
        ..req.clone()
    };
    let e = client.complete(&top_k).unwrap_err().to_string();
    assert!(e.contains("top_k"), "{e}");
    let c = client.complete(&req).unwrap();
    assert_eq!(c.choices[0].logprobs.as_ref().unwrap().tokens, vec![260]);
    assert!(bodies.lock().unwrap().last().unwrap().get("return_tokens_as_token_ids").is_none());
    // Nothing listening: a transport error (retried by the pool), not a guessed engine.
    let dead = OpenAiClient::new(
        OpenAiConfig::new(format!("http://127.0.0.1:{}/v1", common::free_port()), "stub"),
        None,
    )
    .unwrap();
    assert!(dead.engine().is_err());
}

#[test]
fn log_prob_tokens_keep_their_ids_or_fail_loudly_and_engine_fields_pass_through() {
    use distill_teacher::backend::Teacher;
    use distill_teacher::backend::openai::{OpenAiClient, OpenAiConfig};
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let port = vllm_stub(bodies.clone());
    let base = format!("http://127.0.0.1:{port}/v1");
    let req = logprob_request();
    // Default: token ids are asked for, and extra engine fields go out as given.
    let mut cfg = OpenAiConfig::new(&base, "stub");
    cfg.extra_body.insert("min_p".into(), serde_json::json!(0.05));
    cfg.extra_body
        .insert("chat_template_kwargs".into(), serde_json::json!({"enable_thinking": true}));
    let c = OpenAiClient::new(cfg, None).unwrap().complete(&req).unwrap();
    let lp = c.choices[0].logprobs.as_ref().expect("log-probs kept");
    assert_eq!((lp.tokens.clone(), lp.top_ids.clone()), (vec![260], vec![260, 253]));
    let sent = bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["return_tokens_as_token_ids"], true);
    assert_eq!(sent["min_p"], 0.05);
    assert_eq!(sent["chat_template_kwargs"]["enable_thinking"], true);

    // Without ids and without a tokenizer: a clear error, not a trace without log-probs.
    let cfg = OpenAiConfig { token_ids: false, ..OpenAiConfig::new(&base, "stub") };
    let e = OpenAiClient::new(cfg, None).unwrap().complete(&req).unwrap_err().to_string();
    assert!(e.contains("strings, not ids") && e.contains("tokenizer"), "{e}");

    // With the teacher's tokenizer, byte-level BPE strings (" the", not "Ġthe") map to their ids.
    let (_, hf) = common::smollm2();
    let cfg =
        OpenAiConfig { token_ids: false, tokenizer: Some(hf), ..OpenAiConfig::new(&base, "stub") };
    let c = OpenAiClient::new(cfg, None).unwrap().complete(&req).unwrap();
    let lp = c.choices[0].logprobs.as_ref().expect("log-probs kept");
    assert_eq!((lp.tokens.clone(), lp.top_ids.clone()), (vec![260], vec![260, 253]));

    // A field distill sets from the recipe cannot be overridden.
    let mut cfg = OpenAiConfig::new(&base, "stub");
    cfg.extra_body.insert("temperature".into(), serde_json::json!(2.0));
    let e = OpenAiClient::new(cfg, None).err().expect("refused").to_string();
    assert!(e.contains("extra_body.temperature"), "{e}");
}

#[test]
fn the_report_adds_up_what_the_teacher_cost_and_projects_a_corpus() {
    let d = tempfile::tempdir().unwrap();
    let port = common::chat_stub(false);
    let r = recipe(d.path(), port);
    // DeepSeek's published prices (USD per million tokens): $0.55 input, $0.14 cached, $2.19 out.
    // The recipe asks for log-probs, which this stub (declared a vLLM) never sends: the report
    // says so.
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace(
            "api_key_env = \"DISTILL_TEST_KEY\"\n",
            "api_key_env = \"DISTILL_TEST_KEY\"\nprice = { input = 0.55, cached_input = 0.14, output = 2.19 }\nengine = \"vllm\"\n",
        )
        .replace("[generate.backend]", "logprobs = 5\n\n[generate.backend]");
    std::fs::write(&r, text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["generate", "--recipe", r.to_str().unwrap(), "--project", "800000"])
        .env("DISTILL_TEST_KEY", KEY)
        .output()
        .unwrap();
    let t = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{t}");
    let rep: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("corpus/generate-report.json")).unwrap(),
    )
    .unwrap();
    // Every request: 5 prompt and 9 completion tokens (the stub's usage), none cached.
    let requests = rep["requests"].as_u64().unwrap();
    let want = requests as f64 * (5.0 * 0.55 + 9.0 * 2.19) / 1e6;
    let got = rep["cost_usd"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-12, "cost {got} against {want}");
    assert_eq!(rep["unpriced_requests"], 0);
    assert_eq!(rep["samples_without_logprobs"], rep["samples"]);
    assert!(t.contains("without the log-probs asked for"), "{t}");
    let kept = rep["kept"].as_u64().unwrap();
    assert!(kept > 0);
    let per = want / kept as f64;
    assert!(t.contains("per kept trace"), "{t}");
    assert!(t.contains(&format!("projection: 800000 kept traces ≈ ${:.2}", per * 800000.0)), "{t}");
}
