//! Hugging Face safetensors checkpoints: single-file or sharded (`model.safetensors.index.json`),
//! memory-mapped, treated as untrusted input; and sharded writing with an index.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::Value;

use crate::error::{Error, IoContext, Result};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One memory-mapped safetensors file.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// Where one tensor lives.
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the shard file.
    range: std::ops::Range<usize>,
}

/// All tensors of a checkpoint directory, by name.
pub struct Checkpoint {
    shards: Vec<Shard>,
    entries: BTreeMap<String, Entry>,
}

impl Checkpoint {
    /// Open `dir/model.safetensors`, or every shard named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index = dir.join(INDEX_FILE);
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).at(&index)?;
            let v: Value = serde_json::from_str(&text).map_err(|e| Error::Safetensors {
                path: index.clone(),
                msg: format!("index is not JSON: {e}"),
            })?;
            let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| {
                Error::Safetensors {
                    path: index.clone(),
                    msg: "index has no `weight_map` object".into(),
                }
            })?;
            let mut files: Vec<String> =
                map.values().filter_map(Value::as_str).map(str::to_string).collect();
            files.sort();
            files.dedup();
            for f in &files {
                if f.contains('/') || f.contains('\\') || f.contains("..") {
                    return Err(Error::Safetensors {
                        path: index.clone(),
                        msg: format!("shard name '{f}' is not a plain file name"),
                    });
                }
            }
            files.into_iter().map(|f| dir.join(f)).collect()
        } else if dir.join(SINGLE_FILE).exists() {
            vec![dir.join(SINGLE_FILE)]
        } else {
            let e = std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors or model.safetensors.index.json",
            );
            return Err(Error::io(dir.join(SINGLE_FILE), e));
        };
        Self::open_files(&files)
    }

    pub fn open_files(files: &[PathBuf]) -> Result<Checkpoint> {
        let mut shards = Vec::new();
        let mut entries = BTreeMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = File::open(path).at(path)?;
            // SAFETY: read-only map; as with any memory-mapped loader, truncating the file while
            // it is mapped would fault.
            let mmap = unsafe { Mmap::map(&file) }.at(path)?;
            // Validates the header size, JSON, dtypes, and that every offset lies inside the file.
            let (header_len, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| {
                Error::Safetensors { path: path.clone(), msg: describe(&e, mmap.len()) }
            })?;
            let base = 8 + header_len;
            for (name, info) in meta.tensors() {
                let (a, b) = info.data_offsets;
                let entry = Entry {
                    shard: i,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: base + a..base + b,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(Error::Safetensors {
                        path: path.clone(),
                        msg: format!("tensor '{name}' appears in two shards"),
                    });
                }
            }
            shards.push(Shard { path: path.clone(), mmap });
        }
        Ok(Checkpoint { shards, entries })
    }

    /// "searched dir/model.safetensors" (or "dir/a, dir/b and 3 more"), for errors.
    fn searched(&self) -> String {
        let shown: Vec<String> =
            self.shards.iter().take(2).map(|s| s.path.display().to_string()).collect();
        let more = self.shards.len().saturating_sub(2);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        format!("searched {}{more}", shown.join(", "))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Tensor `name` as f32, checking its shape against `expected`.
    /// Elements `range` of tensor `name` as f32, converting only those: in HF's row-major order,
    /// or with `transposed` in that of the `[in, out]` transpose of a 2-D `[out, in]` tensor
    /// (see [`crate::weights::WeightSource::read_part`]).
    pub fn read_part_f32(
        &self,
        name: &str,
        expected: &[usize],
        range: std::ops::Range<usize>,
        transposed: bool,
    ) -> Result<Vec<f32>> {
        let (e, shard) = self.entry(name, expected)?;
        let numel: usize = expected.iter().product();
        let bad_dtype = || Error::Dtype {
            name: name.to_string(),
            file: shard.path.clone(),
            dtype: format!("{:?}", e.dtype),
        };
        let size = match e.dtype {
            Dtype::F32 => 4,
            Dtype::BF16 | Dtype::F16 => 2,
            _ => return Err(bad_dtype()),
        };
        if range.end > numel || (transposed && expected.len() != 2) {
            return Err(Error::Invalid(format!(
                "tensor '{name}': elements {range:?} of {expected:?}{} are out of range",
                if transposed { " (transposed)" } else { "" }
            )));
        }
        let bytes = &shard.mmap[e.range.clone()];
        if !transposed {
            return to_f32(e.dtype, &bytes[range.start * size..range.end * size])
                .ok_or_else(bad_dtype);
        }
        // Element el of the [in, out] layout is HF's [el % out, el / out].
        let (d_out, d_in) = (expected[0], expected[1]);
        let at = |el: usize| ((el % d_out) * d_in + el / d_out) * size;
        Ok(match e.dtype {
            Dtype::F32 => range
                .map(|el| f32::from_le_bytes(bytes[at(el)..at(el) + 4].try_into().unwrap()))
                .collect(),
            Dtype::BF16 => range
                .map(|el| half::bf16::from_le_bytes([bytes[at(el)], bytes[at(el) + 1]]).to_f32())
                .collect(),
            _ => range
                .map(|el| half::f16::from_le_bytes([bytes[at(el)], bytes[at(el) + 1]]).to_f32())
                .collect(),
        })
    }

    /// Tensor `name`'s entry and shard, checked to have the `expected` shape.
    fn entry(&self, name: &str, expected: &[usize]) -> Result<(&Entry, &Shard)> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            where_: self.searched(),
        })?;
        let shard = &self.shards[e.shard];
        if e.shape != expected {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                file: shard.path.clone(),
                found: e.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        Ok((e, shard))
    }

    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let (e, shard) = self.entry(name, expected)?;
        to_f32(e.dtype, &shard.mmap[e.range.clone()]).ok_or_else(|| Error::Dtype {
            name: name.to_string(),
            file: shard.path.clone(),
            dtype: format!("{:?}", e.dtype),
        })
    }
}

