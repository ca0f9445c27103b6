//! GGUF: dequantization against gguf-py (llama.cpp's Python package), the Q/K unpermutation,
//! and clear errors for unsupported types and truncated files.

use std::path::Path;

use distill_models::gguf::GgufFile;
use distill_models::gguf::dequant::{self, dequantize};
use distill_models::gguf::import::{hf_name, unpermute};
use safetensors::SafeTensors;

const TYPES: &[(&str, u32)] = &[
    ("F32", dequant::F32),
    ("F16", dequant::F16),
    ("BF16", dequant::BF16),
    ("Q4_0", dequant::Q4_0),
    ("Q4_1", dequant::Q4_1),
    ("Q5_0", dequant::Q5_0),
    ("Q5_1", dequant::Q5_1),
    ("Q8_0", dequant::Q8_0),
    ("Q4_K", dequant::Q4_K),
    ("Q5_K", dequant::Q5_K),
    ("Q6_K", dequant::Q6_K),
];

#[test]
fn dequantization_matches_gguf_py() {
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf-dequant.safetensors"),
    )
    .unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (name, ty) in TYPES {
        let raw = st.tensor(&format!("bytes_{name}")).unwrap();
        let want: Vec<f32> = st
            .tensor(&format!("values_{name}"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let got = dequantize(*ty, raw.data(), want.len()).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{name}[{i}]: {g} vs gguf-py {w}");
        }
    }
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    // llama.cpp: w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(w.shape)
    let (n_head, hd, cols) = (3, 8, 5);
    let rows = n_head * hd;
    let w: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
    let mut permuted = vec![0f32; w.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for i in 0..hd / 2 {
                let src = h * hd + s * (hd / 2) + i;
                let dst = h * hd + i * 2 + s;
                permuted[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    assert_eq!(unpermute(&permuted, &[rows, cols], n_head), w);
}

#[test]
fn tensor_names_map_to_hugging_face() {
    assert_eq!(
        hf_name("blk.7.attn_q.weight").as_deref(),
        Some("model.layers.7.self_attn.q_proj.weight")
    );
    assert_eq!(
        hf_name("blk.0.attn_k.bias").as_deref(),
        Some("model.layers.0.self_attn.k_proj.bias")
    );
    assert_eq!(
        hf_name("blk.3.attn_q_norm.weight").as_deref(),
        Some("model.layers.3.self_attn.q_norm.weight")
    );
    assert_eq!(hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
    assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
    assert_eq!(hf_name("rope_freqs.weight"), None);
}

/// A minimal GGUF writer for bad-input tests.
fn gguf(tensors: &[(&str, &[u64], u32, Vec<u8>)]) -> Vec<u8> {
    gguf_with(&[], tensors)
}

/// The same, with `llama.*` u64 metadata values.
fn gguf_with(meta: &[(&str, u64)], tensors: &[(&str, &[u64], u32, Vec<u8>)]) -> Vec<u8> {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    b.extend(0x4655_4747u32.to_le_bytes());
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((1 + meta.len() as u64).to_le_bytes());
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "llama");
    for (k, v) in meta {
        s(&mut b, &format!("llama.{k}"));
        b.extend(10u32.to_le_bytes()); // UINT64
        b.extend(v.to_le_bytes());
    }
    let mut offset = 0u64;
    for (name, dims, ty, data) in tensors {
        s(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for (_, _, _, data) in tensors {
        let start = b.len();
        b.extend(data);
        while (b.len() - start) % 32 != 0 {
            b.push(0);
        }
    }
    b
}

#[test]
fn an_unsupported_tensor_type_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("q2k.gguf");
    std::fs::write(&p, gguf(&[("blk.0.attn_q.weight", &[256, 1], 10, vec![0; 84])])).unwrap();
    let e = GgufFile::open(&p).err().unwrap().to_string();
    assert!(
        e.contains("q2k.gguf")
            && e.contains("blk.0.attn_q.weight")
            && e.contains("Q2_K")
            && e.contains("not supported"),
        "{e}"
    );
}

#[test]
fn a_truncated_gguf_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("cut.gguf");
    let full = gguf(&[("token_embd.weight", &[32, 4], dequant::Q8_0, vec![0; 136])]);
    std::fs::write(&p, &full[..full.len() - 50]).unwrap();
    let e = GgufFile::open(&p).err().unwrap().to_string();
    assert!(
        e.contains("cut.gguf") && e.contains("token_embd.weight") && e.contains("truncated"),
        "{e}"
    );
    std::fs::write(&p, &full[..30]).unwrap();
    let e = GgufFile::open(&p).err().unwrap().to_string();
    assert!(e.contains("cut.gguf") && e.contains("past the end"), "{e}");
    std::fs::write(&p, b"not a gguf file at all").unwrap();
    assert!(GgufFile::open(&p).err().unwrap().to_string().contains("bad magic"));
}

#[test]
fn a_lying_array_count_does_not_allocate() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("lie.gguf");
    let mut b = Vec::new();
    b.extend(0x4655_4747u32.to_le_bytes());
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    b.extend(b"toks");
    b.extend(9u32.to_le_bytes()); // array
    b.extend(8u32.to_le_bytes()); // of strings
    b.extend(u64::MAX.to_le_bytes()); // claimed count
    std::fs::write(&p, &b).unwrap();
    let e = GgufFile::open(&p).err().unwrap().to_string();
    assert!(e.contains("cannot fit"), "{e}");
}

/// Hostile head counts and layer counts are refused with the key named, before any arithmetic on
/// them (a head count of 0 used to divide by zero; a huge block count would size the parameter
/// spec).
#[test]
fn hostile_dimensions_in_gguf_metadata_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        ("embedding_length", 64u64),
        ("feed_forward_length", 128),
        ("block_count", 1),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 2),
        ("vocab_size", 8),
    ];
    let tensors = [("token_embd.weight", &[64u64, 8][..], dequant::F32, vec![0u8; 64 * 8 * 4])];
    let cases: [(&str, u64, &str); 4] = [
        ("attention.head_count", 0, "attention.head_count` is 0"),
        ("attention.head_count_kv", 0, "must be positive"),
        ("attention.head_count_kv", 3, "multiple of num_key_value_heads"),
        ("block_count", 1 << 40, "the file holds only 1 tensors"),
    ];
    for (key, value, want) in cases {
        let meta: Vec<(&str, u64)> =
            base.iter().map(|&(k, v)| (k, if k == key { value } else { v })).collect();
        let p = tmp.path().join(format!("{}-{value}.gguf", key.replace('.', "_")));
        std::fs::write(&p, gguf_with(&meta, &tensors)).unwrap();
        let out = tmp.path().join(format!("out-{key}-{value}"));
        let e = distill_models::gguf::import::import(&p, &out, &Default::default())
            .err()
            .unwrap_or_else(|| panic!("{key} = {value} was accepted"))
            .to_string();
        assert!(e.contains(want), "{key} = {value}: {e}");
    }
}
