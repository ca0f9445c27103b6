//! Checkpoints in and out: import → export → import is bit-exact (f32), sharding works, and bad
//! input (truncated file, huge header, wrong shape, missing tensor, bad config) is a clear error.

use std::path::{Path, PathBuf};

use distill_models::Error;
use distill_models::checkpoint::{Checkpoint, SaveDtype};
use distill_models::device::{Cpu, CpuDevice};
use distill_models::hf::{self, Assets, ExportOptions};
use distill_models::weights::{Collect, WeightSink};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn tensors(dir: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let loaded = hf::load_model::<Cpu>(dir, &CpuDevice::default()).unwrap();
    let mut sink = Collect::default();
    loaded.model.export(&mut sink as &mut dyn WeightSink);
    sink.0
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn import_export_import_is_bit_exact_and_shards() {
    for name in ["tiny-llama", "tiny-qwen2", "tiny-qwen3"] {
        let src = fixture(name);
        let dev = CpuDevice::default();
        let loaded = hf::load_model::<Cpu>(&src, &dev).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("export");
        let opts =
            ExportOptions { dtype: SaveDtype::F32, max_shard_bytes: 100_000, ..Default::default() };
        let files =
            hf::export(&loaded.model, &loaded.config, &Assets::read(&src).unwrap(), &out, &opts)
                .unwrap();
        assert!(
            out.join("model.safetensors.index.json").exists(),
            "{name}: 100 kB shards should give an index"
        );
        assert!(
            files.iter().filter(|f| f.extension().is_some_and(|e| e == "safetensors")).count() >= 3
        );
        assert!(out.join("generation_config.json").exists() && out.join("config.json").exists());

        let a = tensors(&src);
        let b = tensors(&out);
        assert_eq!(a.len(), b.len());
        for ((na, sa, da), (nb, sb, db)) in a.iter().zip(&b) {
            assert_eq!((na, sa), (nb, sb));
            assert!(
                da.iter().zip(db).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: {na} changed"
            );
        }
        // Every tensor of the original checkpoint is in the export (tied models write no lm_head).
        let orig = Checkpoint::open(&src).unwrap();
        let new = Checkpoint::open(&out).unwrap();
        assert_eq!(orig.names().collect::<Vec<_>>(), new.names().collect::<Vec<_>>(), "{name}");
        // Exporting over an existing directory is refused unless asked.
        assert!(
            hf::export(&loaded.model, &loaded.config, &Assets::default(), &out, &opts).is_err()
        );
        let over = ExportOptions { overwrite: true, ..opts };
        hf::export(&loaded.model, &loaded.config, &Assets::default(), &out, &over).unwrap();
        // For scripts/reference/tiny_models.py check-export (run by hand; results in docs/models.md).
        if let Some(keep) = std::env::var_os("DISTILL_KEEP_EXPORTS") {
            for (dtype, tag) in [(SaveDtype::F32, "f32"), (SaveDtype::Bf16, "bf16")] {
                let dst = Path::new(&keep).join(format!("{name}-{tag}"));
                let o = ExportOptions {
                    dtype,
                    overwrite: true,
                    max_shard_bytes: 100_000,
                    ..Default::default()
                };
                hf::export(&loaded.model, &loaded.config, &Assets::read(&src).unwrap(), &dst, &o)
                    .unwrap();
            }
        }
        // No temp directories are left beside the export.
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() != "export")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn bf16_export_rounds_to_bf16() {
    let src = fixture("tiny-qwen3");
    let loaded = hf::load_model::<Cpu>(&src, &CpuDevice::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bf16");
    hf::export(&loaded.model, &loaded.config, &Assets::default(), &out, &ExportOptions::default())
        .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    for ((n, _, a), (_, _, b)) in tensors(&src).iter().zip(tensors(&out).iter()) {
        for (x, y) in a.iter().zip(b) {
            assert_eq!(half::bf16::from_f32(*x).to_f32().to_bits(), y.to_bits(), "{n}");
        }
    }
}

fn load_err(dir: &Path) -> String {
    match hf::load_model::<Cpu>(dir, &CpuDevice::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_truncated_safetensors_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), tmp.path());
    let f = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");
}

#[test]
fn a_header_claiming_a_terabyte_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), tmp.path());
    let f = tmp.path().join("model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&f, &bytes).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model.safetensors") && e.contains("header"), "{e}");
}

