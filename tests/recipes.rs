//! Every shipped recipe parses and validates, and the R1 recipes' memory claims and device plans
//! agree with the planner for their base model's published architecture.

mod common;

use std::path::{Path, PathBuf};

use common::{distill, text};
use distill_student::train::TrainConfig;
use distill_student::train::parallel::{Offload, ShardMode};
use distill_student::train::plan::{MemoryPlan, RunShape, known_config, min_ranks};

fn shipped() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_shipped_recipe_validates() {
    let recipes = shipped();
    assert!(
        recipes.len() >= 10,
        "expected the R1, tiny, quickstart and self-distill recipes, found {recipes:?}"
    );
    let args: Vec<String> = std::iter::once("check-recipe".to_string())
        .chain(recipes.iter().map(|p| p.display().to_string()))
        .collect();
    let out = distill(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(t.lines().filter(|l| l.starts_with("ok ")).count(), recipes.len(), "{t}");
}

/// Every command that takes `--recipe` takes every shipped recipe: `--check` resolves every
/// placeholder, and lists each input the stage reads as present, made by an earlier stage of the
/// same recipe, or (for the R1 recipes, whose base models and corpora come from outside) missing;
/// a recipe without the command's section is refused with the file and the section named.
#[test]
fn every_command_takes_every_shipped_recipe() {
    for path in shipped() {
        let r: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let p = path.display().to_string();
        let self_contained = r.get("prepare").is_some();
        for cmd in ["generate", "train", "eval"] {
            let out = distill(&[cmd, "--recipe", &p, "--check"]);
            let t = text(&out);
            if r.get(cmd).is_none() {
                assert_eq!(out.status.code(), Some(1), "{cmd} {p}: {t}");
                assert!(t.contains(&format!("{p}: no [{cmd}] section")), "{cmd} {p}: {t}");
                continue;
            }
            assert!(out.status.success(), "{cmd} {p}: {t}");
            assert!(t.contains(&format!("[{cmd}] of recipe")), "{cmd} {p}: {t}");
            for ph in ["{run_dir}", "{teacher}", "{student}", "{corpus}", "{export}", "{cache}"] {
                assert!(!t.contains(ph), "{cmd} {p}: unresolved {ph}: {t}");
            }
            let inputs: Vec<&str> = t.lines().skip(1).collect();
            assert!(!inputs.is_empty() || cmd == "eval", "{cmd} {p}: lists no input: {t}");
            if self_contained {
                assert!(
                    !t.contains("MISSING"),
                    "{cmd} {p}: a self-contained recipe lacks an input no stage makes: {t}"
                );
            }
        }
        if r.get("train").is_some() {
            let out = distill(&["plan", "--recipe", &p]);
            let t = text(&out);
            if r["recipe"].get("base_model").is_some() {
                assert!(out.status.success(), "plan {p}: {t}");
            } else if !out.status.success() {
                // The student is made by the prepare stage: the refusal says so.
                assert!(t.contains("made by this recipe's prepare stage"), "plan {p}: {t}");
            }
        }
    }
}

/// `distill train --recipe` alone, from a fresh run directory: it prepares the student itself
/// (the prepare stage is short), then stops before any work because the corpus comes from the
/// generate stage, naming the command that makes it.
#[test]
fn train_alone_prepares_the_student_and_names_the_missing_corpus() {
    let d = tempfile::tempdir().unwrap();
    let run_dir = d.path().join("run");
    let out = distill(&[
        "train",
        "--recipe",
        "recipes/tiny.toml",
        "--set",
        &format!("recipe.run_dir=\"{}\"", run_dir.display()),
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(run_dir.join("models/student/config.json").exists(), "{t}");
    assert!(run_dir.join("stages/prepare.json").exists(), "{t}");
    assert!(t.contains("[train.data] corpus is made by this recipe's generate stage: run `distill run recipes/tiny.toml --only generate`"), "{t}");
}

#[test]
fn r1_recipes_state_the_plan_the_planner_computes() {
    let mut checked = 0;
    for path in shipped() {
        let r: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let Some(declared) = r["recipe"].get("memory_estimate_gb").and_then(toml::Value::as_float)
        else {
            continue;
        };
        let base = r["recipe"]["base_model"].as_str().unwrap();
        let config = known_config(base)
            .unwrap_or_else(|| panic!("{}: no published config for {base}", path.display()));
        let cfg: TrainConfig = r["train"].clone().try_into().unwrap();
        let shape = RunShape::of(&cfg);
        let num = |k: &str| {
            r["recipe"]
                .get(k)
                .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|x| x as f64)))
        };
        let device = num("device_memory_gb").unwrap();
        let name = path.display();

        // One device.
        let one = MemoryPlan::new(&config, shape, 1, ShardMode::None).total_gb();
        assert!(
            (one - declared).abs() < 0.1,
            "{name}: declares {declared} GB on one device, the planner says {one:.1} GB"
        );
        let fits = r["recipe"]["fits_one_device"].as_bool().unwrap();
        assert_eq!(
            fits,
            one <= device,
            "{name}: fits_one_device = {fits}, but {one:.1} GB against {device} GB"
        );

        // The plan it runs with: it fits, and for parameter sharding it is at least the fewest
        // devices that fit.
        let n = num("plan_devices").unwrap() as usize;
        let mode: ShardMode =
            serde_json::from_value(serde_json::json!(r["recipe"]["plan_shard"].as_str().unwrap()))
                .unwrap();
        let gb = num("plan_gb_per_device").unwrap();
        let plan = MemoryPlan::new(&config, shape, n, mode).total_gb();
        assert!(
            (plan - gb).abs() < 0.1,
            "{name}: declares {gb} GB per device at {n} × {mode:?}, the planner says {plan:.1}"
        );
        assert!(
            plan <= device,
            "{name}: the declared plan does not fit: {plan:.1} GB > {device} GB"
        );
        let fewest = min_ranks(&config, shape, mode, device, 4096).unwrap_or(usize::MAX);
        assert!(fewest <= n, "{name}: {mode:?} needs {fewest} devices, the recipe plans {n}");
        // Every plan runs on one node (multi-node training waits on a burn-collective fix).
        assert!(n <= 8, "{name}: {n} devices are more than one node");
        // Offload: the recipe turns it on, and the node's host memory holds every rank's share.
        let offload = r["recipe"].get("plan_offload").and_then(toml::Value::as_str);
        assert_eq!(
            offload == Some("cpu"),
            cfg.parallel.offload == Offload::Cpu,
            "{name}: plan_offload and [train.parallel] offload disagree"
        );
        if offload == Some("cpu") {
            let host = MemoryPlan::new(&config, shape, n, mode).host_gb() * n as f64;
            let declared = num("plan_host_gb_per_node").unwrap();
            assert!(
                (host - declared).abs() < 0.1,
                "{name}: declares {declared} GB of host memory, the planner says {host:.1}"
            );
            let have = cfg.parallel.host_memory_gb.expect("an offloading recipe states its host");
            assert!(host <= have, "{name}: {host:.0} GB of offloaded state > {have} GB of host");
        }
        match mode {
            ShardMode::None => assert_eq!(n, 1),
            _ => {
                // Trainable: the recipe names the devices and the mode, and the trainer's own
                // check accepts it.
                assert_eq!(cfg.parallel.shard, mode, "{name}: [train.parallel] shard");
                assert_eq!(
                    cfg.device_kinds().unwrap().len(),
                    n,
                    "{name}: [train.parallel] devices"
                );
                assert!(cfg.validate().is_ok(), "{name}");
                assert!(MemoryPlan::for_run(&config, &cfg, n).total_gb() <= device);
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 7, "the seven R1-Distill recipes");
}

#[test]
fn eval_and_rejection_sampling_may_not_judge_answers_differently() {
    let d = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/quickstart.toml"),
    )
    .unwrap();
    let eval = "\n[eval]\nbenchmarks = [{ name = \"gsm8k\", file = \"g.jsonl\" }]\noutput = \"out\"\n[eval.backend]\nkind = \"openai\"\nendpoints = [{ base_url = \"http://127.0.0.1:9/v1\", model = \"m\" }]\n";
    // The same settings (inherited): accepted.
    let same = d.path().join("same.toml");
    std::fs::write(&same, format!("{base}{eval}")).unwrap();
    let o = distill(&["check-recipe", same.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // Different ones: refused, naming both sections.
    let differ = d.path().join("differ.toml");
    std::fs::write(&differ, format!("{base}{eval}[eval.math]\nboxed_only = true\n")).unwrap();
    let o = distill(&["check-recipe", differ.to_str().unwrap()]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("[eval.math]") && t.contains("[generate.verify.math]"), "{t}");
    // An unknown setting is named.
    let bad = d.path().join("bad.toml");
    std::fs::write(&bad, base.replace("boxed_only = false", "boxd_only = false")).unwrap();
    let o = distill(&["check-recipe", bad.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("boxd_only"), "{}", text(&o));
}

/// Issue 28: `[train.on_policy.endpoint]` is the endpoint type `[generate.backend]` uses, so
/// `check-recipe` names a misspelled field in it (it was an untyped table, read only at run time).
#[test]
fn a_misspelled_endpoint_field_is_refused_by_check_recipe() {
    let d = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/quickstart-onpolicy.toml"),
    )
    .unwrap();
    let section = |field: &str| {
        format!(
            "\n[on_policy.policy.endpoint]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"teacher\"\n{field} = 2\n"
        )
    };
    let good = d.path().join("good.toml");
    std::fs::write(&good, format!("{base}{}", section("concurrency"))).unwrap();
    let o = distill(&["check-recipe", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let bad = d.path().join("bad.toml");
    std::fs::write(&bad, format!("{base}{}", section("concurency"))).unwrap();
    let o = distill(&["check-recipe", bad.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("concurency"), "{}", text(&o));

    // `[generate.backend]` is one variant per kind: a field of the other kind, or a misspelled
    // one, is refused and named.
    let local = "kind = \"local\"\nlocal = { model_dir = \"{teacher}\", batch = 16 }";
    assert!(base.contains(local), "the quickstart's backend changed");
    for (bad_backend, field) in [
        (local.replace("\"local\"\n", "\"openai\"\n"), "local"),
        (format!("{local}\ndevise = \"cpu\""), "devise"),
    ] {
        let bad = d.path().join(format!("backend-{field}.toml"));
        std::fs::write(&bad, base.replace(local, &bad_backend)).unwrap();
        let o = distill(&["check-recipe", bad.to_str().unwrap()]);
        assert!(!o.status.success(), "{field}: {}", text(&o));
        assert!(text(&o).contains(&format!("`{field}`")), "{field}: {}", text(&o));
    }
}