fn describe(e: &safetensors::SafeTensorError, len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooLarge => {
            "the header length field is larger than 100 MB (corrupt or not safetensors)".into()
        }
        E::HeaderTooSmall => format!("the file is only {len} bytes, too small for a header"),
        E::InvalidHeaderLength => format!(
            "the header length field points past the end of the {len}-byte file (truncated?)"
        ),
        E::MetadataIncompleteBuffer => format!(
            "the tensors described in the header need more bytes than the {len}-byte file has (truncated?)"
        ),
        other => other.to_string(),
    }
}

/// An FP8 E4M3 byte as f32 (1 sign, 4 exponent bits biased by 7, 3 mantissa bits; no
/// infinities; `S.1111.111` is NaN).
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let (e, m) = ((b >> 3) & 0xF, b & 0x7);
    if e == 0xF && m == 0x7 {
        return f32::NAN;
    }
    let mag = if e == 0 {
        (m as f32 / 8.0) * 2f32.powi(-6)
    } else {
        (1.0 + m as f32 / 8.0) * 2f32.powi(e as i32 - 7)
    };
    sign * mag
}

impl Checkpoint {
    /// A block-quantised FP8 weight (DeepSeek-V3's checkpoints) dequantised: `name` holds
    /// `float8_e4m3fn` values and `{name}_scale_inv` one f32 scale per `block` = `[rows, cols]`
    /// tile, `W[i, j] = fp8[i, j] · scale_inv[i / rows, j / cols]`. `None` when `name` is not FP8.
    pub fn read_fp8_block(
        &self,
        name: &str,
        expected: &[usize],
        block: [usize; 2],
    ) -> Result<Option<Vec<f32>>> {
        let (e, shard) = self.entry(name, expected)?;
        if e.dtype != Dtype::F8_E4M3 {
            return Ok(None);
        }
        let scale_name = format!("{name}_scale_inv");
        let [rows, cols] = match expected {
            [r, c] => [*r, *c],
            _ => {
                return Err(Error::Invalid(format!(
                    "tensor '{name}' is FP8 but not 2-D ({expected:?})"
                )));
            }
        };
        let (br, bc) = (block[0].max(1), block[1].max(1));
        let grid = [rows.div_ceil(br), cols.div_ceil(bc)];
        let scale = self.read_f32(&scale_name, &grid).map_err(|err| match err {
            Error::MissingTensor { where_, .. } => Error::MissingTensor {
                name: format!("{scale_name} (the scales of FP8 weight {name})"),
                where_,
            },
            other => other,
        })?;
        let bytes = &shard.mmap[e.range.clone()];
        let mut out = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            let srow = &scale[(i / br) * grid[1]..(i / br + 1) * grid[1]];
            out.extend(
                bytes[i * cols..(i + 1) * cols]
                    .iter()
                    .enumerate()
                    .map(|(j, &b)| e4m3_to_f32(b) * srow[j / bc]),
            );
        }
        Ok(Some(out))
    }
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => {
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => {
            bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        _ => return None,
    })
}