#[test]
fn a_wrong_shape_names_the_tensor_and_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), tmp.path());
    let cfg_path = tmp.path().join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"intermediate_size\": 112", "\"intermediate_size\": 128");
    std::fs::write(&cfg_path, cfg).unwrap();
    let e = load_err(tmp.path());
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("[112, 64]")
            && e.contains("[128, 64]"),
        "{e}"
    );
}

#[test]
fn a_missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-qwen2"), tmp.path());
    // Untie the embeddings in the config: the checkpoint has no lm_head.
    let cfg_path = tmp.path().join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false");
    std::fs::write(&cfg_path, cfg).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("lm_head.weight") && e.contains("missing"), "{e}");
}

#[test]
fn a_config_missing_a_required_key_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-qwen3"), tmp.path());
    let cfg_path = tmp.path().join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap().replace("\"num_hidden_layers\": 2,", "");
    std::fs::write(&cfg_path, cfg).unwrap();
    let e = load_err(tmp.path());
    assert!(
        e.contains("config.json") && e.contains("missing required key `num_hidden_layers`"),
        "{e}"
    );
}

#[test]
fn unused_tensors_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), tmp.path());
    let cfg_path = tmp.path().join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"tie_word_embeddings\": false", "\"tie_word_embeddings\": true");
    std::fs::write(&cfg_path, cfg).unwrap();
    let loaded = hf::load_model::<Cpu>(tmp.path(), &CpuDevice::default()).unwrap();
    assert_eq!(loaded.unused, vec!["lm_head.weight".to_string()]);
}

#[test]
fn errors_are_typed() {
    let e = Checkpoint::open(Path::new("/nonexistent/dir")).err().unwrap();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

/// Parameter sharding reads each rank's slice without converting the rest: `read_part_f32`
/// equals slicing the whole tensor (transposed to `[in, out]` for weights), in f32 and bf16.
#[test]
fn a_slice_reads_as_the_whole_tensor_sliced() {
    use distill_models::checkpoint::write_sharded;
    let d = tempfile::tempdir().unwrap();
    let (out, inn) = (3usize, 5usize);
    let w: Vec<f32> = (0..out * inn).map(|i| i as f32 * 0.25 - 1.0).collect();
    for dtype in [SaveDtype::F32, SaveDtype::Bf16] {
        let dir = d.path().join(format!("{dtype:?}"));
        std::fs::create_dir_all(&dir).unwrap();
        let t = vec![("w".to_string(), vec![out, inn], w.clone())];
        write_sharded(&dir, &t, dtype, u64::MAX, &Default::default()).unwrap();
        let ck = Checkpoint::open(&dir).unwrap();
        let whole = ck.read_f32("w", &[out, inn]).unwrap();
        let transposed: Vec<f32> =
            (0..out * inn).map(|e| whole[(e % out) * inn + e / out]).collect();
        for r in [0..15, 0..1, 4..11, 14..15, 7..7] {
            assert_eq!(
                ck.read_part_f32("w", &[out, inn], r.clone(), false).unwrap(),
                whole[r.clone()]
            );
            assert_eq!(ck.read_part_f32("w", &[out, inn], r.clone(), true).unwrap(), transposed[r]);
        }
        let e = ck.read_part_f32("w", &[out, inn], 10..16, false).unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
        assert!(ck.read_part_f32("w", &[inn, out], 0..1, false).is_err());
    }
}
