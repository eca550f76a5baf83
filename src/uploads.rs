//! The journal of multipart uploads in flight, so that an upload a killed narpush
//! left behind (SIGKILL, OOM, power loss: no chance to abort it) is aborted by the
//! next run instead of being billed forever. One file per upload,
//! `STATE_DIR/uploads/<pid>.<n>`, holding three lines: the cache it belongs to
//! (`Client::describe`), the key and the upload id. It is written when the upload is
//! created and removed once the upload completes; an upload that failed keeps its
//! entry, so the next run retries the abort (a 404 then just clears it).
//!
//! An entry is stale when its process is gone (no `/proc/<pid>`, or a zombie); without `/proc`
//! nothing is ever considered stale, since aborting a live upload would break it.
//! Everything here is best effort: a journal that cannot be written costs at most an
//! orphaned upload, never a push.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The journal of one cache in one state directory.
#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
    target: String,
}

/// An upload a dead process left behind.
#[derive(Debug, PartialEq, Eq)]
pub struct Stale {
    pub entry: PathBuf,
    pub key: String,
    pub upload_id: String,
}

impl Journal {
    /// The journal under `state_dir` for the cache described as `target`.
    pub fn new(state_dir: &Path, target: String) -> Journal {
        Journal {
            dir: state_dir.join("uploads"),
            target,
        }
    }

    /// Note an upload in flight; returns its entry (`None` when it cannot be written).
    pub fn record(&self, key: &str, upload_id: &str) -> Option<PathBuf> {
        if [key, upload_id].iter().any(|s| s.contains(['\n', '\r'])) {
            return None;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .ok()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}.{n}", std::process::id()));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .ok()?;
        f.write_all(format!("{}\n{key}\n{upload_id}\n", self.target).as_bytes())
            .ok()?;
        Some(path)
    }

    /// Uploads of this cache whose process is gone.
    pub fn stale(&self) -> Vec<Stale> {
        if !Path::new("/proc/self").exists() {
            return Vec::new();
        }
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            // A zombie (killed, not yet reaped) is as dead as a missing process.
            if crate::sys::process_alive(pid) {
                continue;
            }
            let Ok(text) = fs::read_to_string(e.path()) else {
                continue;
            };
            if let Some(s) = parse_entry(&text, &self.target, e.path()) {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.entry.cmp(&b.entry));
        out
    }
}

/// An entry's contents, if they are for `target`.
fn parse_entry(text: &str, target: &str, entry: PathBuf) -> Option<Stale> {
    let mut lines = text.lines();
    let (t, key, id) = (lines.next()?, lines.next()?, lines.next()?);
    (t == target && !key.is_empty() && !id.is_empty()).then(|| Stale {
        entry,
        key: key.to_string(),
        upload_id: id.to_string(),
    })
}

/// Drop an entry (its upload completed or was aborted).
pub fn forget(entry: &Path) {
    let _ = fs::remove_file(entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_only_dead_processes_are_stale() {
        let dir = std::env::temp_dir().join(format!("narpush-uploads-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let j = Journal::new(&dir, "bucket 'b' at http://h:1".into());
        let mine = j.record("nar/x.nar", "id-1").unwrap();
        assert!(j.stale().is_empty(), "this process is alive");
        // An entry of a process that cannot exist (pid above the kernel's maximum).
        let dead = dir.join("uploads/4294967295.0");
        fs::write(&dead, "bucket 'b' at http://h:1\nnar/y.nar\nid-2\n").unwrap();
        fs::write(
            dir.join("uploads/4294967295.1"),
            "bucket 'c' at http://h:1\nk\ni\n",
        )
        .unwrap();
        fs::write(dir.join("uploads/4294967295.2"), "truncated").unwrap();
        assert_eq!(
            j.stale(),
            vec![Stale {
                entry: dead.clone(),
                key: "nar/y.nar".into(),
                upload_id: "id-2".into()
            }]
        );
        forget(&dead);
        forget(&mine);
        assert!(j.stale().is_empty());
        assert!(j.record("a\nb", "id").is_none());
        let _ = fs::remove_dir_all(&dir);
    }
}
