//! The Hugging Face Hub, through the `hf-hub` crate: `distill fetch ORG/NAME[@REV]`, `hf:` models
//! in recipes and `hf://datasets/ORG/NAME[@REV]/PATH` files.
//!
//! Files land in the Hub's standard cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`: `models--ORG--NAME/{blobs,snapshots,refs}`), so transformers finds
//! the same files and a second fetch downloads nothing. `HF_ENDPOINT` picks the server and
//! `HF_TOKEN` (else the cache's `token` file) authenticates. hf-hub resumes a partial download
//! (`blobs/ETAG.sync.part`) with a range request; distill then checks each new file against its
//! ETag: the sha256 of an LFS file, the git blob sha1 of any other.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

/// A repository at a revision: `ORG/NAME[@REV]`.
#[derive(Debug, Clone)]
pub struct RepoSpec {
    pub id: String,
    pub kind: RepoType,
    pub revision: String,
}

impl RepoSpec {
    /// `ORG/NAME`, `ORG/NAME@REV`; `kind` says model or dataset.
    pub fn parse(spec: &str, kind: RepoType) -> anyhow::Result<RepoSpec> {
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev),
            Some(_) => bail!("{spec:?}: an empty revision after '@'"),
            None => (spec, "main"),
        };
        let parts: Vec<&str> = id.split('/').collect();
        let ok_part = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.len() > 2 || !parts.iter().all(|p| ok_part(p)) {
            bail!("{spec:?} is not a Hub repository id (ORG/NAME or NAME, optionally @REVISION)");
        }
        Ok(RepoSpec { id: id.to_string(), kind, revision: revision.to_string() })
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(self.id.clone(), self.kind, self.revision.clone())
    }

    fn shown(&self) -> String {
        let kind = match self.kind {
            RepoType::Dataset => "dataset ",
            RepoType::Space => "space ",
            RepoType::Model => "",
        };
        format!("{kind}{}@{}", self.id, self.revision)
    }
}

/// The Hub cache directory: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (what huggingface_hub uses).
pub fn cache() -> Cache {
    if let Some(d) = std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        return Cache::new(PathBuf::from(d));
    }
    Cache::from_env()
}

fn api() -> anyhow::Result<Api> {
    let cache = cache();
    // HF_TOKEN wins over the token file, as in huggingface_hub.
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| cache.token());
    if let Some(t) = &token {
        distill_data::redact::register_secret(t);
    }
    let mut b = ApiBuilder::from_cache(cache)
        .with_token(token)
        .with_progress(false)
        .with_retries(5)
        .with_user_agent("distill", env!("CARGO_PKG_VERSION"));
    if let Ok(e) = std::env::var("HF_ENDPOINT")
        && !e.is_empty()
    {
        b = b.with_endpoint(e.trim_end_matches('/').to_string());
    }
    b.build().context("setting up the Hugging Face Hub client")
}

/// A Hub error, with what the user can do about it.
fn explain(e: ApiError, spec: &RepoSpec, what: &str) -> anyhow::Error {
    let token_set = std::env::var("HF_TOKEN").is_ok_and(|t| !t.is_empty());
    if let ApiError::RequestError(err) = &e
        && let ureq2::Error::Status(code, _) = err.as_ref()
    {
        let code = *code;
        let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "huggingface.co".into());
        return match code {
            401 | 403 if !token_set => anyhow::anyhow!(
                "{}: {what}: HTTP {code} from {endpoint}: the repository is gated or private; accept its terms on the Hub and set HF_TOKEN to an access token (or log in with `hf auth login`)",
                spec.shown()
            ),
            401 | 403 => anyhow::anyhow!(
                "{}: {what}: HTTP {code} from {endpoint}: HF_TOKEN is set but has no access to this repository (gated: accept its terms on the Hub with the token's account)",
                spec.shown()
            ),
            404 => anyhow::anyhow!(
                "{}: {what}: HTTP 404 from {endpoint}: no such repository, revision or file{}",
                spec.shown(),
                if token_set {
                    ""
                } else {
                    " (a private repository also answers 404 without HF_TOKEN)"
                }
            ),
            _ => anyhow::anyhow!("{}: {what}: HTTP {code} from {endpoint}", spec.shown()),
        };
    }
    anyhow::anyhow!("{}: {what}: {}", spec.shown(), distill_data::redact::redact(&e.to_string()))
}

