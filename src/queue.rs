//! The hook's side of the queue and the one-pusher protocol.
//!
//! The queue is the pending list (`pending.rs`). At most one process pushes it at a
//! time per state directory: whoever holds an exclusive `flock` on
//! `STATE_DIR/pusher.lock` (the background pusher, `flush`, `retry`). The protocol
//! that makes sure no queued path waits for some later build:
//!
//! * a hook appends its paths under the list lock, then tries the pusher lock
//!   without waiting: if it gets it, nobody pushes, so it lets go and spawns a
//!   pusher (which takes the lock itself, or exits if another one got there first);
//! * a pusher lets go of the pusher lock only *while holding the list lock*, after
//!   seeing the list empty (or, when it gives up, after noting which entries are new).
//!
//! So when a hook's try fails, the holder has not yet made its final check of the
//! list under the list lock, which therefore comes after the hook's append: that
//! holder sees the path. When the try succeeds, the hook starts a pusher whose lock
//! attempt is later still. Either way the path has a pusher.
//!
//! Under systemd the hook spawns nothing: it creates `STATE_DIR/pusher.wake`, which a
//! path unit (`PathExists=`) turns into a start of `narpush-pusher.service`; the
//! pusher removes the file before it reads the list, and systemd checks the path
//! again when the service stops, so a wake made during a run starts the next one.
//!
//! Also here: `pusher.state` (pid, start, progress; read by `status`), process
//! liveness, and the duration syntax of `--give-up-after`, `--timeout`, `--max-age`.

use crate::error::{Error, Result};
use crate::pending::PendingList;
use crate::settings::{env_name, Id};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Held by the one process pushing the queue.
#[derive(Debug)]
pub struct PusherGuard {
    file: File,
}

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("pusher.lock")
}

pub fn wake_path(state_dir: &Path) -> PathBuf {
    state_dir.join("pusher.wake")
}

pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("pusher.state")
}

