//! `distill tokenize --model DIR [--chat FILE.json] [TEXT]`: token ids and pieces, as
//! `llama-tokenize` and transformers' `tokenizer(text)` / `convert_ids_to_tokens` show them; for a
//! chat, the chat template's rendering and which tokens are assistant output (the SFT loss mask).

use std::path::PathBuf;
use std::process::ExitCode;

use distill_models::tokenizer::TextTokenizer;
use serde_json::json;

use crate::chat::{read_chat, render_chat};

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
