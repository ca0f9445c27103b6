//! The Hugging Face Hub: `distill fetch ORG/NAME[@REV]`, `hf:` models in recipes and
//! `hf://datasets/ORG/NAME[@REV]/PATH` files.
//!
//! Files land in the Hub's standard cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`: `models--ORG--NAME/{blobs,snapshots,refs}`), so transformers finds
//! the same files and a second fetch downloads nothing. `HF_ENDPOINT` picks the server and
//! `HF_TOKEN` (else the `token` file beside the cache) authenticates.
//!
//! The client is distill's own, on ureq, because everything the server says is untrusted and
//! `hf-hub` 0.4 used it unchecked (file names, ETags and commit headers became paths, the token
//! followed redirects to other hosts, redirects and bodies were unbounded). Here:
//! - every name that becomes a path is checked first: listed file names are relative and
//!   normalised (no `..`, `.`, empty, absolute, NUL or control characters); commits are 40 hex
//!   digits; ETags are the protocol's hashes; revisions are git ref names;
//! - the token goes only to the endpoint's own origin (scheme, host and port), never across a
//!   redirect to another one;
//! - at most [`MAX_REDIRECTS`] redirects per request, and a body is never read past the size the
//!   server announced for it;
//! - a cut download resumes from `blobs/ETAG.incomplete` with a range request (what
//!   huggingface_hub does), and each new file is checked against its ETag: the sha256 of an LFS
//!   file, the git blob sha1 of any other.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

/// Redirects followed per request (a CDN hop, a renamed repository) before giving up.
pub const MAX_REDIRECTS: usize = 10;
/// The listing's JSON is read up to this many bytes.
const LISTING_LIMIT: u64 = 64 << 20;
/// Tries per file download; each after the first resumes where the last stopped.
const DOWNLOAD_TRIES: usize = 6;

/// What kind of repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    /// The path segment of the listing API: `/api/models/…`.
    fn api(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }

    /// Before the id in file URLs: `/ID/resolve/…` or `/datasets/ID/resolve/…`.
    fn url_prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
        }
    }
}

/// A repository at a revision: `ORG/NAME[@REV]`.
#[derive(Debug, Clone)]
pub struct RepoSpec {
    pub id: String,
    pub kind: RepoKind,
    pub revision: String,
}

impl RepoSpec {
    /// `ORG/NAME`, `ORG/NAME@REV`; `kind` says model or dataset. The revision must be a commit
    /// hash or a git ref name (a branch, a tag, `refs/pr/N`).
    pub fn parse(spec: &str, kind: RepoKind) -> anyhow::Result<RepoSpec> {
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
                && p.len() <= 96
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.len() > 2 || !parts.iter().all(|p| ok_part(p)) {
            bail!("{spec:?} is not a Hub repository id (ORG/NAME or NAME, optionally @REVISION)");
        }
        check_revision(revision).with_context(|| format!("{spec:?}"))?;
        Ok(RepoSpec { id: id.to_string(), kind, revision: revision.to_string() })
    }

    fn shown(&self) -> String {
        let kind = match self.kind {
            RepoKind::Dataset => "dataset ",
            RepoKind::Model => "",
        };
        format!("{kind}{}@{}", self.id, self.revision)
    }

    /// `models--ORG--NAME` (or `datasets--…`): the repository's folder in the cache.
    fn folder(&self) -> String {
        format!("{}--{}", self.kind.api(), self.id.replace('/', "--"))
    }

    /// The repository's folder in the cache.
    fn dir(&self) -> PathBuf {
        cache_dir().join(self.folder())
    }
}

