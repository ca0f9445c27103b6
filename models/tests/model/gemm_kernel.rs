//! The run-time gemm kernel choice reaches gemm's dispatch (vendor/gemm-common's patch), both
//! kernels give the same products, and calibrations round-trip through their cache. One test
//! function: the kernel preference is process-wide. x86_64 only: elsewhere gemm has one kernel.
#![cfg(target_arch = "x86_64")]

use burn::tensor::{Distribution, Tensor};
use distill_models::cpu::{self, Calibration, CalibrationCache, CpuIdentity, GemmKernel};
use distill_models::device::{Cpu, CpuDevice};

fn product(a: &Tensor<Cpu, 2>, b: &Tensor<Cpu, 2>) -> Vec<f32> {
    a.clone().matmul(b.clone()).into_data().to_vec::<f32>().unwrap()
}

/// f64 reference of `a @ b`.
fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p] as f64;
            for j in 0..n {
                c[i * n + j] += x * b[p * n + j] as f64;
            }
        }
    }
    c
}

#[test]
fn kernel_choice_reaches_gemm_and_calibration_caches() {
    let id = CpuIdentity::detect();
    let available = cpu::available(&id);
    eprintln!("{}: kernels {available:?}", id.describe());
    let device = CpuDevice::default();
    // Large enough for gemm's blocked path on every kernel (not its small-matrix shortcut).
    let (m, k, n) = (300, 257, 390);
    let a = Tensor::<Cpu, 2>::random([m, k], Distribution::Uniform(-1.0, 1.0), &device);
    let b = Tensor::<Cpu, 2>::random([k, n], Distribution::Uniform(-1.0, 1.0), &device);
    let av = a.clone().into_data().to_vec::<f32>().unwrap();
    let bv = b.clone().into_data().to_vec::<f32>().unwrap();
    let want = reference(&av, &bv, m, k, n);

    let mut outputs = Vec::new();
    for &kernel in &available {
        cpu::apply(kernel);
        let got = product(&a, &b);
        assert_eq!(cpu::last_taken(), Some(kernel), "gemm did not switch to {kernel}");
        let err = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
        assert!(err < 1e-4, "{kernel}: max abs error {err} against f64");
        outputs.push((kernel, got));
    }
    // Switching back re-dispatches too.
    if let Some(&(first, _)) = outputs.first() {
        cpu::apply(first);
        let _ = product(&a, &b);
        assert_eq!(cpu::last_taken(), Some(first));
    }
    if id.has("avx512f") && id.has("fma") {
        assert!(available.contains(&GemmKernel::Avx512) && available.contains(&GemmKernel::Avx2));
    }

    // The table's choice for this CPU is one it can run, and calibration picks a runnable one and
    // leaves gemm on it.
    let (table, reason) = cpu::table_choice(&id);
    assert!(available.contains(&table), "{table}: {reason}");
    let c = cpu::calibrate(&id, &[(256, 256, 256)], 1);
    assert!(available.contains(&c.chosen));
    assert_eq!(c.kernels.len(), available.len());
    assert!(c.kernels.iter().all(|k| k.total_seconds > 0.0 && k.shapes[0].gflops > 0.0));
    let _ = product(&a, &b);
    assert_eq!(cpu::last_taken(), Some(c.chosen));

    // The cache: write, read back under this CPU's key, reuse by `decide`.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemm-kernel.json");
    assert!(CalibrationCache::read(&path).unwrap().entries.is_empty());
    let mut cache = CalibrationCache::read(&path).unwrap();
    let forced = Calibration { chosen: *available.last().unwrap(), ..c.clone() };
    cache.insert(forced.clone());
    cache.write(&path).unwrap();
    let back = CalibrationCache::read(&path).unwrap();
    assert_eq!(back.get(&id, c.threads), Some(&forced));
    assert!(back.get(&id, c.threads + 1).is_none(), "a calibration is per thread count");
    let choice = cpu::decide(&id, cpu::KernelRequest::Auto, back.get(&id, c.threads)).unwrap();
    assert_eq!((choice.kernel, choice.source), (forced.chosen, cpu::ChoiceSource::Calibration));
    // Another version is ignored; a corrupt file is an error naming it.
    std::fs::write(&path, r#"{"version": 99, "entries": {}}"#).unwrap();
    assert!(CalibrationCache::read(&path).unwrap().entries.is_empty());
    std::fs::write(&path, "{not json").unwrap();
    let e = CalibrationCache::read(&path).unwrap_err().to_string();
    assert!(e.contains("gemm-kernel.json") && e.contains("not JSON"), "{e}");
}
