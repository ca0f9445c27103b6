//! Choosing the backend from `--device`: CPU (flex) always, CUDA only in `cuda` builds, wgpu only
//! in `wgpu` builds. Never implicit.

/// `dispatch!(kind, |B, device| expr)` runs `expr` with `B` bound to the backend type and
/// `device` to its device for the `DeviceKind` `kind`.
macro_rules! dispatch {
    ($kind:expr, |$b:ident, $dev:ident| $body:expr) => {{
        use distill_models::device::DeviceKind;
        match $kind {
            DeviceKind::Cpu => {
                type $b = distill_models::device::Cpu;
                let $dev = distill_models::device::CpuDevice::default();
                $body
            }
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda(index) => {
                type $b = distill_models::device::Cuda;
                let $dev = distill_models::device::CudaDevice { index };
                $body
            }
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda(_) => anyhow::bail!(distill_models::device::NO_CUDA),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu(target) => {
                type $b = distill_models::device::Wgpu;
                let $dev = distill_models::device::wgpu_device(target);
                $body
            }
            #[cfg(not(feature = "wgpu"))]
            DeviceKind::Wgpu(_) => anyhow::bail!(distill_models::device::NO_WGPU),
        }
    }};
}

pub(crate) use dispatch;

/// `dispatch_many!(kinds, |B, devices| expr)`: as `dispatch!`, with `devices` a `Vec` of the
/// backend's devices, one per rank (all of one kind).
macro_rules! dispatch_many {
    ($kinds:expr, |$b:ident, $devs:ident| $body:expr) => {{
        use distill_models::device::DeviceKind;
        let kinds: Vec<DeviceKind> = $kinds;
        match kinds.first().copied().unwrap_or(DeviceKind::Cpu) {
            DeviceKind::Cpu => {
                type $b = distill_models::device::Cpu;
                let $devs: Vec<distill_models::device::CpuDevice> =
                    kinds.iter().map(|_| distill_models::device::CpuDevice::default()).collect();
                $body
            }
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda(_) => {
                type $b = distill_models::device::Cuda;
                let $devs: Vec<distill_models::device::CudaDevice> = kinds
                    .iter()
                    .map(|k| match k {
                        DeviceKind::Cuda(index) => {
                            distill_models::device::CudaDevice { index: *index }
                        }
                        _ => unreachable!("parse_devices keeps one kind"),
                    })
                    .collect();
                $body
            }
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda(_) => anyhow::bail!(distill_models::device::NO_CUDA),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu(_) => {
                type $b = distill_models::device::Wgpu;
                let $devs: Vec<distill_models::device::WgpuDevice> = kinds
                    .iter()
                    .map(|k| match k {
                        DeviceKind::Wgpu(target) => distill_models::device::wgpu_device(*target),
                        _ => unreachable!("parse_devices keeps one kind"),
                    })
                    .collect();
                $body
            }
            #[cfg(not(feature = "wgpu"))]
            DeviceKind::Wgpu(_) => anyhow::bail!(distill_models::device::NO_WGPU),
        }
    }};
}

pub(crate) use dispatch_many;
