//! Backends and devices, always chosen explicitly: never CUDA by accident.
//!
//! On CPU the default is burn's `flex` backend (pure Rust, multithreaded gemm, fused attention);
//! `ndarray` is kept for comparison. docs/backends.md has the measurements behind the choice.

pub use burn::backend::Autodiff;
pub use burn::backend::flex::{Flex, FlexDevice};
pub use burn::backend::ndarray::{NdArray, NdArrayDevice};

/// The CPU backend used by default.
pub type Cpu = Flex;
pub type CpuDevice = FlexDevice;

#[cfg(feature = "cuda")]
pub use burn::backend::cuda::{Cuda, CudaDevice};

/// Which device a command runs on, as the user named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    /// CUDA device by index; only with the `cuda` feature.
    Cuda(usize),
}

impl std::str::FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda(0)),
            _ => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
                Some(i) => Ok(DeviceKind::Cuda(i)),
                None => Err(format!("unknown device '{s}' (expected cpu, cuda or cuda:N)")),
            },
        }
    }
}

impl DeviceKind {
    /// An error if this build cannot run on the device.
    pub fn check_available(self) -> Result<(), String> {
        match self {
            DeviceKind::Cpu => Ok(()),
            DeviceKind::Cuda(_) if cfg!(feature = "cuda") => Ok(()),
            DeviceKind::Cuda(_) => Err("this distill was built without CUDA; rebuild with `--features cuda`".into()),
        }
    }
}
