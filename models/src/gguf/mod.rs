//! GGUF (llama.cpp) files: the container, dequantization, and import into the HF layout.
//!
//! The file is untrusted input: every length, count, dimension and offset is checked against the
//! file size before it is used, and errors name the file and the field.

pub mod dequant;
pub mod import;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, IoContext, Result};

const MAGIC: u32 = 0x4655_4747; // "GGUF"

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array, stored by element type: a million-entry `u8` array takes a megabyte, not
/// the 32 MB a `Vec<Value>` would (issue 11: memory stays proportional to the file).
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
    Array(Vec<Array>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::Str(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements of a string array.
    pub fn as_strs(&self) -> Option<&[String]> {
        match self {
            Array::Str(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of an integer array, as i64 (`None` for other element types, or a `u64`
    /// beyond i64).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        fn all<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            Array::U8(v) => all(v, |x| Some(x as i64)),
            Array::I8(v) => all(v, |x| Some(x as i64)),
            Array::U16(v) => all(v, |x| Some(x as i64)),
            Array::I16(v) => all(v, |x| Some(x as i64)),
            Array::U32(v) => all(v, |x| Some(x as i64)),
            Array::I32(v) => all(v, |x| Some(x as i64)),
            Array::U64(v) => all(v, |x| i64::try_from(x).ok()),
            Array::I64(v) => all(v, Some),
            _ => None,
        }
    }
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().map(|v| v as i64),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` is the innermost (row length). The HF shape is the reverse.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Byte range in the file.
    pub range: std::ops::Range<usize>,
}

impl TensorInfo {
    /// Shape in HF / row-major order.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    mmap: Mmap,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            msg: format!("{} (at byte {})", msg.into(), self.pos),
        }
    }
    fn bytes(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let end = (self.pos as u64).checked_add(n).filter(|&e| e <= self.b.len() as u64);
        let end = end.ok_or_else(|| {
            self.err(format!(
                "{what} of {n} bytes runs past the end of the {}-byte file",
                self.b.len()
            ))
        })?;
        let s = &self.b[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(8, what)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let b = self.bytes(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        let mut fixed = |n: u64| -> Result<&'a [u8]> { self.bytes(n, key) };
        Ok(match ty {
            0 => Value::U8(fixed(1)?[0]),
            1 => Value::I8(fixed(1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(fixed(2)?.try_into().unwrap())),
            3 => Value::I16(i16::from_le_bytes(fixed(2)?.try_into().unwrap())),
            4 => Value::U32(u32::from_le_bytes(fixed(4)?.try_into().unwrap())),
            5 => Value::I32(i32::from_le_bytes(fixed(4)?.try_into().unwrap())),
            6 => Value::F32(f32::from_le_bytes(fixed(4)?.try_into().unwrap())),
            7 => Value::Bool(fixed(1)?[0] != 0),
            8 => Value::Str(self.string(key)?),
            9 => Value::Array(self.array(key, depth)?),
            10 => Value::U64(u64::from_le_bytes(fixed(8)?.try_into().unwrap())),
            11 => Value::I64(i64::from_le_bytes(fixed(8)?.try_into().unwrap())),
            12 => Value::F64(f64::from_le_bytes(fixed(8)?.try_into().unwrap())),
            other => return Err(self.err(format!("metadata '{key}': unknown value type {other}"))),
        })
    }
}

impl<'a> Reader<'a> {
    /// An array value: element type, count, elements. Each element takes at least one byte of
    /// the file, so a count beyond the bytes left is refused before anything is allocated, and
    /// the elements are stored by type (see [`Array`]).
    fn array(&mut self, key: &str, depth: u32) -> Result<Array> {
        if depth > 2 {
            return Err(self.err(format!("metadata '{key}': arrays nested too deep")));
        }
        let inner = self.u32(key)?;
        let n = self.u64(key)?;
        let width: u64 = match inner {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => 8,  // at least the length prefix
            9 => 12, // at least type and count
            other => {
                return Err(
                    self.err(format!("metadata '{key}': unknown array element type {other}"))
                );
            }
        };
        let left = (self.b.len() - self.pos) as u64;
        if n.checked_mul(width).is_none_or(|need| need > left) {
            return Err(self.err(format!(
                "metadata '{key}': array of {n} elements cannot fit in the {left} bytes left"
            )));
        }
        let n = n as usize;
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let w = std::mem::size_of::<$t>();
                let raw = self.bytes((n * w) as u64, key)?;
                Array::$variant(
                    raw.chunks_exact(w)
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                )
            }};
        }
        Ok(match inner {
            0 => Array::U8(self.bytes(n as u64, key)?.to_vec()),
            1 => fixed!(I8, i8),
            2 => fixed!(U16, u16),
            3 => fixed!(I16, i16),
            4 => fixed!(U32, u32),
            5 => fixed!(I32, i32),
            6 => fixed!(F32, f32),
            7 => Array::Bool(self.bytes(n as u64, key)?.iter().map(|&b| b != 0).collect()),
            8 => Array::Str((0..n).map(|_| self.string(key)).collect::<Result<_>>()?),
            10 => fixed!(U64, u64),
            11 => fixed!(I64, i64),
            12 => fixed!(F64, f64),
            _ => Array::Array((0..n).map(|_| self.array(key, depth + 1)).collect::<Result<_>>()?),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).at(path)?;
        // SAFETY: read-only map of a file we do not modify.
        let mmap = unsafe { Mmap::map(&file) }.at(path)?;
        let mut r = Reader { b: &mmap, pos: 0, path };
        if r.u32("magic")? != MAGIC {
            return Err(Error::Gguf {
                path: path.to_path_buf(),
                msg: "not a GGUF file (bad magic)".into(),
            });
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::Gguf {
                path: path.to_path_buf(),
                msg: format!("GGUF version {version} is not supported (2 and 3 are)"),
            });
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        if n_tensors > 1 << 20 || n_kv > 1 << 20 {
            return Err(
                r.err(format!("{n_tensors} tensors / {n_kv} metadata entries is not plausible"))
            );
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32(&key)?;
            let v = r.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(r.err(format!("tensor '{name}' has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| r.u64(&name)).collect::<Result<Vec<_>>>()?;
            let ggml_type = r.u32(&name)?;
            let offset = r.u64(&name)?;
            infos.push((name, dims, ggml_type, offset));
        }
        let align =
            metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(32).max(1) as usize;
        let data_start = r.pos.div_ceil(align) * align;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, ggml_type, offset) in infos {
            let elements = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let bytes = elements.and_then(|n| dequant::byte_size(ggml_type, n));
            let start = (data_start as u64).checked_add(offset);
            let range = match (bytes, start) {
                (Some(Ok(b)), Some(s))
                    if s.checked_add(b).is_some_and(|e| e <= mmap.len() as u64) =>
                {
                    s as usize..(s + b) as usize
                }
                (Some(Err(msg)), _) => {
                    return Err(Error::Gguf {
                        path: path.to_path_buf(),
                        msg: format!("tensor '{name}': {msg}"),
                    });
                }
                _ => {
                    return Err(Error::Gguf {
                        path: path.to_path_buf(),
                        msg: format!(
                            "tensor '{name}' ({dims:?}, type {ggml_type}) lies outside the {}-byte file (truncated?)",
                            mmap.len()
                        ),
                    });
                }
            };
            tensors.push(TensorInfo { name, dims, ggml_type, range });
        }
        Ok(GgufFile { path: path.to_path_buf(), version, metadata, tensors, mmap })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's values as f32, in row-major HF order.
    pub fn read_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        dequant::dequantize(t.ggml_type, &self.mmap[t.range.clone()], t.elements() as usize)
            .map_err(|msg| Error::Gguf {
                path: self.path.clone(),
                msg: format!("tensor '{}': {msg}", t.name),
            })
    }
}
