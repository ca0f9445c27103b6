//! The linear layer as distill keeps it (the weight transposed, `[in, out]`), and the matmul
//! it runs.

use crate::error::Result;
use crate::spec::{Cursor, Kind, ParamSpec};
use crate::weights::{WeightSink, WeightSource};
use burn::module::{Module, Param, ParamId};
use burn::prelude::*;
use burn::tensor::TensorData;

/// `y = x Wᵀ + b`. HF stores `W` as `[out, in]`; it is kept here transposed, `[in, out]`, so
/// that `x W` reads it contiguously (3× faster for the few-row matmuls of decoding on CPU).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[in, out]`: the transpose of HF's `weight`.
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        at: &mut Cursor,
        device: &B::Device,
    ) -> Result<Self> {
        let spec = at.next(Kind::Weight);
        let (d_out, d_in) = (spec.shape[0], spec.shape[1]);
        let w = src.read(&spec.name, &spec.shape)?;
        let mut t = vec![0f32; w.len()];
        for o in 0..d_out {
            for i in 0..d_in {
                t[i * d_out + o] = w[o * d_in + i];
            }
        }
        Ok(Linear {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(t, [d_in, d_out]),
                device,
            )),
            bias: match at.next_if(Kind::Bias) {
                Some(b) => Some(Param::from_tensor(src.take(&b.name, &[b.shape[0]], device)?)),
                None => None,
            },
        })
    }

    /// From flat tensors in spec order (the weight flattened `[in, out]`, as the trainer's flat
    /// layout holds it), e.g. gathered from shards just before use. The tensors become the
    /// parameters as they are (tracked or not).
    pub(crate) fn from_flat(
        at: &mut Cursor,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        let spec = at.next(Kind::Weight);
        let weight = next(spec).reshape([spec.shape[1], spec.shape[0]]);
        Linear {
            weight: Param::initialized(ParamId::new(), weight),
            bias: at.next_if(Kind::Bias).map(|b| Param::initialized(ParamId::new(), next(b))),
        }
    }

    pub(crate) fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        sink.put(&at.next(Kind::Weight).name, self.weight.val().transpose());
        if let Some(b) = &self.bias {
            sink.put(&at.next(Kind::Bias).name, b.val());
        }
    }

    /// `[.., in]` → `[.., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = matmul_2d(x, self.weight.val());
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }
}

/// `x W` for `x` `[.., in]` and `W` `[in, out]` as one 2-D matmul (burn's `linear` reshapes the
/// weight to 3-D, which copies a transposed view on some backends).
pub fn matmul_2d<B: Backend, const D: usize>(x: Tensor<B, D>, w: Tensor<B, 2>) -> Tensor<B, D> {
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let mut out_dims = dims;
    out_dims[D - 1] = w.dims()[1];
    x.reshape([rows, dims[D - 1]]).matmul(w).reshape(out_dims)
}