/// The on-disk dtype of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    Bf16,
}

impl SaveDtype {
    pub fn hf_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::Bf16 => "bfloat16",
        }
    }
    fn st(self) -> Dtype {
        match self {
            SaveDtype::F32 => Dtype::F32,
            SaveDtype::Bf16 => Dtype::BF16,
        }
    }
    fn bytes(self, v: &[f32]) -> Vec<u8> {
        match self {
            SaveDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            SaveDtype::Bf16 => {
                v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()
            }
        }
    }
}

/// Write `tensors` (name, shape, f32 data) into `dir` as safetensors shards of at most
/// `max_shard_bytes` each (one tensor never spans shards), plus the index when there is more
/// than one shard. Returns the files written.
pub fn write_sharded(
    dir: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: SaveDtype,
    max_shard_bytes: u64,
    metadata: &HashMap<String, String>,
) -> Result<Vec<PathBuf>> {
    let elem = match dtype {
        SaveDtype::F32 => 4,
        SaveDtype::Bf16 => 2,
    };
    let mut groups: Vec<Vec<usize>> = vec![vec![]];
    let mut size = 0u64;
    for (i, (_, _, data)) in tensors.iter().enumerate() {
        let b = (data.len() * elem) as u64;
        if size > 0 && size + b > max_shard_bytes {
            groups.push(vec![]);
            size = 0;
        }
        groups.last_mut().unwrap().push(i);
        size += b;
    }
    let n = groups.len();
    let mut files = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for (g, idxs) in groups.iter().enumerate() {
        let name = if n == 1 {
            SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", g + 1)
        };
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = idxs
            .iter()
            .map(|&i| (tensors[i].0.clone(), tensors[i].1.clone(), dtype.bytes(&tensors[i].2)))
            .collect();
        let views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(nm, shape, b)| {
                (
                    nm.clone(),
                    TensorView::new(dtype.st(), shape.clone(), b).expect("consistent view"),
                )
            })
            .collect();
        for (nm, _, b) in &bytes {
            weight_map.insert(nm.clone(), Value::String(name.clone()));
            total += b.len() as u64;
        }
        let path = dir.join(&name);
        safetensors::serialize_to_file(views, Some(metadata.clone()), &path)
            .map_err(|e| Error::Safetensors { path: path.clone(), msg: e.to_string() })?;
        files.push(path);
    }
    if n > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let path = dir.join(INDEX_FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(&index).expect("json")).at(&path)?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod fp8_tests {
    use super::e4m3_to_f32;

    /// The E4M3 values the OCP FP8 spec tabulates: 1, the largest normal 448, the smallest
    /// subnormal 2⁻⁹, the smallest normal 2⁻⁶, signs, and NaN.
    #[test]
    fn e4m3_decodes_as_the_spec_says() {
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0xFE), -448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert!(e4m3_to_f32(0x7F).is_nan() && e4m3_to_f32(0xFF).is_nan());
        assert_eq!(e4m3_to_f32(0x3C), 1.5);
    }
}
