//! `distill logits --model DIR (--chat FILE.json | --text TEXT) [--top 20]`: the model's top-k
//! next-token logits and log-probabilities at the last position of a prompt, as one would print
//! them from transformers' `model(**inputs).logits[0, -1]`.

use std::path::PathBuf;
use std::process::ExitCode;

use burn::prelude::*;
use burn::tensor::TensorData;
use distill_models::device::DeviceKind;
use distill_models::masks;
use distill_models::model::AttnMask;
use distill_models::rope::Rope;
use distill_models::tokenizer::TextTokenizer;
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// A messages JSON file, rendered with the chat template and the generation prompt.
    #[arg(long, conflicts_with = "text")]
    chat: Option<PathBuf>,
    /// Raw text (no chat template).
    #[arg(long, required_unless_present = "chat")]
    text: Option<String>,
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Print JSON (`ids`, `logits`, `logprobs`, `logsumexp`, `prompt_ids`).
    #[arg(long)]
    json: bool,
    /// cpu, cuda or cuda:N (CUDA only in builds with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    crate::backend::dispatch!(a.device, |B, device| run_on::<B>(&a, device))
}

fn run_on<B: Backend>(a: &Args, device: B::Device) -> anyhow::Result<ExitCode> {
    let tok = TextTokenizer::from_dir(&a.model)?;
    let text = match (&a.chat, &a.text) {
        (Some(path), _) => {
            let msgs = crate::chat::read_chat(path)?;
            crate::chat::render_chat(&tok, &msgs, false)?.0
        }
        (None, Some(t)) => t.clone(),
        (None, None) => unreachable!("clap requires one"),
    };
    let ids = tok.encode(&text)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt has no tokens");
    let loaded = distill_models::hf::load_model::<B>(&a.model, &device)?;
    let rope = Rope::<B>::new(&loaded.config, &device);
    let n = ids.len();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, n]),
        &device,
    );
    // [1, n, vocab] → the last position, f32 on the host.
    let logits =
        loaded.model.forward(input, masks::positions(1, n, 0, &device), &rope, &AttnMask::Causal);
    let last: Vec<f32> = logits
        .narrow(1, n - 1, 1)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // log-softmax in f64.
    let max = last.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + last.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    let mut order: Vec<usize> = (0..last.len()).collect();
    order.sort_by(|&x, &y| last[y].total_cmp(&last[x]));
    let top: Vec<usize> = order.into_iter().take(a.top).collect();
    if a.json {
        println!(
            "{}",
            json!({
                "prompt_ids": ids,
                "ids": top,
                "logits": top.iter().map(|&i| last[i]).collect::<Vec<_>>(),
                "logprobs": top.iter().map(|&i| last[i] as f64 - lse).collect::<Vec<_>>(),
                "logsumexp": lse,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{n} prompt tokens; logsumexp {lse:.5}");
    println!("{:>4} {:>8}  {:>10} {:>10}  piece", "rank", "id", "logit", "logprob");
    for (r, &i) in top.iter().enumerate() {
        let piece = tok.inner().id_to_token(i as u32).unwrap_or_default();
        println!(
            "{:>4} {i:>8}  {:>10.5} {:>10.5}  {piece:?}",
            r + 1,
            last[i],
            last[i] as f64 - lse
        );
    }
    Ok(ExitCode::SUCCESS)
}
