//! Where tensors come from and go to, by Hugging Face name. The model walks its own fields
//! (which carry the HF names) and asks a [`WeightSource`] for each tensor, or hands each tensor to
//! a [`WeightSink`]; checkpoints, GGUF files and random init are sources, exports are sinks.

use std::collections::BTreeSet;

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// Something that yields f32 tensors by HF name, checking the shape.
pub trait WeightSource {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;

    /// Pass over a tensor without reading it (a rank that owns none of it). Sources that
    /// generate tensors in order advance past it; files need do nothing.
    fn skip(&mut self, _name: &str, _shape: &[usize]) {}

    /// Elements `range` of tensor `name` in a flat order: HF's row-major one, or, with
    /// `transposed`, that of the `[in, out]` transpose of a 2-D `[out, in]` weight (the layout
    /// the trainer keeps). Parameter sharding reads each rank's slice this way. The default reads
    /// the whole tensor; a checkpoint reads only the slice.
    fn read_part(
        &mut self,
        name: &str,
        shape: &[usize],
        range: std::ops::Range<usize>,
        transposed: bool,
    ) -> Result<Vec<f32>> {
        let w = self.read(name, shape)?;
        Ok(if transposed {
            let (d_out, d_in) = (shape[0], shape[1]);
            range.map(|e| w[(e % d_out) * d_in + e / d_out]).collect()
        } else {
            w[range].to_vec()
        })
    }
}

impl dyn WeightSource + '_ {
    /// Tensor `name` of `shape` on `device`.
    pub fn take<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        shape: &[usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let data = self.read(name, shape)?;
        Ok(Tensor::from_data(TensorData::new(data, *shape), device))
    }
}

/// Something that receives `(name, shape, f32 data)` in checkpoint order.
pub trait WeightSink {
    fn put_data(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>);
}

impl dyn WeightSink + '_ {
    pub fn put<B: Backend, const D: usize>(&mut self, name: &str, t: Tensor<B, D>) {
        let shape = t.dims().to_vec();
        let data = t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 tensor data");
        self.put_data(name, shape, data);
    }
}

/// Collects exported tensors in order.
#[derive(Default)]
pub struct Collect(pub Vec<NamedTensor>);

/// A tensor on the host by its HF name: `(name, HF shape, f32 data)`.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

impl WeightSink for Collect {
    fn put_data(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        self.0.push((name.to_string(), shape, data));
    }
}

/// A safetensors checkpoint as a source; remembers what was taken so unused tensors can be reported.
pub struct CheckpointSource<'a> {
    pub ckpt: &'a Checkpoint,
    taken: BTreeSet<String>,
    fp8_block: Option<[usize; 2]>,
}

impl<'a> CheckpointSource<'a> {
    pub fn new(ckpt: &'a Checkpoint) -> Self {
        CheckpointSource { ckpt, taken: BTreeSet::new(), fp8_block: None }
    }

    /// FP8 weights with per-block scales (`quantization_config.weight_block_size`) are
    /// dequantised on read.
    pub fn with_fp8_block(mut self, block: Option<[usize; 2]>) -> Self {
        self.fp8_block = block;
        self
    }

    /// Tensors in the checkpoint the model did not use.
    pub fn unused(&self) -> Vec<String> {
        self.ckpt.names().filter(|n| !self.taken.contains(*n)).map(str::to_string).collect()
    }
}

impl WeightSource for CheckpointSource<'_> {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Some(block) = self.fp8_block
            && let Some(v) = self.ckpt.read_fp8_block(name, shape, block)?
        {
            self.taken.insert(name.to_string());
            self.taken.insert(format!("{name}_scale_inv"));
            return Ok(v);
        }
        let v = self.ckpt.read_f32(name, shape)?;
        self.taken.insert(name.to_string());
        Ok(v)
    }

    fn read_part(
        &mut self,
        name: &str,
        shape: &[usize],
        range: std::ops::Range<usize>,
        transposed: bool,
    ) -> Result<Vec<f32>> {
        if let Some(block) = self.fp8_block
            && let Some(whole) = self.ckpt.read_fp8_block(name, shape, block)?
        {
            // FP8 checkpoints are read whole and sliced (scales are per tile).
            self.taken.insert(name.to_string());
            self.taken.insert(format!("{name}_scale_inv"));
            if !transposed {
                return Ok(whole[range].to_vec());
            }
            let (d_out, d_in) = (shape[0], shape[1]);
            return Ok(range.map(|el| whole[(el % d_out) * d_in + el / d_out]).collect());
        }
        let v = self.ckpt.read_part_f32(name, shape, range, transposed)?;
        self.taken.insert(name.to_string());
        Ok(v)
    }
}

/// In-memory tensors (GGUF import, tests) as a source.
#[derive(Default)]
pub struct MapSource {
    pub tensors: std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    pub origin: String,
}

impl WeightSource for MapSource {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (s, _) = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            where_: self.origin.clone(),
        })?;
        if s != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                file: self.origin.clone().into(),
                found: s.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(self.tensors.remove(name).map(|(_, d)| d).unwrap_or_default())
    }
}

/// Deterministic random weights (normal, std 0.02; norms at 1), for tests and benchmarks.
pub struct RandomSource {
    state: u64,
}

impl RandomSource {
    pub fn new(seed: u64) -> Self {
        RandomSource { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }
    }
    fn next(&mut self) -> f64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl WeightSource for RandomSource {
    fn skip(&mut self, name: &str, shape: &[usize]) {
        let _ = self.read(name, shape);
    }

    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        if name.ends_with("norm.weight") {
            return Ok(vec![1.0; n]);
        }
        Ok((0..n)
            .map(|_| {
                // Box-Muller.
                let (u, v) = (self.next().max(1e-12), self.next());
                (0.02 * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
            })
            .collect())
    }
}
