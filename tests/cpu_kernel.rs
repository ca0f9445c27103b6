//! The gemm kernel through the user's commands: the `--gemm-kernel` / `DISTILL_GEMM_KERNEL`
//! override, calibration saved and reused, every benchmark naming the CPU and the kernel.
#![cfg(target_arch = "x86_64")]

use std::process::{Command, Output};

fn distill(cache: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distill"));
    c.args(args).env("DISTILL_CACHE", cache).env_remove("DISTILL_GEMM_KERNEL");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run distill")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const CALIBRATE: [&str; 9] = [
    "--gemm-kernel",
    "calibrate",
    "bench",
    "gemm",
    "--shapes",
    "8x8x8",
    "--reps",
    "1",
    "--no-ndarray",
];

const TINY: [&str; 8] =
    ["bench", "gemm", "--shapes", "96x80x112", "--reps", "1", "--no-ndarray", "--json"];

#[test]
fn override_calibration_and_machine_line() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let has_fma = std::arch::is_x86_feature_detected!("fma");
    let has_avx512 = std::arch::is_x86_feature_detected!("avx512f");

    // The override, by flag and by environment, is what the machine line reports.
    if has_fma {
        let json = dir.path().join("a.jsonl");
        let mut args = vec!["--gemm-kernel", "avx2"];
        args.extend(TINY);
        args.push(json.to_str().unwrap());
        let o = distill(&cache, &[], &args);
        assert!(o.status.success(), "{}", text(&o));
        let t = text(&o);
        assert!(t.contains("gemm kernel avx2 (override"), "{t}");
        assert!(t.contains("family 0x") && t.contains("flags: "), "the CPU is named: {t}");
        let v: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&json).unwrap().lines().next().unwrap())
                .unwrap();
        assert_eq!(v["cpu"]["gemm_kernel"], "avx2", "{v}");
        assert!(v["cpu"]["vendor"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(v["gflops"]["flex avx2"][0].as_f64().unwrap() > 0.0);

        let mut args: Vec<&str> = TINY.to_vec();
        args.push(json.to_str().unwrap());
        let o = distill(&cache, &[("DISTILL_GEMM_KERNEL", "avx2")], &args);
        assert!(text(&o).contains("gemm kernel avx2 (override"), "{}", text(&o));
    }
    if !has_avx512 {
        let o = distill(
            &cache,
            &[],
            &["--gemm-kernel", "avx512", "bench", "gemm", "--shapes", "8x8x8"],
        );
        assert!(
            !o.status.success() && text(&o).contains("not available on this CPU"),
            "{}",
            text(&o)
        );
    }
    let o =
        distill(&cache, &[("DISTILL_GEMM_KERNEL", "sse")], &["bench", "gemm", "--shapes", "8x8x8"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("DISTILL_GEMM_KERNEL") && text(&o).contains("expected auto"),
        "{}",
        text(&o)
    );

    // Without a calibration the table decides; `--save` makes one, and `auto` then uses it.
    let json = dir.path().join("b.jsonl");
    let mut args: Vec<&str> = TINY.to_vec();
    args.push(json.to_str().unwrap());
    let o = distill(&cache, &[], &args);
    assert!(text(&o).contains("(by CPU: "), "{}", text(&o));
    args.push("--save");
    let o = distill(&cache, &[], &args);
    assert!(o.status.success(), "{}", text(&o));
    let saved = cache.join("gemm-kernel.json");
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(c["version"], 1);
    let entry = c["entries"].as_object().unwrap().values().next().unwrap().clone();
    let chosen = entry["chosen"].as_str().unwrap().to_string();
    args.pop();
    let o = distill(&cache, &[], &args);
    assert!(
        text(&o).contains(&format!("gemm kernel {chosen} (calibrated: measured on this machine")),
        "{}",
        text(&o)
    );

    // `calibrate` measures once when nothing is cached, then reuses.
    let fresh = dir.path().join("fresh");
    let o = distill(&fresh, &[], &CALIBRATE);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("calibrating the gemm kernel"),
        "{}",
        text(&o)
    );
    assert!(fresh.join("gemm-kernel.json").exists());
    let o = distill(&fresh, &[], &CALIBRATE);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("calibrating"), "{}", text(&o));
    assert!(text(&o).contains("(calibrated: "), "{}", text(&o));
}

