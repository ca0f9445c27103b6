//! RMSNorm, as HF's Llama, Qwen and DeepSeek models compute it.

use crate::error::Result;
use crate::spec::{Cursor, Kind, ParamSpec};
use crate::weights::{WeightSink, WeightSource};
use burn::module::{Module, Param, ParamId};
use burn::prelude::*;
use burn::tensor::DType;

/// RMSNorm as HF computes it: `weight * x / sqrt(mean(x²) + eps)`, in f32.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        spec: &crate::spec::ParamSpec,
        eps: f64,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(RmsNorm {
            weight: Param::from_tensor(src.take(&spec.name, &[spec.shape[0]], device)?),
            eps,
        })
    }

    pub(crate) fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        sink.put(&at.next(Kind::Norm).name, self.weight.val());
    }

    /// See [`Linear::from_flat`].
    pub fn from_flat(
        at: &mut Cursor,
        eps: f64,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        let spec = at.next(Kind::Norm);
        RmsNorm { weight: Param::initialized(ParamId::new(), next(spec)), eps }
    }

    /// `[.., dim]` → `[.., dim]`, computed on a 2-D view (contiguous element-wise ops). Under bf16
    /// compute the normalisation runs in f32 and its result is cast back before the weight, as
    /// transformers does.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let d = dims[D - 1];
        let dtype = x.dtype();
        let x = x.reshape([dims.iter().product::<usize>() / d, d]).cast(DType::F32); // no-op in f32
        let var = x.clone().square().mean_dim(1);
        let x = (x * (var + self.eps).sqrt().recip()).cast(dtype);
        (x * self.weight.val().unsqueeze_dim(0)).reshape(dims)
    }
}