/// Which files `fetch` takes by default from a model repository: its configs, tokenizer and
/// chat template, and safetensors weights (other weight formats only when it has no safetensors).
/// Subfolders (`original/`, `onnx/`) and GGUF files only when asked for with `include`.
pub fn default_files(files: &[String]) -> Vec<String> {
    let has_st = files.iter().any(|f| !f.contains('/') && f.ends_with(".safetensors"));
    let other_weights =
        [".bin", ".pth", ".pt", ".h5", ".msgpack", ".ot", ".onnx", ".gguf", ".ckpt"];
    files
        .iter()
        .filter(|f| !f.contains('/'))
        .filter(|f| !f.starts_with('.'))
        .filter(|f| {
            let weight = other_weights.iter().any(|x| f.ends_with(x));
            !weight || (!has_st && !f.ends_with(".gguf") && f.ends_with(".bin"))
        })
        .cloned()
        .collect()
}

/// Download `files` of `spec` (all of [`default_files`] when `include` is empty; else those
/// matching any glob in `include`) into the Hub cache; returns the snapshot directory.
pub fn fetch_repo(spec: &RepoSpec, include: &[String]) -> anyhow::Result<PathBuf> {
    let api = api()?;
    let repo = api.repo(spec.repo());
    let info = repo.info().map_err(|e| explain(e, spec, "listing files"))?;
    let all: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let files = if include.is_empty() {
        default_files(&all)
    } else {
        let pats = include
            .iter()
            .map(|p| glob::Pattern::new(p).with_context(|| format!("--include {p:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        all.iter().filter(|f| pats.iter().any(|p| p.matches(f))).cloned().collect()
    };
    if files.is_empty() {
        bail!(
            "{}: nothing to fetch among its {} files{}",
            spec.shown(),
            all.len(),
            if include.is_empty() { "" } else { " matching --include" }
        );
    }
    // Pin the revision to the commit the listing named, so every file comes from one commit.
    let pinned = RepoSpec { revision: info.sha.clone(), ..spec.clone() };
    let prepo = api.repo(pinned.repo());
    let mut snapshot = None;
    let n = files.len();
    for (i, f) in files.iter().enumerate() {
        let path = fetch_one(&prepo, &pinned, f, i + 1, n)?;
        snapshot.get_or_insert_with(|| snapshot_dir(&path, f));
    }
    set_ref(spec, &info.sha)?;
    Ok(snapshot.expect("at least one file"))
}

/// One file of a pinned revision: from the cache, else downloaded (resuming a partial one) and
/// checked against its ETag.
fn fetch_one(
    prepo: &hf_hub::api::sync::ApiRepo,
    pinned: &RepoSpec,
    file: &str,
    i: usize,
    n: usize,
) -> anyhow::Result<PathBuf> {
    let cached = snapshot_path(pinned, file);
    if cached.exists() {
        return Ok(cached);
    }
    let progress = Bytes { bar: None, label: format!("[{i}/{n}] {file}") };
    let path = prepo
        .download_with_progress(file, progress)
        .map_err(|e| explain(e, pinned, &format!("downloading {file}")))?;
    verify(&path).with_context(|| format!("{}: {file}", pinned.shown()))?;
    Ok(path)
}

/// `snapshots/COMMIT/FILE` in the cache, for a spec pinned to a commit.
fn snapshot_path(pinned: &RepoSpec, file: &str) -> PathBuf {
    cache()
        .path()
        .join(pinned.repo().folder_name())
        .join("snapshots")
        .join(&pinned.revision)
        .join(file)
}

/// Point `refs/REV` at the fetched commit, so `hf:ORG/NAME@REV` resolves offline next time; drop
/// the `refs/COMMIT` hf-hub leaves for a download pinned to a commit.
fn set_ref(spec: &RepoSpec, sha: &str) -> anyhow::Result<()> {
    cache().repo(spec.repo()).create_ref(sha).context("writing the Hub cache's ref")?;
    if spec.revision != sha {
        let stray = cache().path().join(spec.repo().folder_name()).join("refs").join(sha);
        let _ = std::fs::remove_file(stray);
    }
    Ok(())
}

/// `snapshots/COMMIT/a/b.json` with `file` = `a/b.json` → `snapshots/COMMIT`.
fn snapshot_dir(path: &Path, file: &str) -> PathBuf {
    let depth = Path::new(file).components().count();
    let mut p = path.to_path_buf();
    for _ in 0..depth {
        p.pop();
    }
    p
}

/// A freshly downloaded snapshot file against its blob's name (the ETag): sha256 for LFS files
/// (64 hex digits), the git blob sha1 otherwise (40). A mismatch deletes the blob.
fn verify(snapshot_file: &Path) -> anyhow::Result<()> {
    let blob = std::fs::canonicalize(snapshot_file)
        .with_context(|| format!("resolving {}", snapshot_file.display()))?;
    let etag = blob.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let got = match etag.len() {
        64 => hash_file::<sha2::Sha256>(&blob, None)?,
        40 => {
            let len = std::fs::metadata(&blob)?.len();
            hash_file::<sha1::Sha1>(&blob, Some(format!("blob {len}\0").as_bytes()))?
        }
        // An ETag that is neither (a server's own) cannot be checked.
        _ => return Ok(()),
    };
    if !got.eq_ignore_ascii_case(&etag) {
        let _ = std::fs::remove_file(&blob);
        let _ = std::fs::remove_file(snapshot_file);
        bail!(
            "checksum mismatch: the server's ETag is {etag}, the downloaded file hashes to {got}; the file was deleted, run the fetch again"
        );
    }
    Ok(())
}

fn hash_file<D: sha2::Digest>(path: &Path, prefix: Option<&[u8]>) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = D::new();
    if let Some(p) = prefix {
        h.update(p);
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// hf-hub's byte progress, drawn as distill's bars (a terminal bar, or log lines).
struct Bytes {
    bar: Option<indicatif::ProgressBar>,
    label: String,
}

impl hf_hub::api::Progress for Bytes {
    fn init(&mut self, size: usize, _filename: &str) {
        if self.bar.is_none() {
            let bar = crate::progress::bar(Some(size as u64), "bytes");
            bar.set_message(self.label.clone());
            self.bar = Some(bar);
        }
    }
    fn update(&mut self, size: usize) {
        if let Some(b) = &self.bar {
            b.inc(size as u64);
        }
    }
    fn finish(&mut self) {}
}

impl Drop for Bytes {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// A model given as `hf:ORG/NAME[@REV]`: its snapshot directory, fetched on first use.
pub fn resolve_model(spec: &str) -> anyhow::Result<PathBuf> {
    let s = RepoSpec::parse(spec, RepoType::Model)?;
    if let Some(dir) = cached_snapshot(&s) {
        return Ok(dir);
    }
    fetch_repo(&s, &[])
}

/// A snapshot already in the cache whose revision resolves offline and that has a config.json.
fn cached_snapshot(s: &RepoSpec) -> Option<PathBuf> {
    let path = cache().repo(s.repo()).get("config.json")?;
    Some(snapshot_dir(&path, "config.json"))
}

/// A file given as `hf://datasets/ORG/NAME[@REV]/PATH` (or `hf://ORG/NAME[@REV]/PATH` for a model
/// repository's file): its path in the cache, fetched on first use.
pub fn resolve_file(uri: &str) -> anyhow::Result<PathBuf> {
    let rest = uri.strip_prefix("hf://").context("not an hf:// address")?;
    let (kind, rest) = match rest.strip_prefix("datasets/") {
        Some(r) => (RepoType::Dataset, r),
        None => (RepoType::Model, rest),
    };
    let mut parts = rest.splitn(3, '/');
    let (org, name, file) = match (parts.next(), parts.next(), parts.next()) {
        (Some(o), Some(n), Some(f)) if !f.is_empty() => (o, n, f),
        _ => bail!("{uri:?}: expected hf://datasets/ORG/NAME[@REV]/PATH/IN/REPO"),
    };
    let s = RepoSpec::parse(&format!("{org}/{name}"), kind)?;
    if file.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
        bail!("{uri:?}: a path inside the repository may not contain '.', '..' or '//'");
    }
    if let Some(p) = cache().repo(s.repo()).get(file) {
        return Ok(p);
    }
    let api = api()?;
    let repo = api.repo(s.repo());
    let info = repo.info().map_err(|e| explain(e, &s, "listing files"))?;
    if !info.siblings.iter().any(|x| x.rfilename == file) {
        bail!("{}: has no file {file:?}", s.shown());
    }
    let pinned = RepoSpec { revision: info.sha.clone(), ..s.clone() };
    let path = fetch_one(&api.repo(pinned.repo()), &pinned, file, 1, 1)?;
    set_ref(&s, &info.sha)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = RepoSpec::parse("Qwen/Qwen2.5-1.5B@v1.0", RepoType::Model).unwrap();
        assert_eq!((s.id.as_str(), s.revision.as_str()), ("Qwen/Qwen2.5-1.5B", "v1.0"));
        assert_eq!(RepoSpec::parse("gpt2", RepoType::Model).unwrap().revision, "main");
        for bad in ["a/b/c", "../x", "a/", "a b/c", "a/b@"] {
            assert!(RepoSpec::parse(bad, RepoType::Model).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_file_choice() {
        let files: Vec<String> = [
            "config.json",
            "model-00001-of-00002.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "tokenizer.json",
            "original/consolidated.00.pth",
            ".gitattributes",
            "model-q4.gguf",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            default_files(&files),
            [
                "config.json",
                "model-00001-of-00002.safetensors",
                "model.safetensors.index.json",
                "tokenizer.json"
            ]
        );
        let bin_only: Vec<String> = ["config.json", "pytorch_model.bin"].map(String::from).to_vec();
        assert_eq!(default_files(&bin_only), bin_only);
    }
}