/// distill on a CPU without AVX-512, for real: the binary runs under QEMU's user-mode emulator
/// as an AMD EPYC Milan (Zen 3: AVX2 and FMA, no AVX-512), where any AVX-512 instruction is an
/// illegal instruction (QEMU's TCG implements none). Two optimizer steps of a tiny model there
/// must pick the AVX2 kernel by the CPU table and give the losses and gradient norms of the same
/// steps run natively (within 1e-4: the kernels round differently).
///
/// `scripts/test` installs qemu-user and sets DISTILL_REQUIRE_QEMU=1, so there this test cannot
/// skip; elsewhere it skips when `qemu-x86_64` is missing.
#[test]
fn trains_on_an_emulated_zen3_without_avx512() {
    let qemu_ok =
        Command::new("qemu-x86_64").arg("--version").output().is_ok_and(|o| o.status.success());
    if !qemu_ok {
        assert!(
            std::env::var_os("DISTILL_REQUIRE_QEMU").is_none_or(|v| v != "1"),
            "qemu-x86_64 is missing (DISTILL_REQUIRE_QEMU=1; scripts/test installs qemu-user)"
        );
        eprintln!("skipping: qemu-x86_64 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let step = |json: &std::path::Path, emulate: bool| {
        let args = [
            "bench",
            "step",
            "--model",
            "tiny-llama",
            "--shape",
            "2x64",
            "--steps",
            "2",
            "--json",
            json.to_str().unwrap(),
        ];
        let mut c = if emulate {
            let mut c = Command::new("qemu-x86_64");
            c.args(["-cpu", "EPYC-Milan-v1", env!("CARGO_BIN_EXE_distill")]);
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_distill"))
        };
        let o = c
            .args(args)
            .env("DISTILL_CACHE", dir.path().join("cache"))
            .env_remove("DISTILL_GEMM_KERNEL")
            .output()
            .expect("run distill");
        let t = text(&o);
        // QEMU warns about CPUID bits TCG does not implement; they are not errors.
        assert!(o.status.success(), "emulated: {emulate}, {:?}:\n{t}", o.status);
        let line = std::fs::read_to_string(json).unwrap();
        serde_json::from_str::<serde_json::Value>(line.lines().last().unwrap()).unwrap()
    };
    let native = step(&dir.path().join("native.jsonl"), false);
    let zen3 = step(&dir.path().join("zen3.jsonl"), true);

    let cpu = &zen3["cpu"];
    assert_eq!(
        (cpu["vendor"].as_str(), cpu["family"].as_str()),
        (Some("AuthenticAMD"), Some("0x19")),
        "{cpu}"
    );
    assert_eq!(cpu["model"], "0x1", "an EPYC Milan is family 0x19 model 0x1: {cpu}");
    let flags: Vec<&str> =
        cpu["flags"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
    assert!(flags.contains(&"avx2") && flags.contains(&"fma"), "{cpu}");
    assert!(!flags.iter().any(|f| f.starts_with("avx512")), "{cpu}");
    assert_eq!(cpu["gemm_kernel"], "avx2", "{cpu}");

    let (a, b) = (native["steps"].as_array().unwrap(), zen3["steps"].as_array().unwrap());
    assert_eq!(a.len(), 2);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        for key in ["loss", "grad_norm"] {
            let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                p.is_finite() && (p - q).abs() <= 1e-4 * p.abs().max(1.0),
                "{key}: native {p}, Zen 3 {q}"
            );
        }
    }
}
