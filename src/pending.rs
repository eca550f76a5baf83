//! The durable "push later" list: store paths that could not be pushed yet, one
//! per line in `STATE_DIR/pending`, pushed by `narpush retry`.
//!
//! Many narpush processes may touch the list at once (Nix runs post-build-hooks
//! concurrently), so every change happens under an exclusive `flock` on a separate
//! lock file, `STATE_DIR/pending.lock` (a separate file, because `remove` replaces
//! the list by rename and a lock on the replaced file would protect nothing).
//! `append` adds only lines not already present and fsyncs; `remove` re-reads under
//! the lock and writes the remainder to a temporary file, fsyncs and renames it into
//! place, so lines appended by others meanwhile are never lost. The directory is
//! created with mode 0700 and the files with 0600.
//!
//! Beside the list, `STATE_DIR/pending.since` notes when each line was first queued
//! (`<unix seconds> <path>`, best effort, pruned by `remove`), for `narpush status`.
//! The list itself stays one path per line, as earlier versions wrote it.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The pending list in one state directory.
#[derive(Debug, Clone)]
pub struct PendingList {
    dir: PathBuf,
}

impl PendingList {
    /// Use `dir` as the state directory, creating it (mode 0700) if missing.
    pub fn open(dir: &Path) -> Result<PendingList> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("create state directory", dir, e))?;
        Ok(PendingList {
            dir: dir.to_path_buf(),
        })
    }

    /// The list file, `STATE_DIR/pending`.
    pub fn path(&self) -> PathBuf {
        self.dir.join("pending")
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("pending.lock")
    }

    fn tmp_path(&self) -> PathBuf {
        self.dir.join("pending.tmp")
    }

    fn since_path(&self) -> PathBuf {
        self.dir.join("pending.since")
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Run `f` with the list's exclusive lock held and its current entries: whatever
    /// `f` does (e.g. release the pusher lock) happens before any append that follows.
    pub fn locked<R>(&self, f: impl FnOnce(Vec<String>) -> R) -> Result<R> {
        let lock = self
            .lock(true)
            .map_err(|e| Error::io("lock pending list", &self.lock_path(), e))?;
        let text = self
            .read()
            .map_err(|e| Error::io("read pending list", &self.path(), e))?;
        let mut seen = HashSet::new();
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && seen.insert(*l))
            .map(str::to_string)
            .collect();
        let r = f(entries);
        drop(lock);
        Ok(r)
    }

    /// When each listed path was first queued (seconds since the epoch); paths the
    /// side file does not know get the list file's modification time.
    pub fn queued_since(&self, entries: &[String]) -> Vec<i64> {
        let text = std::fs::read_to_string(self.since_path()).unwrap_or_default();
        let mut first: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
        for line in text.lines() {
            if let Some((t, p)) = line.split_once(' ') {
                if let Ok(t) = t.parse::<i64>() {
                    first.entry(p).or_insert(t);
                }
            }
        }
        let mtime = std::fs::metadata(self.path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        entries
            .iter()
            .map(|e| first.get(e.as_str()).copied().unwrap_or(mtime))
            .collect()
    }

    fn lock(&self, exclusive: bool) -> io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.lock_path())?;
        if exclusive {
            f.lock()?;
        } else {
            f.lock_shared()?;
        }
        Ok(f)
    }

    /// Read the list file; a missing file is an empty list.
    fn read(&self) -> io::Result<String> {
        match File::open(self.path()) {
            Ok(mut f) => {
                let mut s = String::new();
                f.read_to_string(&mut s)?;
                Ok(s)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e),
        }
    }

    /// Record `paths` (those not already listed) durably. On failure nothing is
    /// promised: the error names the list and says the paths were not recorded.
    pub fn append(&self, paths: &[String]) -> Result<()> {
        let paths: Vec<&str> = paths
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .collect();
        if paths.is_empty() {
            return Ok(());
        }
        if let Some(bad) = paths.iter().find(|p| p.contains(['\n', '\r'])) {
            return Err(Error::Other(format!(
                "store path {bad:?} contains a line break; it was NOT recorded in {}",
                self.path().display()
            )));
        }
        self.append_inner(&paths).map_err(|e| Error::Io {
            context: format!(
                "could not record {} store path(s) to push later in {} (they were NOT recorded; \
                 push them by hand or fix the state directory)",
                paths.len(),
                self.path().display()
            ),
            source: e,
        })
    }

    fn append_inner(&self, paths: &[&str]) -> io::Result<()> {
        let _lock = self.lock(true)?;
        let existing = self.read()?;
        let mut listed: HashSet<&str> = existing.lines().collect();
        let mut buf = String::new();
        // A crash in the middle of an earlier append may have left a partial line.
        if !existing.is_empty() && !existing.ends_with('\n') {
            buf.push('\n');
        }
        for p in paths {
            if listed.insert(p) {
                buf.push_str(p);
                buf.push('\n');
            }
        }
        if buf.trim().is_empty() {
            return Ok(());
        }
        let created = existing.is_empty() && !self.path().exists();
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(self.path())?;
        f.write_all(buf.as_bytes())?;
        f.sync_all()?;
        if created {
            sync_dir(&self.dir)?;
        }
        // Best effort, not synced: only `status` reads it.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let since: String = buf
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| format!("{now} {l}\n"))
            .collect();
        if let Ok(mut s) = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(self.since_path())
        {
            let _ = s.write_all(since.as_bytes());
        }
        Ok(())
    }

    /// The listed paths, in order, without duplicates or blank lines.
    pub fn load(&self) -> Result<Vec<String>> {
        let text = self
            .lock(false)
            .and_then(|_lock| self.read())
            .map_err(|e| Error::io("read pending list", &self.path(), e))?;
        let mut seen = HashSet::new();
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && seen.insert(*l))
            .map(str::to_string)
            .collect())
    }

    /// Drop exactly the paths in `done`, keeping everything else, including lines
    /// appended since the caller's `load`.
    pub fn remove(&self, done: &[String]) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        self.remove_inner(done).map_err(|e| {
            Error::io(
                "update pending list (pushed paths are still listed and will be pushed again)",
                &self.path(),
                e,
            )
        })
    }

    fn remove_inner(&self, done: &[String]) -> io::Result<()> {
        let _lock = self.lock(true)?;
        let text = self.read()?;
        let done: HashSet<&str> = done.iter().map(|d| d.trim()).collect();
        let mut seen = HashSet::new();
        let mut keep = String::new();
        for line in text.lines().map(str::trim) {
            if !line.is_empty() && !done.contains(line) && seen.insert(line) {
                keep.push_str(line);
                keep.push('\n');
            }
        }
        if keep == text {
            return Ok(());
        }
        let tmp = self.tmp_path();
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(keep.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.path())?;
        sync_dir(&self.dir)?;
        self.prune_since(&seen);
        Ok(())
    }

    /// Keep only the side-file lines of paths still listed (best effort).
    fn prune_since(&self, listed: &HashSet<&str>) {
        let Ok(text) = std::fs::read_to_string(self.since_path()) else {
            return;
        };
        let keep: String = text
            .lines()
            .filter(|l| l.split_once(' ').is_some_and(|(_, p)| listed.contains(p)))
            .map(|l| format!("{l}\n"))
            .collect();
        let tmp = self.dir.join("pending.since.tmp");
        if std::fs::write(&tmp, keep).is_ok() {
            let _ = std::fs::rename(&tmp, self.since_path());
        }
    }
}