/// Take the pusher lock without waiting: `None` if another process holds it. The
/// holder's pid is written into the lock file (for the hook's message).
pub fn try_lock_pusher(state_dir: &Path) -> Result<Option<PusherGuard>> {
    let path = lock_path(state_dir);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    match f.try_lock() {
        Ok(()) => {
            let _ = f.set_len(0);
            let _ = f.write_all(format!("{}\n", std::process::id()).as_bytes());
            Ok(Some(PusherGuard { file: f }))
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
    }
}

/// Wait for the pusher lock until `deadline`.
pub fn lock_pusher_until(state_dir: &Path, deadline: Instant) -> Result<Option<PusherGuard>> {
    loop {
        if let Some(g) = try_lock_pusher(state_dir)? {
            return Ok(Some(g));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid written by the current holder of the pusher lock, if any.
pub fn lock_holder(state_dir: &Path) -> Option<u32> {
    let mut s = String::new();
    File::open(lock_path(state_dir))
        .ok()?
        .read_to_string(&mut s)
        .ok()?;
    s.trim().parse().ok()
}

impl PusherGuard {
    /// Let go of the pusher lock under the list lock; returns the entries listed at
    /// that moment that are not in `handled` (paths queued while this run worked,
    /// which nobody else will push unless a pusher is started for them).
    pub fn release(self, list: &PendingList, handled: &[String]) -> Result<Vec<String>> {
        let state = state_path(list.dir());
        list.locked(move |entries| {
            let _ = std::fs::remove_file(&state);
            let _ = self.file.set_len(0);
            drop(self);
            entries
                .into_iter()
                .filter(|e| !handled.contains(e))
                .collect()
        })
    }

    /// Let go of the lock when the list is empty (under the list lock); otherwise
    /// keep it and return the guard with the entries.
    pub fn release_if_empty(
        self,
        list: &PendingList,
    ) -> Result<std::result::Result<(), (PusherGuard, Vec<String>)>> {
        let state = state_path(list.dir());
        list.locked(move |entries| {
            if entries.is_empty() {
                let _ = std::fs::remove_file(&state);
                let _ = self.file.set_len(0);
                drop(self);
                Ok(())
            } else {
                Err((self, entries))
            }
        })
    }
}

/// Create `STATE_DIR/pusher.wake` (for a systemd path unit). Best effort.
pub fn touch_wake(state_dir: &Path) {
    let _ = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(wake_path(state_dir));
}

/// Remove the wake file: called by a pusher before it reads the list.
pub fn take_wake(state_dir: &Path) {
    let _ = std::fs::remove_file(wake_path(state_dir));
}

/// Who pushes what a hook just queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Pusher {
    /// A pusher already holds the lock (its pid, when known).
    Running(Option<u32>),
    /// This hook started one.
    Started(u32),
    /// Spawning is off (systemd's path unit starts the service).
    Service,
}

/// After an append: make sure a pusher will see it (see the module docs).
pub fn ensure_pusher(state_dir: &Path, spawn: bool, config_file: Option<&Path>) -> Result<Pusher> {
    touch_wake(state_dir);
    if !spawn {
        return Ok(Pusher::Service);
    }
    match try_lock_pusher(state_dir)? {
        None => Ok(Pusher::Running(lock_holder(state_dir))),
        Some(guard) => {
            // Nobody is pushing; the child takes the lock itself.
            let _ = guard.file.set_len(0);
            drop(guard);
            spawn_pusher(state_dir, config_file).map(Pusher::Started)
        }
    }
}

/// Set in the environment of a pusher spawned by a hook: it then starts its own
/// session and lowers its priority.
pub const SPAWNED_ENV: &str = "NARPUSH_PUSHER_SPAWNED";

/// Start `narpush pusher` fully detached: stdin from /dev/null, stdout and stderr
/// appended to `STATE_DIR/log`, its own session (it calls setsid first thing; std
/// opens every other descriptor close-on-exec), the same options as this run.
pub fn spawn_pusher(state_dir: &Path, config_file: Option<&Path>) -> Result<u32> {
    let exe = std::env::current_exe().map_err(|e| {
        Error::Other(format!(
            "cannot find the narpush binary to start a pusher: {e}"
        ))
    })?;
    let log_path = state_dir.join("log");
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| Error::io("open", &log_path, e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| Error::io("open", &log_path, e))?;
    // This run's own options (no paths in hook mode), minus its subcommand
    // (`push`, or `retry`/`pusher` starting a successor): `pusher` takes the same.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args
        .first()
        .is_some_and(|a| a == "push" || a == "retry" || a == "pusher")
    {
        args.remove(0);
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("pusher")
        .args(args)
        .env_remove("OUT_PATHS")
        .env_remove("DRV_PATH")
        .env(SPAWNED_ENV, "1")
        .env(env_name(Id::StateDir), state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    if let Some(c) = config_file {
        cmd.env(env_name(Id::Config), c);
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::Other(format!("cannot start the narpush pusher: {e}")))?;
    // Not waited for: it outlives this hook (and is reaped by init).
    Ok(child.id())
}

/// In a pusher spawned by a hook: leave the hook's session and process group (so
/// nothing aimed at the build's processes reaches it) and yield CPU to the builds.
pub fn detach_self() {
    let _ = rustix::process::setsid();
    let _ = rustix::process::nice(10);
}

/// What a running pusher says about itself (`STATE_DIR/pusher.state`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PusherState {
    pub pid: u32,
    /// Seconds since the epoch.
    pub since: i64,
    /// Paths in the current pass, and how many of them are done.
    pub total: usize,
    pub done: usize,
    /// The last path finished.
    pub last: String,
}

impl PusherState {
    pub fn to_text(&self) -> String {
        format!(
            "pid {}\nsince {}\ntotal {}\ndone {}\nlast {}\n",
            self.pid, self.since, self.total, self.done, self.last
        )
    }

    pub fn parse(text: &str) -> Option<PusherState> {
        let mut s = PusherState::default();
        for line in text.lines() {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            match k {
                "pid" => s.pid = v.parse().ok()?,
                "since" => s.since = v.parse().ok()?,
                "total" => s.total = v.parse().ok()?,
                "done" => s.done = v.parse().ok()?,
                "last" => s.last = v.to_string(),
                _ => {}
            }
        }
        (s.pid != 0).then_some(s)
    }

    /// Write it (atomically; best effort).
    pub fn save(&self, state_dir: &Path) {
        let _ = crate::sys::write_atomic(&state_path(state_dir), self.to_text().as_bytes());
    }

    pub fn load(state_dir: &Path) -> Option<PusherState> {
        PusherState::parse(&std::fs::read_to_string(state_path(state_dir)).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("narpush-queue-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn pusher_state_round_trips() {
        let s = PusherState {
            pid: 42,
            since: 1_700_000_000,
            total: 5,
            done: 2,
            last: "/nix/store/abc-x".into(),
        };
        assert_eq!(PusherState::parse(&s.to_text()), Some(s));
        assert_eq!(PusherState::parse("since 3\n"), None);
    }

    #[test]
    fn one_pusher_lock_and_release_under_the_list_lock() {
        let dir = tmpdir("lock");
        let list = PendingList::open(&dir).unwrap();
        let g = try_lock_pusher(&dir).unwrap().expect("free");
        assert!(try_lock_pusher(&dir).unwrap().is_none());
        assert_eq!(lock_holder(&dir), Some(std::process::id()));
        list.append(&["/nix/store/a".into()]).unwrap();
        // Not empty: the guard comes back.
        let (g, entries) = g.release_if_empty(&list).unwrap().unwrap_err();
        assert_eq!(entries, vec!["/nix/store/a".to_string()]);
        list.append(&["/nix/store/b".into()]).unwrap();
        let new = g.release(&list, &["/nix/store/a".into()]).unwrap();
        assert_eq!(new, vec!["/nix/store/b".to_string()]);
        let g = try_lock_pusher(&dir).unwrap().expect("released");
        list.remove(&["/nix/store/a".into(), "/nix/store/b".into()])
            .unwrap();
        assert!(g.release_if_empty(&list).unwrap().is_ok());
        assert!(try_lock_pusher(&dir).unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The protocol under contention: appenders that find the lock free "spawn" a
    /// pusher thread; a pusher drains and exits only through `release_if_empty`.
    /// Every appended path must end up drained.
    #[test]
    fn no_lost_wakeups_between_appenders_and_pushers() {
        use std::sync::{Arc, Mutex};
        let dir = tmpdir("protocol");
        PendingList::open(&dir).unwrap();
        let drained = Arc::new(Mutex::new(Vec::<String>::new()));
        let pushers = Arc::new(Mutex::new(Vec::new()));
        let pusher = |dir: PathBuf, drained: Arc<Mutex<Vec<String>>>| {
            move || {
                let list = PendingList::open(&dir).unwrap();
                let Some(mut g) = try_lock_pusher(&dir).unwrap() else {
                    return;
                };
                loop {
                    let entries = list.load().unwrap();
                    if entries.is_empty() {
                        match g.release_if_empty(&list).unwrap() {
                            Ok(()) => return,
                            Err((back, _)) => g = back,
                        }
                        continue;
                    }
                    list.remove(&entries).unwrap();
                    drained.lock().unwrap().extend(entries);
                }
            }
        };
        let appenders: Vec<_> = (0..16)
            .map(|t| {
                let (dir, drained, pushers) = (dir.clone(), drained.clone(), pushers.clone());
                std::thread::spawn(move || {
                    let list = PendingList::open(&dir).unwrap();
                    for i in 0..25 {
                        list.append(&[format!("/nix/store/p{t}-{i}")]).unwrap();
                        if let Some(g) = try_lock_pusher(&dir).unwrap() {
                            drop(g);
                            let h = std::thread::spawn(pusher(dir.clone(), drained.clone()));
                            pushers.lock().unwrap().push(h);
                        }
                    }
                })
            })
            .collect();
        for a in appenders {
            a.join().unwrap();
        }
        loop {
            let h = pushers.lock().unwrap().pop();
            match h {
                Some(h) => h.join().unwrap(),
                None => break,
            }
        }
        let mut got = drained.lock().unwrap().clone();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 16 * 25, "every path drained");
        assert!(PendingList::open(&dir).unwrap().load().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
