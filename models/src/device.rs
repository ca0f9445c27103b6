//! Backends and devices, always chosen explicitly: never CUDA by accident.
//!
//! On CPU the default is burn's `flex` backend (pure Rust, multithreaded gemm, fused attention);
//! `ndarray` is kept for comparison. docs/backends.md has the measurements behind the choice.

use burn::prelude::Backend;

use crate::error::Error;

pub use burn::backend::Autodiff;
pub use burn::backend::flex::{Flex, FlexDevice};
pub use burn::backend::ndarray::{NdArray, NdArrayDevice};

/// The CPU backend used by default.
pub type Cpu = Flex;
pub type CpuDevice = FlexDevice;

#[cfg(feature = "cuda")]
pub use burn::backend::cuda::{Cuda, CudaDevice};

/// burn's wgpu backend: the same cubecl kernels as CUDA (WGSL here), on any Vulkan device —
/// in CI, Mesa's lavapipe, a Vulkan driver that runs on the CPU (docs/backends.md).
#[cfg(feature = "wgpu")]
pub use burn::backend::wgpu::{Wgpu, WgpuDevice};

/// Which wgpu adapter `wgpu` and `wgpu:cpu` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgpuTarget {
    /// wgpu's choice (a GPU when there is one; `CUBECL_WGPU_DEFAULT_DEVICE` overrides it).
    Default,
    /// The CPU adapter (Mesa's lavapipe).
    Cpu,
}

/// Which device a command runs on, as the user named it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceKind {
    #[default]
    Cpu,
    /// CUDA device by index; only with the `cuda` feature.
    Cuda(usize),
    /// A wgpu (Vulkan) adapter; only with the `wgpu` feature.
    Wgpu(WgpuTarget),
}

impl std::str::FromStr for DeviceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda(0)),
            "wgpu" => Ok(DeviceKind::Wgpu(WgpuTarget::Default)),
            "wgpu:cpu" => Ok(DeviceKind::Wgpu(WgpuTarget::Cpu)),
            _ => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
                Some(i) => Ok(DeviceKind::Cuda(i)),
                None => Err(Error::Device(format!(
                    "unknown device '{s}' (expected cpu, cuda, cuda:N, wgpu or wgpu:cpu)"
                ))),
            },
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceKind::Cpu => f.write_str("cpu"),
            DeviceKind::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceKind::Wgpu(WgpuTarget::Default) => f.write_str("wgpu"),
            DeviceKind::Wgpu(WgpuTarget::Cpu) => f.write_str("wgpu:cpu"),
        }
    }
}

/// In recipes a device is the string the command line takes: `cpu`, `cuda`, `cuda:N`, `wgpu`,
/// `wgpu:cpu`.
impl serde::Serialize for DeviceKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A node's devices, one rank each: `cpu`, `cpu:4` (four CPU peers), `cuda`, `cuda:0,cuda:1,…`,
/// `wgpu` (one rank). All of one kind; CUDA indices distinct.
pub fn parse_devices(s: &str) -> Result<Vec<DeviceKind>, Error> {
    parse_devices_(s).map_err(Error::Device)
}

fn parse_devices_(s: &str) -> Result<Vec<DeviceKind>, String> {
    let s = s.trim();
    if let Some(n) = s.strip_prefix("cpu:") {
        let n: usize =
            n.parse().map_err(|_| format!("'{s}': expected cpu:N with N a number of CPU peers"))?;
        if n == 0 || n > 256 {
            return Err(format!("'{s}': the number of CPU peers must be 1 … 256"));
        }
        return Ok(vec![DeviceKind::Cpu; n]);
    }
    if s == "cuda:all" {
        return Err("'cuda:all' is not supported: name the devices, e.g. cuda:0,cuda:1".into());
    }
    let mut out: Vec<DeviceKind> = Vec::new();
    for part in s.split(',') {
        let d: DeviceKind = part.trim().parse().map_err(|e: Error| match e {
            Error::Device(m) => m,
            other => other.to_string(),
        })?;
        if d == DeviceKind::Cpu && s.contains(',') {
            return Err(format!("'{s}': CPU peers are written cpu:N"));
        }
        if matches!(d, DeviceKind::Wgpu(_)) && s.contains(',') {
            return Err(format!("'{s}': wgpu runs one rank (one adapter) per node"));
        }
        if out.contains(&d) {
            return Err(format!("'{s}': {} appears twice", part.trim()));
        }
        out.push(d);
    }
    if out.is_empty() {
        return Err("no devices given".into());
    }
    Ok(out)
}

impl DeviceKind {
    /// An error if this build cannot run on the device.
    pub fn check_available(self) -> Result<(), Error> {
        match self {
            DeviceKind::Cpu => Ok(()),
            DeviceKind::Cuda(_) if cfg!(feature = "cuda") => Ok(()),
            DeviceKind::Cuda(_) => Err(Error::Device(NO_CUDA.into())),
            DeviceKind::Wgpu(_) if cfg!(feature = "wgpu") => Ok(()),
            DeviceKind::Wgpu(_) => Err(Error::Device(NO_WGPU.into())),
        }
    }
}

/// The wgpu device of a target.
#[cfg(feature = "wgpu")]
pub fn wgpu_device(target: WgpuTarget) -> WgpuDevice {
    match target {
        WgpuTarget::Default => WgpuDevice::DefaultDevice,
        WgpuTarget::Cpu => WgpuDevice::Cpu,
    }
}

pub const NO_CUDA: &str =
    "this distill was built without CUDA; rebuild with `cargo build --release --features cuda`";
pub const NO_WGPU: &str =
    "this distill was built without wgpu; rebuild with `cargo build --release --features wgpu`";

/// A computation generic over the backend, run by [`on_device`] on the backend of a device kind.
/// (A trait, not a closure: the backend is a type parameter chosen at run time.)
pub trait OnDevice {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output
    where
        B::Device: Send;
}

/// Run `f` on the backend of `kind`: CPU (flex) always, CUDA in builds with the `cuda` feature,
/// wgpu with `wgpu`.
/// The choice is made here, in the crate that has the feature, so every crate can build models
/// on any device without a macro of its own.
pub fn on_device<F: OnDevice>(kind: DeviceKind, f: F) -> Result<F::Output, Error> {
    match kind {
        DeviceKind::Cpu => Ok(f.run::<Cpu>(CpuDevice::default())),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda(index) => Ok(f.run::<Cuda>(CudaDevice { index })),
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda(_) => Err(Error::Device(NO_CUDA.into())),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu(target) => Ok(f.run::<Wgpu>(wgpu_device(target))),
        #[cfg(not(feature = "wgpu"))]
        DeviceKind::Wgpu(_) => Err(Error::Device(NO_WGPU.into())),
    }
}
