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
