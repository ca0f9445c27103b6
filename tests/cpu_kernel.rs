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