/// A commit hash: 40 hex digits.
pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A revision is a commit or a git ref name (git-check-ref-format's rules, and at most 255 bytes):
/// it becomes a file under `refs/`, so nothing in it may climb out.
pub fn check_revision(r: &str) -> anyhow::Result<()> {
    let bad =
        |why: &str| anyhow::anyhow!("revision {r:?} is not a commit or a git ref name: {why}");
    if is_commit(r) {
        return Ok(());
    }
    if r.is_empty() || r.len() > 255 {
        return Err(bad("empty or longer than 255 bytes"));
    }
    if r.bytes().any(|b| b < 0x20 || b == 0x7f || b" ~^:?*[\\".contains(&b)) {
        return Err(bad("a space, control character or one of ~^:?*[\\"));
    }
    if r.contains("..") || r.contains("@{") || r == "@" {
        return Err(bad("'..', '@{' or '@'"));
    }
    if r.starts_with('/') || r.ends_with('/') || r.ends_with('.') || r.contains("//") {
        return Err(bad("a leading or trailing '/', a trailing '.', or '//'"));
    }
    if r.split('/').any(|c| c.starts_with('.') || c.ends_with(".lock")) {
        return Err(bad("a part starting with '.' or ending in '.lock'"));
    }
    Ok(())
}

/// A file name from the server's listing, before it becomes a path under the snapshot: relative,
/// normalised, no NUL, control characters or backslashes, parts of at most 255 bytes.
pub fn check_repo_file(name: &str) -> anyhow::Result<()> {
    let bad = |why: &str| anyhow::anyhow!("the file name {name:?} is unsafe: {why}");
    if name.is_empty() || name.len() > 1024 {
        return Err(bad("empty or longer than 1024 bytes"));
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad("a control character or a backslash"));
    }
    if name.starts_with('/') {
        return Err(bad("an absolute path"));
    }
    for part in name.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(bad("an empty, '.' or '..' part"));
        }
        if part.len() > 255 {
            return Err(bad("a part longer than 255 bytes"));
        }
    }
    Ok(())
}

/// The blob name from an `ETag`/`X-Linked-Etag` header: the Hub's sha256 (LFS) or git sha1,
/// possibly quoted or weak (`W/"…"`). Anything else is refused: it would become a file name.
pub fn etag_blob_name(raw: &str) -> anyhow::Result<String> {
    let t = raw.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    let t = t.trim_matches('"');
    if (t.len() == 40 || t.len() == 64) && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(t.to_ascii_lowercase());
    }
    bail!("the server's ETag {raw:?} is not a sha1 or sha256 hash")
}

/// The Hub cache directory: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (what huggingface_hub uses).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    hf_home().join("hub")
}

fn hf_home() -> PathBuf {
    if let Some(d) = std::env::var_os("HF_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache/huggingface")
}

