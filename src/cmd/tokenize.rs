//! `distill tokenize --model DIR [--chat FILE.json] [TEXT]`: token ids and pieces, as
//! `llama-tokenize` and transformers' `tokenizer(text)` / `convert_ids_to_tokens` show them; for a
//! chat, the chat template's rendering and which tokens are assistant output (the SFT loss mask).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use distill_data::{Message, Role};
use distill_models::tokenizer::TextTokenizer;
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// A model directory (tokenizer.json, tokenizer_config.json).
    #[arg(long)]
    model: PathBuf,
    /// A JSON file with a messages array (`[{"role": "user", "content": "…"}, …]`), rendered
    /// with the model's chat template.
    #[arg(long, conflicts_with = "text")]
    chat: Option<PathBuf>,
    /// Render the chat without the generation prompt (default: with it, unless the chat ends
    /// with an assistant turn).
    #[arg(long)]
    no_generation_prompt: bool,
    /// Print JSON (`ids`, `pieces`, `assistant_mask`, `text`) instead of a table.
    #[arg(long)]
    json: bool,
    /// Raw text to tokenize (no chat template).
    #[arg(required_unless_present = "chat")]
    text: Option<String>,
}

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

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let tok = TextTokenizer::from_dir(&a.model)?;
    let (text, spans) = match (&a.chat, &a.text) {
        (Some(path), _) => render_chat(&tok, &read_chat(path)?, a.no_generation_prompt)?,
        (None, Some(t)) => (t.clone(), vec![]),
        (None, None) => unreachable!("clap requires one"),
    };
    let (mut ids, offsets) = tok.encode_with_offsets(&text)?;
    let mut mask: Vec<bool> =
        offsets.iter().map(|&(s, _)| spans.iter().any(|r| r.contains(&s))).collect();
    // A BOS the tokenizer adds itself (tokenizer_config's add_bos_token).
    let full = tok.encode(&text)?;
    if full.len() == ids.len() + 1 && full[1..] == ids[..] {
        ids = full;
        mask.insert(0, false);
    }
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| tok.inner().id_to_token(i).unwrap_or_else(|| format!("<{i}>")))
        .collect();
    if a.json {
        let mut v = json!({"ids": ids, "pieces": pieces, "text": text});
        if a.chat.is_some() {
            v["assistant_mask"] = json!(mask);
        }
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    if a.chat.is_some() {
        println!("{text}");
        println!("---");
    }
    for (i, (id, piece)) in ids.iter().zip(&pieces).enumerate() {
        let m = if a.chat.is_some() && mask[i] { "  assistant" } else { "" };
        println!("{i:>6} {id:>8}  {piece:?}{m}");
    }
    println!("ids: {ids:?}");
    if a.chat.is_some() {
        println!("{} tokens, {} assistant", ids.len(), mask.iter().filter(|&&m| m).count());
    }
    Ok(ExitCode::SUCCESS)
}
