//! Chat templates render exactly what transformers renders (expected.json, recorded by
//! scripts/reference/chat_templates.py), and the renderer reports assistant spans.

use std::path::Path;

use distill_data::{Message, Role};
use distill_models::chat::ChatTemplate;
use serde_json::Value;

fn dir() -> &'static Path {
    Box::leak(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates").into_boxed_path(),
    )
}

const TOKENS: &[(&str, Option<&str>, &str)] = &[
    ("smollm2", Some("<|im_start|>"), "<|im_end|>"),
    ("qwen2.5", None, "<|im_end|>"),
    ("llama3.1", Some("<|begin_of_text|>"), "<|eot_id|>"),
    ("deepseek-r1-distill", Some("<｜begin▁of▁sentence｜>"), "<｜end▁of▁sentence｜>"),
];

fn template(name: &str) -> ChatTemplate {
    let (_, bos, eos) = TOKENS.iter().find(|t| t.0 == name).unwrap();
    let src = std::fs::read_to_string(dir().join(format!("{name}.jinja"))).unwrap();
    ChatTemplate::new(&src, *bos, Some(eos)).unwrap()
}

fn msgs(v: &Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn renders_exactly_like_transformers() {
    let expected: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap())
            .unwrap();
    assert_eq!(expected.len(), 40);
    for (i, e) in expected.iter().enumerate() {
        let t = template(e["template"].as_str().unwrap());
        let got =
            t.render(&msgs(&e["messages"]), e["add_generation_prompt"].as_bool().unwrap()).unwrap();
        assert_eq!(got, e["text"].as_str().unwrap(), "case {i} ({})", e["template"]);
    }
}

#[test]
fn training_text_keeps_the_think_block_and_skips_a_prefilled_think_tag() {
    let user = [Message::new(Role::User, "2+2?")];
    let completion = "<think>\nTwo plus two.\n</think>\n\nThe answer is 4.";
    // R1-Distill prefills "<think>\n" in the generation prompt and strips <think> from history;
    // the training text must still hold the reasoning, once.
    let t = template("deepseek-r1-distill");
    let (text, span) = t.render_for_training(&user, completion).unwrap();
    assert_eq!(
        text,
        "<｜begin▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜><think>\nTwo plus two.\n</think>\n\nThe answer is 4.<｜end▁of▁sentence｜>"
    );
    assert_eq!(
        &text[span.clone()],
        "Two plus two.\n</think>\n\nThe answer is 4.<｜end▁of▁sentence｜>"
    );
    // ChatML has no prefill: the whole completion is the span.
    let t = template("qwen2.5");
    let (text, span) = t.render_for_training(&user, completion).unwrap();
    assert!(
        text.ends_with(
            "<|im_start|>assistant\n<think>\nTwo plus two.\n</think>\n\nThe answer is 4.<|im_end|>"
        ),
        "{text}"
    );
    assert_eq!(&text[span], format!("{completion}<|im_end|>"));
}

#[test]
fn spans_cover_each_assistant_turn_and_its_end_marker() {
    let conv = vec![
        Message::new(Role::User, "Hi!"),
        Message::new(Role::Assistant, "Hello!"),
        Message::new(Role::User, "Bye."),
        Message::new(Role::Assistant, "Goodbye."),
    ];
    for name in ["smollm2", "qwen2.5", "llama3.1"] {
        let t = template(name);
        let (text, spans) = t.render_with_spans(&conv).unwrap();
        assert_eq!(text, t.render(&conv, false).unwrap());
        let parts: Vec<&str> = spans.iter().map(|s| &text[s.clone()]).collect();
        let eos = TOKENS.iter().find(|x| x.0 == name).unwrap().2;
        assert_eq!(parts, vec![format!("Hello!{eos}"), format!("Goodbye.{eos}")], "{name}");
    }
    // R1-Distill rewrites history turns (it drops their reasoning): the span is the turn as the
    // template renders it in history, which is what a later prompt shows the model.
    let r1 = template("deepseek-r1-distill");
    let with_think = vec![
        Message::new(Role::User, "Hi"),
        Message::new(Role::Assistant, "<think>\nhm\n</think>\n\nHello"),
    ];
    let (text, spans) = r1.render_with_spans(&with_think).unwrap();
    let parts: Vec<&str> = spans.iter().map(|s| &text[s.clone()]).collect();
    // (what follows `</think>` in the turn, as the template keeps it.)
    assert_eq!(parts, vec!["\n\nHello<｜end▁of▁sentence｜>"]);
}

#[test]
fn raise_exception_and_bad_templates_are_errors() {
    let t =
        ChatTemplate::new("{{ raise_exception('only user turns allowed') }}", None, None).unwrap();
    let e = t.render(&[Message::new(Role::User, "x")], true).unwrap_err().to_string();
    assert!(e.contains("only user turns allowed"), "{e}");
    assert!(ChatTemplate::new("{% for %}", None, None).is_err());
}

#[test]
fn tojson_writes_what_python_json_dumps_writes() {
    let t = ChatTemplate::new(
        "{{ {'b': 1, 'a': [1.0, 'é\"'], 'c': {}} | tojson }}|{{ [1, 2] | tojson(indent=2) }}",
        None,
        None,
    )
    .unwrap();
    let got = t.render(&[], false).unwrap();
    assert_eq!(got, "{\"b\": 1, \"a\": [1.0, \"é\\\"\"], \"c\": {}}|[\n  1,\n  2\n]");
}

/// Hostile templates (issue 11): unbounded work and recursion end in a clean error, quickly.
#[test]
fn hostile_templates_run_out_of_fuel_or_depth() {
    let msgs = [distill_data::Message { role: distill_data::Role::User, content: "hi".into() }];
    for (what, src) in [
        (
            "10^10 iterations",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        ),
        ("unbounded recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
    ] {
        let t = distill_models::chat::ChatTemplate::new(src, None, None).unwrap();
        let start = std::time::Instant::now();
        let e = t.render(&msgs, true).expect_err(what).to_string();
        assert!(e.contains("fuel") || e.contains("recursion"), "{what}: {e}");
        assert!(start.elapsed().as_secs() < 30, "{what} took {:?}", start.elapsed());
    }
}
