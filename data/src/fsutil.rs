//! Durable file writes: temp file, fsync, rename, fsync the directory.
//!
//! A reader never sees a half-written file under its final name: it sees the old file or the new one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// The temp name used for `path` while it is written: `NAME.tmp` in the same directory.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Write `bytes` to `path` atomically and durably.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    commit_rename(&tmp, path)
}

/// Rename a finished, fsynced temp file into place and make the rename durable.
pub fn commit_rename(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).at(path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Start writing a directory under the temp path `tmp` (beside its destination): a stale one
/// from a crashed writer is removed first.
pub fn fresh_dir(tmp: &Path) -> Result<()> {
    if tmp.exists() {
        fs::remove_dir_all(tmp).at(tmp)?;
    }
    fs::create_dir_all(tmp).at(tmp)
}

/// Publish the directory written at `tmp` as `dst` in one rename, durably: `files` (those written
/// inside `tmp`) are fsynced, an existing `dst` is moved aside and removed only once the new one is
/// in place, and the parent directory is fsynced. A reader sees the old directory or the new one,
/// never a mix. Export and checkpoints both publish this way.
pub fn publish_dir(tmp: &Path, dst: &Path, files: &[PathBuf]) -> Result<()> {
    for f in files {
        File::open(f).and_then(|f| f.sync_all()).at(f)?;
    }
    let parent = dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if dst.exists() {
        let mut name = dst.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".old-{}", std::process::id()));
        let old = parent.join(name);
        fs::rename(dst, &old).at(dst)?;
        fs::rename(tmp, dst).at(dst)?;
        fs::remove_dir_all(&old).at(&old)?;
    } else {
        fs::rename(tmp, dst).at(dst)?;
    }
    sync_dir(parent)
}

/// fsync a directory so that renames and creations inside it survive a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}