/// Make a rename or a file creation in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("narpush-pending-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn p(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn append_load_remove() {
        let dir = tmpdir("basic").join("state");
        let list = PendingList::open(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(list.load().unwrap(), Vec::<String>::new());
        list.append(&[p("/nix/store/a"), p("/nix/store/b"), p("/nix/store/a")])
            .unwrap();
        list.append(&[p("/nix/store/b"), p("/nix/store/c")])
            .unwrap();
        list.append(&[]).unwrap();
        assert_eq!(
            list.load().unwrap(),
            vec![p("/nix/store/a"), p("/nix/store/b"), p("/nix/store/c")]
        );
        assert_eq!(
            std::fs::read_to_string(list.path()).unwrap(),
            "/nix/store/a\n/nix/store/b\n/nix/store/c\n"
        );
        assert_eq!(
            std::fs::metadata(list.path()).unwrap().permissions().mode() & 0o777,
            0o600
        );
        list.remove(&[p("/nix/store/b"), p("/nix/store/zzz")])
            .unwrap();
        assert_eq!(
            list.load().unwrap(),
            vec![p("/nix/store/a"), p("/nix/store/c")]
        );
        assert_eq!(
            std::fs::metadata(list.path()).unwrap().permissions().mode() & 0o777,
            0o600
        );
        list.remove(&[p("/nix/store/a"), p("/nix/store/c")])
            .unwrap();
        assert_eq!(list.load().unwrap(), Vec::<String>::new());
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn line_breaks_in_paths_are_refused() {
        let dir = tmpdir("linebreak");
        let list = PendingList::open(&dir).unwrap();
        let e = list
            .append(&[p("/nix/store/a"), p("/nix/store/b\n/nix/store/c")])
            .unwrap_err();
        assert!(e.to_string().contains("NOT recorded"), "{e}");
        assert_eq!(list.load().unwrap(), Vec::<String>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn partial_last_line_is_not_glued_to_the_next() {
        let dir = tmpdir("partial");
        let list = PendingList::open(&dir).unwrap();
        std::fs::write(list.path(), "/nix/store/a\n/nix/store/b").unwrap();
        list.append(&[p("/nix/store/c")]).unwrap();
        assert_eq!(
            list.load().unwrap(),
            vec![p("/nix/store/a"), p("/nix/store/b"), p("/nix/store/c")]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_appends_lose_and_duplicate_nothing() {
        let dir = tmpdir("concurrent");
        PendingList::open(&dir).unwrap();
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    // Each thread has its own PendingList (own lock file descriptions),
                    // like separate processes; the sets overlap between threads.
                    let list = PendingList::open(&dir).unwrap();
                    for round in 0..20 {
                        let paths: Vec<String> = (0..5)
                            .map(|i| format!("/nix/store/p{}", (t * 7 + round * 5 + i) % 300))
                            .collect();
                        list.append(&paths).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut want: Vec<String> = (0..16)
            .flat_map(|t| (0..20).flat_map(move |r| (0..5).map(move |i| (t * 7 + r * 5 + i) % 300)))
            .map(|n| format!("/nix/store/p{n}"))
            .collect();
        want.sort();
        want.dedup();
        let text = std::fs::read_to_string(dir.join("pending")).unwrap();
        let mut got: Vec<String> = text.lines().map(str::to_string).collect();
        assert!(text.ends_with('\n'));
        got.sort();
        assert_eq!(got, want, "raw file must hold each path exactly once");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remove_while_appending_keeps_new_lines() {
        let dir = tmpdir("remove-append");
        let list = PendingList::open(&dir).unwrap();
        let old: Vec<String> = (0..200).map(|i| format!("/nix/store/old{i}")).collect();
        list.append(&old).unwrap();
        let appender = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let list = PendingList::open(&dir).unwrap();
                for i in 0..200 {
                    list.append(&[format!("/nix/store/new{i}")]).unwrap();
                }
            })
        };
        let remover = {
            let dir = dir.clone();
            let old = old.clone();
            std::thread::spawn(move || {
                let list = PendingList::open(&dir).unwrap();
                for chunk in old.chunks(10) {
                    list.remove(chunk).unwrap();
                }
            })
        };
        appender.join().unwrap();
        remover.join().unwrap();
        let mut got = list.load().unwrap();
        got.sort();
        let mut want: Vec<String> = (0..200).map(|i| format!("/nix/store/new{i}")).collect();
        want.sort();
        assert_eq!(got, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_state_dir_is_an_error_naming_the_file() {
        // A directory named like the lock file makes every write fail, even as root.
        let dir = tmpdir("unwritable");
        let list = PendingList::open(&dir).unwrap();
        std::fs::create_dir(dir.join("pending.lock")).unwrap();
        let e = list.append(&[p("/nix/store/a")]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&format!("{}/pending", dir.display())), "{msg}");
        assert!(msg.contains("NOT recorded"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();

        // A state directory below a regular file cannot be created.
        let base = tmpdir("notadir");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("file"), "").unwrap();
        let bad = base.join("file/state");
        let e = PendingList::open(&bad).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("create state directory {}:", bad.display())),
            "{e}"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn queued_since_is_recorded_and_pruned() {
        let dir = tmpdir("since");
        let list = PendingList::open(&dir).unwrap();
        list.append(&[p("/nix/store/a"), p("/nix/store/b")])
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let t = list.queued_since(&[p("/nix/store/a"), p("/nix/store/b")]);
        assert!(t.iter().all(|t| (now - 5..=now).contains(t)), "{t:?}");
        list.remove(&[p("/nix/store/a")]).unwrap();
        let side = std::fs::read_to_string(dir.join("pending.since")).unwrap();
        assert!(
            !side.contains("/nix/store/a") && side.contains("/nix/store/b"),
            "{side}"
        );
        let n = list.locked(|e| e.len()).unwrap();
        assert_eq!(n, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
