//! `distill generate-text --model DIR --prompt …`: a quick look at what a model says.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::prelude::Backend;
use distill_data::{Message, Role};
use distill_models::device::DeviceKind;
use distill_models::generate::{Engine, SamplingParams};
use distill_models::hf;
use distill_models::tokenizer::TextTokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory (e.g. from `distill import gguf` or an export).
    #[arg(long)]
    model: PathBuf,
    /// User prompts; each is one conversation (they run as one batch).
    #[arg(long, required_unless_present = "chat")]
    prompt: Vec<String>,
    /// A messages JSON file (`[{"role": …, "content": …}, …]`): one whole conversation, any
    /// number of turns, instead of --prompt.
    #[arg(long, conflicts_with_all = ["prompt", "raw", "system"])]
    chat: Option<PathBuf>,
    /// Print the prompt's and the completion's token ids.
    #[arg(long)]
    ids: bool,
    /// Print the top-K log-probabilities at every generated position.
    #[arg(long, value_name = "K")]
    logprobs: Option<usize>,
    /// Optional system message.
    #[arg(long)]
    system: Option<String>,
    /// Feed the prompt as raw text instead of through the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop strings (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// cpu, cuda or cuda:N (CUDA only in builds with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    crate::backend::dispatch!(a.device, |B, device| run_on::<B>(&a, device))
}

fn run_on<B: Backend>(a: &Args, device: B::Device) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let loaded = hf::load_model::<B>(&a.model, &device)?;
    let tok = TextTokenizer::from_dir(&a.model)?;
    eprintln!(
        "loaded {} ({:?}, {} layers) in {:.1}s",
        a.model.display(),
        loaded.config.arch,
        loaded.config.num_hidden_layers,
        t0.elapsed().as_secs_f64()
    );
    let mut prompts = Vec::new();
    let mut labels: Vec<String> = a.prompt.clone();
    if let Some(path) = &a.chat {
        let msgs = crate::chat::read_chat(path)?;
        let text = crate::chat::render_chat(&tok, &msgs, false)?.0;
        prompts.push(tok.encode(&text)?);
        labels.push(path.display().to_string());
    }
    for p in &a.prompt {
        let text = if a.raw {
            p.clone()
        } else {
            let chat = tok
                .chat
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("the model has no chat template; use --raw"))?;
            let mut msgs = Vec::new();
            if let Some(s) = &a.system {
                msgs.push(Message::new(Role::System, s.clone()));
            }
            msgs.push(Message::new(Role::User, p.clone()));
            chat.render(&msgs, true)?
        };
        prompts.push(tok.encode(&text)?);
    }
    let params = SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        max_tokens: a.max_tokens,
        seed: a.seed,
        stop_ids: tok.eos_ids(&loaded.config.eos_token_ids),
        stop_strings: a.stop.clone(),
        logprobs: a.logprobs.unwrap_or(0),
    };
    let engine = Engine::new(&loaded.model, &loaded.config, Some(&tok), device);
    let t0 = Instant::now();
    let pb = crate::progress::bar(None, "tokens");
    let outs = engine.generate(&prompts, &params, |n| pb.inc(n as u64))?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let total: usize = outs.iter().map(|o| o.ids.len()).sum();
    for ((p, o), ids) in labels.iter().zip(&outs).zip(&prompts) {
        println!(
            "### {p}\n{}\n[{} tokens, finish_reason={}]",
            o.text,
            o.ids.len(),
            o.finish_reason.as_str()
        );
        if a.ids {
            println!("prompt ids: {ids:?}");
            println!("ids: {:?}", o.ids);
        }
        if let Some(lp) = &o.logprobs {
            for pos in 0..lp.len() {
                let piece =
                    |id: u32| tok.inner().id_to_token(id).unwrap_or_else(|| format!("<{id}>"));
                let alts: Vec<String> =
                    lp.top(pos).map(|(id, l)| format!("{:?} {l:.4}", piece(id))).collect();
                println!(
                    "{pos:>4} {:>8} {:<16} {:>9.4}  | {}",
                    lp.tokens[pos],
                    format!("{:?}", piece(lp.tokens[pos])),
                    lp.token_logprobs[pos],
                    alts.join(", ")
                );
            }
        }
        println!();
    }
    eprintln!("{total} tokens in {secs:.2}s ({:.1} tokens/s)", total as f64 / secs);
    Ok(ExitCode::SUCCESS)
}
