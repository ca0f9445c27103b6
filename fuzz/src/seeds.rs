//! The seed inputs (`fuzz/seeds/<target>/`), made by `distill-fuzz make-seeds` from distill's
//! own writers so that every seed is a valid input the mutations start from.

use std::path::Path;
use std::sync::OnceLock;

use distill_data::{CorpusWriter, WriterOptions, synth};
use distill_models::hf::{self, Assets, ExportOptions};
use distill_models::{ModelConfig, spec};

/// A tiny Llama's `config.json`: the checkpoint bytes are fuzzed against it.
pub const TINY_CONFIG: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama",
"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
"num_key_value_heads":1,"head_dim":4,"vocab_size":8,"max_position_embeddings":32,
"rms_norm_eps":1e-6,"rope_theta":10000.0,"tie_word_embeddings":false,"dtype":"float32"}"#;

/// The valid corpus the `manifest` and `shard` targets pair their input with.
pub static MANIFEST: OnceLock<Vec<u8>> = OnceLock::new();
pub static SHARD: OnceLock<Vec<u8>> = OnceLock::new();

pub const MANIFEST_SEED: &str = "manifest/00-valid.json";
pub const SHARD_SEED: &str = "shard/00-valid.zst";

pub fn load_pair(seeds: &Path) -> anyhow::Result<()> {
    let read = |p: &str| {
        std::fs::read(seeds.join(p))
            .map_err(|e| anyhow::anyhow!("{}: {e}", seeds.join(p).display()))
    };
    MANIFEST.set(read(MANIFEST_SEED)?).ok();
    SHARD.set(read(SHARD_SEED)?).ok();
    Ok(())
}

pub fn make(seeds: &Path, templates: &Path) -> anyhow::Result<()> {
    let put = |rel: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let p = seeds.join(rel);
        std::fs::create_dir_all(p.parent().unwrap())?;
        std::fs::write(&p, bytes)?;
        Ok(())
    };
    // A corpus of five short traces in three frames.
    let tmp = std::env::temp_dir().join(format!("distill-fuzz-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let traces: Vec<_> = synth::traces(7, 5, 1)
        .map(|mut t| {
            t.reasoning.truncate(t.reasoning.floor_char_boundary(160));
            t
        })
        .collect();
    let mut w = CorpusWriter::open(&tmp, WriterOptions { frame_records: 2, ..Default::default() })?;
    for t in &traces {
        w.append(t.clone())?;
    }
    w.commit()?;
    drop(w);
    put(MANIFEST_SEED, &std::fs::read(tmp.join("manifest.json"))?)?;
    put(SHARD_SEED, &std::fs::read(tmp.join("shard-00000.jsonl.zst"))?)?;
    std::fs::remove_dir_all(&tmp)?;
    for (i, t) in traces.iter().take(2).enumerate() {
        put(&format!("trace/{i:02}.json"), t.to_json().as_bytes())?;
    }
    put(
        "prompts/00-gsm8k.jsonl",
        b"{\"question\": \"Tom has 3 apples and buys 2. How many?\", \"answer\": \"3+2=5\\n#### 5\"}\n\
          {\"question\": \"What is 6*7?\", \"answer\": \"#### 42\"}\n\n",
    )?;
    put(
        "prompts/01-chat.jsonl",
        b"{\"id\": \"a\", \"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"}]}\n",
    )?;
    put(
        "import-row/00-openr1.jsonl",
        br#"{"problem": "What is 6*7?", "answer": "42", "uuid": "u-1", "generations": ["<think>6*7=42</think>\boxed{42}", "<think>guess</think>\boxed{41}"], "correctness_math_verify": [true, false], "finish_reasons": ["stop", "length"], "solution": "42"}"#,
    )?;
    put(
        "import-row/01-chat.jsonl",
        br#"{"id": "c1", "answer": "4", "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>2+2=4</think>

4", "reasoning_content": "adding"}]}"#,
    )?;
    // Prompts as Parquet (distill's own writer: zstd, dictionary pages): plain columns and a
    // chat column (list<struct<role, content>>).
    {
        use arrow_schema::{DataType, Field, Schema};
        let p = std::env::temp_dir().join(format!("distill-fuzz-{}.parquet", std::process::id()));
        let schema = Schema::new(vec![
            Field::new("question", DataType::Utf8, false),
            Field::new("answer", DataType::Utf8, true),
            Field::new("messages", distill_data::columnar::chat_type(), true),
        ]);
        let mut sink = distill_data::columnar::ParquetSink::create(&p, schema)?;
        for (q, a) in [("What is 6*7?", Some("42")), ("Hi", None), ("What is 6*7?", Some("42"))] {
            sink.push(serde_json::json!({
                "question": q,
                "answer": a,
                "messages": [{"role": "user", "content": q}],
            }))?;
        }
        sink.finish()?;
        put("parquet/00-prompts.parquet", &std::fs::read(&p)?)?;
        std::fs::remove_file(&p)?;
    }
    put(
        "score-reply/00-vllm.json",
        br#"{"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": "x", "prompt_logprobs": [null, {"2": {"logprob": -1.5, "rank": 3, "decoded_token": "b"}, "8": {"logprob": -0.2, "rank": 1}}, {"3": {"logprob": -0.5, "rank": 1}}, {"4": {"logprob": -0.1, "rank": 1}, "9": {"logprob": -2.0, "rank": 2}}, {"5": {"logprob": -0.9, "rank": 2}, "7": {"logprob": -0.3, "rank": 1}}]}]}"#,
    )?;
    for (name, bytes) in crate::hub::seeds() {
        put(&format!("hub/{name}"), &bytes)?;
    }
    for e in std::fs::read_dir(templates)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "jinja") {
            put(
                &format!("chat-template/{}", p.file_name().unwrap().to_string_lossy()),
                &std::fs::read(&p)?,
            )?;
        }
    }
    // A tiny Llama checkpoint matching [`TINY_CONFIG`].
    let cfg = ModelConfig::from_json(TINY_CONFIG)?;
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = spec::param_specs(&cfg)
        .into_iter()
        .map(|p| {
            let n: usize = p.shape.iter().product();
            (p.name, p.shape, (0..n).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect())
        })
        .collect();
    let out = std::env::temp_dir().join(format!("distill-fuzz-st-{}", std::process::id()));
    let opts = ExportOptions { overwrite: true, ..Default::default() };
    hf::write_dir(&out, &tensors, &cfg, &Assets::default(), &opts)?;
    put("safetensors/00-tiny-llama.safetensors", &std::fs::read(out.join("model.safetensors"))?)?;
    std::fs::remove_dir_all(&out)?;
    put("gguf/00-tiny-llama.gguf", &tiny_gguf())?;
    Ok(())
}