/// `HF_TOKEN`, else the file `HF_TOKEN_PATH`, else `$HF_HOME/token` (huggingface_hub's order).
fn token() -> Option<String> {
    if let Ok(t) = std::env::var("HF_TOKEN")
        && !t.trim().is_empty()
    {
        return Some(t.trim().to_string());
    }
    let path = std::env::var_os("HF_TOKEN_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("token"));
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// The endpoint's origin and the token that may go to it, and nowhere else.
struct Client {
    agent: ureq::Agent,
    endpoint: url::Url,
    token: Option<String>,
    /// Where the token came from, for messages: `HF_TOKEN` or the token file.
    token_from: &'static str,
}

/// A failed request, kept apart so [`explain`] can say what to do about a status.
#[derive(Debug)]
enum HubError {
    Status { code: u16, url: String },
    Other(anyhow::Error),
}

impl From<anyhow::Error> for HubError {
    fn from(e: anyhow::Error) -> Self {
        HubError::Other(e)
    }
}

fn same_origin(a: &url::Url, b: &url::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Where a redirect points (a relative `Location` against the request's URL); http(s) only.
fn redirect_target(
    from: &url::Url,
    resp: &ureq::http::Response<ureq::Body>,
) -> anyhow::Result<url::Url> {
    let code = resp.status().as_u16();
    let loc = resp
        .headers()
        .get("location")
        .with_context(|| format!("HTTP {code} from {} without a Location header", origin(from)))?;
    let loc = loc.to_str().with_context(|| {
        format!("HTTP {code} from {}: a Location header that is not text", origin(from))
    })?;
    let to = from.join(loc).with_context(|| {
        format!("HTTP {code} from {}: Location {loc:?} is not a URL", origin(from))
    })?;
    if to.scheme() != "http" && to.scheme() != "https" {
        bail!("HTTP {code} from {}: a redirect to a {} URL", origin(from), to.scheme());
    }
    Ok(to)
}

/// `scheme://host:port`, for messages (never a path or query, which could carry a signature).
fn origin(u: &url::Url) -> String {
    u.origin().ascii_serialization()
}

impl Client {
    fn new() -> anyhow::Result<Client> {
        let raw = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| "https://huggingface.co".into());
        let endpoint = url::Url::parse(raw.trim().trim_end_matches('/'))
            .with_context(|| format!("HF_ENDPOINT {raw:?} is not a URL"))?;
        if !matches!(endpoint.scheme(), "http" | "https")
            || endpoint.host_str().is_none()
            || !endpoint.username().is_empty()
            || endpoint.password().is_some()
            || endpoint.query().is_some()
            || endpoint.fragment().is_some()
        {
            bail!(
                "HF_ENDPOINT {raw:?} must be an http(s) address: no user, password, query or fragment"
            );
        }
        let token = token();
        let token_from = if std::env::var("HF_TOKEN").is_ok_and(|t| !t.trim().is_empty()) {
            "HF_TOKEN"
        } else {
            "the Hub token file"
        };
        if let Some(t) = &token {
            distill_data::redact::register_secret(t);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // Redirects are followed here, one by one: each target is checked and the token
            // stays with the endpoint's origin.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            // A server that stops sending mid-body: the download resumes (a new try).
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(format!("distill/{}", env!("CARGO_PKG_VERSION")))
            // Ranges and sizes count the file's own bytes, never a compressed stream's.
            .accept_encoding("identity")
            .build()
            .into();
        Ok(Client { agent, endpoint, token, token_from })
    }

    /// `ENDPOINT/SEG/SEG/…`, each segment escaped as one (a revision's '/' becomes %2F, as
    /// huggingface_hub quotes it).
    fn url<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> url::Url {
        let mut u = self.endpoint.clone();
        {
            let mut s = u.path_segments_mut().expect("an http(s) URL has a path");
            s.pop_if_empty();
            for seg in segments {
                s.push(seg);
            }
        }
        u
    }

    /// One GET (or HEAD), without following redirects; the token only to the endpoint's origin.
    fn request(
        &self,
        u: &url::Url,
        range: Option<&str>,
        head: bool,
    ) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let mut req = if head { self.agent.head(u.as_str()) } else { self.agent.get(u.as_str()) };
        if let Some(r) = range {
            req = req.header("Range", r);
        }
        if let Some(t) = &self.token
            && same_origin(u, &self.endpoint)
        {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        req.call().map_err(|e| {
            anyhow::anyhow!("{}: {}", origin(u), distill_data::redact::redact(&e.to_string()))
        })
    }

    /// A GET that follows at most [`MAX_REDIRECTS`] redirects and ends in a 2xx answer, with the
    /// URL that gave it.
    fn get(
        &self,
        start: &url::Url,
        range: Option<&str>,
    ) -> Result<(url::Url, ureq::http::Response<ureq::Body>), HubError> {
        let mut u = start.clone();
        for _ in 0..=MAX_REDIRECTS {
            let resp = self.request(&u, range, false)?;
            let code = resp.status().as_u16();
            match code {
                200..=299 => return Ok((u, resp)),
                301 | 302 | 303 | 307 | 308 => u = redirect_target(&u, &resp)?,
                _ => return Err(HubError::Status { code, url: origin(&u) }),
            }
        }
        Err(HubError::Other(anyhow::anyhow!(
            "more than {MAX_REDIRECTS} redirects from {} (a loop?)",
            origin(start)
        )))
    }

    /// The repository's listing at a revision: its commit and its files, each checked.
    fn listing(&self, spec: &RepoSpec) -> anyhow::Result<(String, Vec<String>)> {
        #[derive(serde::Deserialize)]
        struct Sibling {
            rfilename: String,
        }
        #[derive(serde::Deserialize)]
        struct Info {
            sha: String,
            #[serde(default)]
            siblings: Vec<Sibling>,
        }
        let u = self.url(
            ["api", spec.kind.api()]
                .into_iter()
                .chain(spec.id.split('/'))
                .chain(["revision", spec.revision.as_str()]),
        );
        let (_, resp) = self.get(&u, None).map_err(|e| explain(e, spec, "listing files", self))?;
        let info: Info = resp
            .into_body()
            .into_with_config()
            .limit(LISTING_LIMIT)
            .read_json()
            .map_err(|e| anyhow::anyhow!("{}: listing files: {e}", spec.shown()))?;
        if !is_commit(&info.sha) {
            bail!("{}: the listing's commit {:?} is not a 40-digit hash", spec.shown(), info.sha);
        }
        // A name that could not be a path inside the snapshot is never fetched: skipped, and said.
        let (files, unsafe_names): (Vec<String>, Vec<String>) = info
            .siblings
            .into_iter()
            .map(|s| s.rfilename)
            .partition(|f| check_repo_file(f).is_ok());
        if !unsafe_names.is_empty() {
            let shown: Vec<String> = unsafe_names
                .iter()
                .take(3)
                .map(|f| format!("{:#}", check_repo_file(f).unwrap_err()))
                .collect();
            eprintln!(
                "{}: the server listed {} unsafe file name(s), skipped: {}",
                spec.shown(),
                unsafe_names.len(),
                distill_data::redact::redact(&shown.join("; "))
            );
        }
        Ok((info.sha.to_ascii_lowercase(), files))
    }

    /// A file's blob name, size and where its bytes are, from a HEAD request to
    /// `/resolve/COMMIT/FILE`, as huggingface_hub asks (a relative redirect, such as a renamed
    /// repository's, is followed with the token; an LFS file's redirect to its bytes is not
    /// followed here).
    fn metadata(&self, pinned: &RepoSpec, file: &str) -> Result<Meta, HubError> {
        let prefix = format!("{}{}", pinned.kind.url_prefix(), pinned.id);
        let start = self.url(
            prefix.split('/').chain(["resolve", pinned.revision.as_str()]).chain(file.split('/')),
        );
        let mut u = start.clone();
        for _ in 0..=MAX_REDIRECTS {
            let resp = self.request(&u, None, true)?;
            let code = resp.status().as_u16();
            let h =
                |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
            if let Some(c) = h("x-repo-commit")
                && !c.eq_ignore_ascii_case(&pinned.revision)
            {
                return Err(HubError::Other(anyhow::anyhow!(
                    "the server answered for commit {c:?}, not the listing's {}",
                    pinned.revision
                )));
            }
            let redirect = matches!(code, 301 | 302 | 303 | 307 | 308);
            // An LFS file: the Hub's answer names the blob and redirects to its bytes.
            if redirect && let Some(e) = h("x-linked-etag") {
                let size = h("x-linked-size").and_then(|s| s.trim().parse().ok());
                let location = redirect_target(&u, &resp)?;
                return Ok(Meta { etag: etag_blob_name(&e)?, size, location });
            }
            match code {
                200..=299 => {
                    let etag = h("x-linked-etag")
                        .or_else(|| h("etag"))
                        .with_context(|| format!("{}: no ETag for {file}", origin(&u)))?;
                    // The size: X-Linked-Size, else the HEAD answer's Content-Length.
                    let size = h("x-linked-size")
                        .or_else(|| h("content-length"))
                        .and_then(|s| s.trim().parse().ok());
                    return Ok(Meta { etag: etag_blob_name(&etag)?, size, location: u });
                }
                _ if redirect => u = redirect_target(&u, &resp)?,
                _ => return Err(HubError::Status { code, url: origin(&u) }),
            }
        }
        Err(HubError::Other(anyhow::anyhow!(
            "more than {MAX_REDIRECTS} redirects from {} (a loop?)",
            origin(&start)
        )))
    }

    /// The bytes at `meta.location` into `part`, resuming what is there, never past `size`.
    fn download(&self, meta: &Meta, size: u64, part: &Path, label: &str) -> Result<(), HubError> {
        let bar = crate::progress::bar(Some(size), "bytes");
        bar.set_message(label.to_string());
        let mut last_err = None;
        for attempt in 0..DOWNLOAD_TRIES {
            let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
            if have > size {
                std::fs::remove_file(part).ok();
                have = 0;
            }
            if have == size {
                // (An empty file has nothing to fetch, but its blob is still made.)
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(part)
                    .with_context(|| format!("opening {}", part.display()))?;
                bar.finish_and_clear();
                return Ok(());
            }
            if attempt > 0 {
                eprintln!("{label}: resuming at {have} of {size} bytes (try {})", attempt + 1);
                std::thread::sleep(Duration::from_millis(500 * attempt as u64));
            }
            let range = (have > 0).then(|| format!("bytes={have}-"));
            let (_, resp) = match self.get(&meta.location, range.as_deref()) {
                Ok(r) => r,
                Err(HubError::Other(e)) if attempt + 1 < DOWNLOAD_TRIES => {
                    last_err = Some(e);
                    continue;
                }
                // Busy or failing for a moment: another try.
                Err(HubError::Status { code, url })
                    if (code == 429 || code >= 500) && attempt + 1 < DOWNLOAD_TRIES =>
                {
                    last_err = Some(anyhow::anyhow!("HTTP {code} from {url}"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let code = resp.status().as_u16();
            let from = if code == 206 {
                let cr = resp.headers().get("content-range").and_then(|v| v.to_str().ok());
                let start = cr
                    .and_then(|r| r.strip_prefix("bytes "))
                    .and_then(|r| r.split('-').next())
                    .and_then(|a| a.trim().parse::<u64>().ok());
                if start != Some(have) {
                    return Err(HubError::Other(anyhow::anyhow!(
                        "asked for bytes from {have}, the server answered Content-Range {cr:?}"
                    )));
                }
                have
            } else {
                // The whole file again (the server ignored the range).
                0
            };
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(from == 0)
                .append(from > 0)
                .open(part)
                .with_context(|| format!("opening {}", part.display()))?;
            bar.set_position(from);
            // One byte past what is left tells a body longer than announced.
            let left = size - from;
            let mut body = resp.into_body().into_reader().take(left.saturating_add(1));
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            let cut = loop {
                match body.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(k) => {
                        if got + k as u64 > left {
                            // What came is not what was announced: not kept for a resume.
                            drop(out);
                            std::fs::remove_file(part).ok();
                            return Err(HubError::Other(anyhow::anyhow!(
                                "the server sent more than the {size} bytes it announced"
                            )));
                        }
                        out.write_all(&buf[..k])
                            .with_context(|| format!("writing {}", part.display()))?;
                        got += k as u64;
                        bar.inc(k as u64);
                    }
                    Err(e) => break Some(e),
                }
            };
            out.flush().with_context(|| format!("writing {}", part.display()))?;
            match cut {
                None if got == left => {
                    bar.finish_and_clear();
                    return Ok(());
                }
                None => {
                    last_err = Some(anyhow::anyhow!(
                        "the connection closed at {} of {size} bytes",
                        from + got
                    ));
                }
                Some(e) => last_err = Some(anyhow::anyhow!("reading the body: {e}")),
            }
        }
        bar.finish_and_clear();
        Err(HubError::Other(
            last_err
                .unwrap_or_else(|| anyhow::anyhow!("no bytes"))
                .context(format!("{DOWNLOAD_TRIES} tries")),
        ))
    }
}

/// What `/resolve/` says about a file.
struct Meta {
    /// The checked blob name (sha256 or git sha1).
    etag: String,
    size: Option<u64>,
    /// Where its bytes are (a CDN for LFS files).
    location: url::Url,
}

/// A Hub error, with what the user can do about it.
fn explain(e: HubError, spec: &RepoSpec, what: &str, client: &Client) -> anyhow::Error {
    let token_set = client.token.is_some();
    let (code, from) = match e {
        HubError::Status { code, url } => (code, url),
        HubError::Other(e) => {
            return anyhow::anyhow!(
                "{}: {what}: {}",
                spec.shown(),
                distill_data::redact::redact(&format!("{e:#}"))
            );
        }
    };
    match code {
        401 | 403 if !token_set => anyhow::anyhow!(
            "{}: {what}: HTTP {code} from {from}: the repository is gated or private; accept its terms on the Hub and set HF_TOKEN to an access token (or log in with `hf auth login`)",
            spec.shown()
        ),
        401 | 403 if from == origin(&client.endpoint) => anyhow::anyhow!(
            "{}: {what}: HTTP {code} from {from}: {} is set but has no access to this repository (gated: accept its terms on the Hub with the token's account)",
            spec.shown(),
            client.token_from
        ),
        404 => anyhow::anyhow!(
            "{}: {what}: HTTP 404 from {from}: no such repository, revision or file{}",
            spec.shown(),
            if token_set {
                ""
            } else {
                " (a private repository also answers 404 without HF_TOKEN)"
            }
        ),
        _ => anyhow::anyhow!("{}: {what}: HTTP {code} from {from}", spec.shown()),
    }
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
    let client = Client::new()?;
    let (sha, all) = client.listing(spec)?;
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
    let pinned = RepoSpec { revision: sha.clone(), ..spec.clone() };
    let n = files.len();
    for (i, f) in files.iter().enumerate() {
        fetch_one(&client, &pinned, f, i + 1, n)?;
    }
    set_ref(spec, &sha)?;
    Ok(spec.dir().join("snapshots").join(&sha))
}

/// Joins checked parts under `base`, and checks again that nothing climbs out of it.
fn inside(base: &Path, rel: &str) -> anyhow::Result<PathBuf> {
    let r = Path::new(rel);
    if !r.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("{rel:?} would leave {}", base.display());
    }
    Ok(base.join(r))
}

/// One file of a pinned revision: from the cache, else downloaded (resuming a partial one) and
/// checked against its ETag; returns `snapshots/COMMIT/FILE`.
fn fetch_one(
    client: &Client,
    pinned: &RepoSpec,
    file: &str,
    i: usize,
    n: usize,
) -> anyhow::Result<PathBuf> {
    check_repo_file(file)?;
    let repo = pinned.dir();
    let snap = inside(&repo.join("snapshots").join(&pinned.revision), file)?;
    if snap.exists() {
        return Ok(snap);
    }
    let what = format!("downloading {file}");
    let mut meta = client.metadata(pinned, file).map_err(|e| explain(e, pinned, &what, client))?;
    let blobs = repo.join("blobs");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let blob = blobs.join(&meta.etag);
    if !blob.exists() {
        // Another process (distill, or huggingface_hub) may be writing the same blob: wait for it.
        let _lock = lock_blob(pinned, &meta.etag)?;
        if !blob.exists() {
            let part = blobs.join(format!("{}.incomplete", meta.etag));
            let label = format!("[{i}/{n}] {file}");
            let mut refreshed = false;
            loop {
                let size = meta.size.with_context(|| {
                    format!("{}: {what}: the server announced no size", pinned.shown())
                })?;
                match client.download(&meta, size, &part, &label) {
                    Ok(()) => break,
                    // A signed CDN address that expired during a long download: ask again.
                    Err(HubError::Status { code: 403 | 410, url })
                        if !refreshed && url != origin(&client.endpoint) =>
                    {
                        refreshed = true;
                        let again = client
                            .metadata(pinned, file)
                            .map_err(|e| explain(e, pinned, &what, client))?;
                        if again.etag != meta.etag {
                            bail!(
                                "{}: {what}: the file changed during the download",
                                pinned.shown()
                            );
                        }
                        meta = again;
                    }
                    Err(e) => return Err(explain(e, pinned, &what, client)),
                }
            }
            verify(&part, &meta.etag).with_context(|| format!("{}: {file}", pinned.shown()))?;
            std::fs::rename(&part, &blob)
                .with_context(|| format!("moving into {}", blob.display()))?;
        }
    }
    // snapshots/COMMIT/a/b.json → ../../../blobs/ETAG, relative as huggingface_hub makes it.
    let depth = file.split('/').count();
    let target = PathBuf::from(format!("{}blobs/{}", "../".repeat(depth + 1), meta.etag));
    let parent = snap.parent().expect("a snapshot file has a folder");
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    if std::fs::symlink_metadata(&snap).is_ok_and(|m| m.file_type().is_symlink()) {
        // A dangling link (its blob was deleted): replaced.
        std::fs::remove_file(&snap).ok();
    }
    match std::os::unix::fs::symlink(&target, &snap) {
        Ok(()) => {}
        // Another process linked it first, to the same blob.
        Err(e)
            if e.kind() == std::io::ErrorKind::AlreadyExists
                && std::fs::read_link(&snap).is_ok_and(|t| t == target) => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("linking {} to {}", snap.display(), target.display()));
        }
    }
    Ok(snap)
}

/// huggingface_hub's per-blob lock, `.locks/models--ORG--NAME/ETAG.lock` in the cache (an
/// flock, as its `filelock` takes on Unix), held while the blob is downloaded and moved in.
fn lock_blob(spec: &RepoSpec, etag: &str) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let dir = cache_dir().join(".locks").join(spec.folder());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{etag}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; the lock ends when the file is dropped.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("locking {}", path.display()));
    }
    Ok(f)
}

/// Point `refs/REV` at the fetched commit, so `hf:ORG/NAME@REV` resolves offline next time.
fn set_ref(spec: &RepoSpec, sha: &str) -> anyhow::Result<()> {
    if spec.revision.eq_ignore_ascii_case(sha) {
        return Ok(());
    }
    check_revision(&spec.revision)?;
    let path = inside(&spec.dir().join("refs"), &spec.revision)?;
    std::fs::create_dir_all(path.parent().expect("refs/REV has a folder"))
        .with_context(|| format!("creating {}", path.display()))?;
    std::fs::write(&path, sha)
        .with_context(|| format!("writing the Hub cache's ref {}", path.display()))
}

/// The commit a revision names in the cache (`refs/REV`), or the revision if it is one.
fn cached_commit(s: &RepoSpec) -> Option<String> {
    if is_commit(&s.revision) {
        return Some(s.revision.to_ascii_lowercase());
    }
    let path = inside(&s.dir().join("refs"), &s.revision).ok()?;
    let sha = std::fs::read_to_string(path).ok()?;
    let sha = sha.trim();
    is_commit(sha).then(|| sha.to_ascii_lowercase())
}

/// A downloaded file against its blob's name (the ETag): sha256 for LFS files (64 hex digits),
/// the git blob sha1 otherwise (40). A mismatch deletes it.
fn verify(file: &Path, etag: &str) -> anyhow::Result<()> {
    let got = match etag.len() {
        64 => hash_file::<sha2::Sha256>(file, None)?,
        _ => {
            let len = std::fs::metadata(file)?.len();
            hash_file::<sha1::Sha1>(file, Some(format!("blob {len}\0").as_bytes()))?
        }
    };
    if !got.eq_ignore_ascii_case(etag) {
        let _ = std::fs::remove_file(file);
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

/// A model given as `hf:ORG/NAME[@REV]`: its snapshot directory, fetched on first use.
pub fn resolve_model(spec: &str) -> anyhow::Result<PathBuf> {
    let s = RepoSpec::parse(spec, RepoKind::Model)?;
    if let Some(commit) = cached_commit(&s) {
        let dir = s.dir().join("snapshots").join(commit);
        if dir.join("config.json").exists() {
            return Ok(dir);
        }
    }
    fetch_repo(&s, &[])
}

/// A file given as `hf://datasets/ORG/NAME[@REV]/PATH` (or `hf://ORG/NAME[@REV]/PATH` for a model
/// repository's file): its path in the cache, fetched on first use.
pub fn resolve_file(uri: &str) -> anyhow::Result<PathBuf> {
    let rest = uri.strip_prefix("hf://").context("not an hf:// address")?;
    let (kind, rest) = match rest.strip_prefix("datasets/") {
        Some(r) => (RepoKind::Dataset, r),
        None => (RepoKind::Model, rest),
    };
    let mut parts = rest.splitn(3, '/');
    let (org, name, file) = match (parts.next(), parts.next(), parts.next()) {
        (Some(o), Some(n), Some(f)) if !f.is_empty() => (o, n, f),
        _ => bail!("{uri:?}: expected hf://datasets/ORG/NAME[@REV]/PATH/IN/REPO"),
    };
    let s = RepoSpec::parse(&format!("{org}/{name}"), kind)?;
    check_repo_file(file).with_context(|| format!("{uri:?}"))?;
    if let Some(commit) = cached_commit(&s) {
        let p = inside(&s.dir().join("snapshots").join(commit), file)?;
        if p.exists() {
            return Ok(p);
        }
    }
    let client = Client::new()?;
    let (sha, files) = client.listing(&s)?;
    if !files.iter().any(|x| x == file) {
        bail!("{}: has no file {file:?}", s.shown());
    }
    let pinned = RepoSpec { revision: sha.clone(), ..s.clone() };
    let path = fetch_one(&client, &pinned, file, 1, 1)?;
    set_ref(&s, &sha)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = RepoSpec::parse("Qwen/Qwen2.5-1.5B@v1.0", RepoKind::Model).unwrap();
        assert_eq!((s.id.as_str(), s.revision.as_str()), ("Qwen/Qwen2.5-1.5B", "v1.0"));
        assert_eq!(RepoSpec::parse("gpt2", RepoKind::Model).unwrap().revision, "main");
        assert!(RepoSpec::parse("o/n@refs/pr/1", RepoKind::Model).is_ok());
        for bad in [
            "a/b/c",
            "../x",
            "a/",
            "a b/c",
            "a/b@",
            "o/n@../../../../tmp/x",
            "o/n@/etc/passwd",
            "o/n@a//b",
            "o/n@.hidden",
            "o/n@x.lock",
            "o/n@a\0b",
            "o/n@a b",
        ] {
            assert!(RepoSpec::parse(bad, RepoKind::Model).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names_etags_and_commits() {
        for ok in ["config.json", "data/train-00000-of-00002.parquet", "a b/ü.json", "..x"] {
            check_repo_file(ok).unwrap();
        }
        for bad in
            ["", "/etc/passwd", "../x", "sub/../x", "a//b", "./a", "a/.", "a\0b", "a\\b", "a\nb"]
        {
            assert!(check_repo_file(bad).is_err(), "{bad:?}");
        }
        let sha1 = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(etag_blob_name(&format!("\"{sha1}\"")).unwrap(), sha1);
        assert_eq!(etag_blob_name(&format!("W/\"{}\"", sha1.to_uppercase())).unwrap(), sha1);
        for bad in ["\"/tmp/victim.txt\"", "../../x", "\"abc\"", "", &format!("{sha1}/x")] {
            assert!(etag_blob_name(bad).is_err(), "{bad:?}");
        }
        assert!(is_commit(sha1) && !is_commit("../../x") && !is_commit(&sha1[1..]));
    }

    #[test]
    fn nothing_joins_outside() {
        let base = Path::new("/cache/snap");
        assert_eq!(inside(base, "a/b.json").unwrap(), base.join("a/b.json"));
        for bad in ["../x", "/abs", "a/../../x"] {
            assert!(inside(base, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_token_stays_with_its_origin() {
        let e = url::Url::parse("https://huggingface.co").unwrap();
        let same = url::Url::parse("https://huggingface.co:443/x/resolve/main/a").unwrap();
        assert!(same_origin(&e, &same));
        for other in [
            "https://cdn-lfs.huggingface.co/x",
            "http://huggingface.co/x",
            "https://huggingface.co:8443/x",
            "https://huggingface.co.evil.example/x",
        ] {
            assert!(!same_origin(&e, &url::Url::parse(other).unwrap()), "{other}");
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
