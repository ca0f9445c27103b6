//! Chat files as the commands read them (`--chat FILE.json`), rendered with a model's template.

use anyhow::Context;
use distill_data::{Message, Role};
use distill_models::tokenizer::TextTokenizer;

/// A chat file: a messages array, or an object holding one under `messages`.
pub fn read_chat(path: &std::path::Path) -> anyhow::Result<Vec<Message>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let arr = v.get("messages").unwrap_or(&v);
    serde_json::from_value(arr.clone()).with_context(|| {
        format!("{}: expected a [{{\"role\": …, \"content\": …}}] messages array", path.display())
    })
}

/// The chat rendered as the model sees it, and the assistant spans in it.
pub fn render_chat(
    tok: &TextTokenizer,
    messages: &[Message],
    no_generation_prompt: bool,
) -> anyhow::Result<(String, Vec<std::ops::Range<usize>>)> {
    let chat = tok.chat.as_ref().context("the model has no chat template")?;
    let ends_with_reply = messages.last().is_some_and(|m| m.role == Role::Assistant);
    if ends_with_reply || no_generation_prompt {
        Ok(chat.render_with_spans(messages)?)
    } else {
        let (_, spans) = chat.render_with_spans(messages)?;
        Ok((chat.render(messages, true)?, spans))
    }
}