/// A one-layer Llama GGUF with a byte-level BPE vocabulary, tensors in F32, F16 and Q8_0.
fn tiny_gguf() -> Vec<u8> {
    let mut b = Vec::new();
    let put_str = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    let tokens = ["<unk>", "<s>", "</s>", "a", "b", "ab", "Ġ", "Ġa"];
    let tensors: Vec<(&str, Vec<u64>, u32)> = vec![
        ("token_embd.weight", vec![8, 8], 0),
        ("blk.0.attn_norm.weight", vec![8], 0),
        ("blk.0.attn_q.weight", vec![8, 8], 0),
        ("blk.0.attn_k.weight", vec![8, 4], 0),
        ("blk.0.attn_v.weight", vec![8, 4], 0),
        ("blk.0.attn_output.weight", vec![8, 8], 0),
        ("blk.0.ffn_norm.weight", vec![8], 0),
        ("blk.0.ffn_gate.weight", vec![8, 16], 8), // Q8_0: 4 blocks of 32
        ("blk.0.ffn_up.weight", vec![8, 16], 1),   // F16
        ("blk.0.ffn_down.weight", vec![16, 8], 0),
        ("output_norm.weight", vec![8], 0),
        ("output.weight", vec![8, 8], 0),
    ];
    b.extend(0x4655_4747u32.to_le_bytes());
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    let kv: Vec<(&str, u32, Vec<u8>)> = vec![
        ("general.architecture", 8, str_val("llama")),
        ("llama.block_count", 4, 1u32.to_le_bytes().to_vec()),
        ("llama.context_length", 4, 64u32.to_le_bytes().to_vec()),
        ("llama.embedding_length", 4, 8u32.to_le_bytes().to_vec()),
        ("llama.feed_forward_length", 4, 16u32.to_le_bytes().to_vec()),
        ("llama.attention.head_count", 4, 2u32.to_le_bytes().to_vec()),
        ("llama.attention.head_count_kv", 4, 1u32.to_le_bytes().to_vec()),
        ("llama.rope.freq_base", 6, 10000f32.to_le_bytes().to_vec()),
        ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5f32.to_le_bytes().to_vec()),
        ("tokenizer.ggml.model", 8, str_val("gpt2")),
        ("tokenizer.ggml.pre", 8, str_val("qwen2")),
        ("tokenizer.ggml.tokens", 9, str_array(&tokens)),
        ("tokenizer.ggml.token_type", 9, {
            let mut v = 5u32.to_le_bytes().to_vec();
            v.extend((tokens.len() as u64).to_le_bytes());
            for i in 0..tokens.len() {
                v.extend((if i < 3 { 3i32 } else { 1 }).to_le_bytes());
            }
            v
        }),
        ("tokenizer.ggml.merges", 9, str_array(&["a b", "Ġ a"])),
        ("tokenizer.ggml.bos_token_id", 4, 1u32.to_le_bytes().to_vec()),
        ("tokenizer.ggml.eos_token_id", 4, 2u32.to_le_bytes().to_vec()),
        (
            "tokenizer.chat_template",
            8,
            str_val("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"),
        ),
    ];
    b.extend((kv.len() as u64).to_le_bytes());
    for (k, ty, v) in &kv {
        put_str(&mut b, k);
        b.extend(ty.to_le_bytes());
        b.extend(v);
    }
    let data = |dims: &[u64], ty: u32| -> Vec<u8> {
        let n: u64 = dims.iter().product();
        match ty {
            0 => (0..n).flat_map(|i| ((i % 5) as f32 * 0.1 - 0.2).to_le_bytes()).collect(),
            1 => (0..n).flat_map(|i| half_bits((i % 3) as f32 * 0.25).to_le_bytes()).collect(),
            _ => (0..n / 32)
                .flat_map(|_| {
                    let mut blk = half_bits(0.01).to_le_bytes().to_vec();
                    blk.extend((0..32).map(|i| (i as i8 - 16) as u8));
                    blk
                })
                .collect(),
        }
    };
    let mut offset = 0u64;
    let blobs: Vec<Vec<u8>> = tensors.iter().map(|(_, d, t)| data(d, *t)).collect();
    for ((name, dims, ty), blob) in tensors.iter().zip(&blobs) {
        put_str(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += (blob.len() as u64).div_ceil(32) * 32;
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for blob in &blobs {
        b.extend(blob);
        while b.len() % 32 != 0 {
            b.push(0);
        }
    }
    b
}

fn str_val(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend(s.as_bytes());
    v
}

fn str_array(xs: &[&str]) -> Vec<u8> {
    let mut v = 8u32.to_le_bytes().to_vec();
    v.extend((xs.len() as u64).to_le_bytes());
    for x in xs {
        v.extend(str_val(x));
    }
    v
}

fn half_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}
