//! The commands, from a resolved [`Config`] to an exit code: `push` by hand, and as
//! Nix's post-build hook (queueing for the pusher, or pushing before it exits with
//! `--wait`), `retry` and `keygen`; everything they need was resolved by `config`,
//! and the pusher, `flush` and `status` live in `pusher`. This is where the
//! never-wedge-a-build policy lives: which paths a hook queues or pushes (pure
//! functions, tested below), and in hook mode a failure is reported in one line per
//! path, the paths are recorded in the pending list, and the exit code is 0 unless
//! `--strict`.

use crate::config::{Command, Config, HookEnv};
use crate::error::{Error, Result};
use crate::nix::local::LocalNix;
use crate::nix::signing::SecretKey;
use crate::nix::store_path::StorePath;
use crate::nix::user_path::resolve_user_path;
use crate::pending::PendingList;
use crate::push;
use crate::queue::{self, Pusher};
use crate::session::{logger, open_target, summary};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Run a resolved command; returns the exit code.
pub fn run(config: Config) -> Result<i32> {
    match &config.command {
        Command::Help(text) => {
            print!("{text}");
            Ok(0)
        }
        Command::Version => {
            println!("{}", crate::cli::version_text());
            Ok(0)
        }
        Command::Keygen { name, out } => keygen(name, out),
        Command::Push { paths, hook } => match (push_mode(hook.as_ref(), config.wait), hook) {
            (PushMode::Queue, Some(h)) => run_queue_hook(&config, h),
            (PushMode::HookWait, Some(h)) => run_hook(&config, h),
            _ => run_push(&config, paths),
        },
        Command::Retry => crate::pusher::run_retry(&config),
        Command::Flush { timeout } => crate::pusher::run_flush(&config, *timeout),
        Command::Status { json, max_age } => crate::pusher::run_status(&config, *json, *max_age),
        Command::Pusher { spawned } => crate::pusher::run_pusher(&config, *spawned),
        Command::Life(c) => crate::life::run(c, &config),
    }
}

fn keygen(name: &str, out: &Path) -> Result<i32> {
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    let key = SecretKey::generate(name)?;
    let sec = PathBuf::from(format!("{}.sec", out.display()));
    let public = PathBuf::from(format!("{}.pub", out.display()));
    for p in [&sec, &public] {
        if p.exists() {
            return Err(Error::Usage(format!(
                "{} already exists; remove it or pass --out PREFIX",
                p.display()
            )));
        }
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&sec)
        .map_err(|e| Error::io("create secret key file", &sec, e))?;
    f.write_all(key.to_file_string().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write secret key file", &sec, e))?;
    let pk = key.public().to_file_string();
    crate::sys::write_atomic(&public, pk.as_bytes())?;
    eprintln!(
        "wrote secret key {} (mode 600) and public key {}",
        sec.display(),
        public.display()
    );
    println!("{pk}");
    Ok(0)
}

fn resolve_args(paths: &[PathBuf], store_dir: &str) -> Result<Vec<StorePath>> {
    paths
        .iter()
        .map(|p| {
            let s = p.to_str().ok_or_else(|| {
                Error::Usage(format!(
                    "'{}' is not a store path (store paths are ASCII)",
                    p.display()
                ))
            })?;
            resolve_user_path(s, store_dir)
        })
        .collect()
}

/// By hand: every failure is an error (exit 1), with a line per path.
fn run_push(config: &Config, paths: &[PathBuf]) -> Result<i32> {
    let nix = LocalNix::detect()?;
    let roots = without_excluded(config, resolve_args(paths, &nix.store_dir)?, &nix.store_dir);
    if roots.is_empty() {
        return Ok(0);
    }
    let target = open_target(config)?;
    let report = push::push(&nix, &target.cache, &roots, &target.opts, &logger(config))?;
    summary(config, &report, &target.cache);
    if config.upload_log {
        crate::life::log::upload_for(&nix, &target.cache, &report, None, config.quiet);
    }
    Ok(if report.failed().next().is_some() {
        1
    } else {
        0
    })
}

/// Leave out (and report) the given paths that `--exclude` names.
fn without_excluded(config: &Config, roots: Vec<StorePath>, store_dir: &str) -> Vec<StorePath> {
    let (kept, skipped) = split_excluded(&config.exclude, roots, store_dir);
    for line in skipped {
        eprintln!("narpush: {line}");
    }
    kept
}

/// The hook, queueing: append the outputs Nix named (or `DRV_PATH` when it named
/// none) to the queue, make sure a pusher runs, print one line, exit 0. No `nix`
/// process, no network, no NAR read.
fn run_queue_hook(config: &Config, hook: &HookEnv) -> Result<i32> {
    let (entries, skipped, ignored) = queue_request(hook, &config.exclude, &|p| p.exists());
    if !config.quiet {
        for line in skipped {
            println!("narpush: {line}");
        }
    }
    for line in ignored {
        eprintln!("narpush: {line}");
    }
    if entries.is_empty() {
        return Ok(0);
    }
    let list = PendingList::open(&config.state_dir)?;
    list.append(&entries)?;
    let who = queue::ensure_pusher(
        &config.state_dir,
        config.spawn_pusher,
        config.config_file.as_deref(),
    );
    let n = entries.len();
    let paths = if n == 1 { "path" } else { "paths" };
    match who {
        Ok(Pusher::Started(pid)) | Ok(Pusher::Running(Some(pid))) => {
            println!("narpush: queued {n} {paths}; pusher {pid} running")
        }
        Ok(Pusher::Running(None)) => println!("narpush: queued {n} {paths}; pusher running"),
        Ok(Pusher::Service) => {
            println!("narpush: queued {n} {paths}; the narpush-pusher service pushes them")
        }
        Err(e) => {
            // Queued all the same: the next hook, flush or the retry timer pushes them.
            eprintln!("narpush: queued {n} {paths}, but could not start a pusher: {e}");
        }
    }
    Ok(0)
}

/// How `push` runs: by hand (paths given), or as Nix's post-build hook, which queues
/// the outputs for the background pusher unless told to wait (`--wait`, or
/// `--strict`, which implies it) and push them before it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushMode {
    ByHand,
    Queue,
    HookWait,
}

pub(crate) fn push_mode(hook: Option<&HookEnv>, wait: bool) -> PushMode {
    match (hook, wait) {
        (None, _) => PushMode::ByHand,
        (Some(_), false) => PushMode::Queue,
        (Some(_), true) => PushMode::HookWait,
    }
}

/// The paths `exclude` leaves in, and a `skipped …` line for each it takes out.
pub(crate) fn split_excluded(
    exclude: &[crate::glob::Glob],
    roots: Vec<StorePath>,
    store_dir: &str,
) -> (Vec<StorePath>, Vec<String>) {
    let mut skipped = Vec::new();
    let kept = roots
        .into_iter()
        .filter(|r| match crate::glob::first_match(exclude, r.name()) {
            Some(g) => {
                skipped.push(format!(
                    "skipped {}: excluded by '{}'",
                    r.to_full(store_dir),
                    g.as_str()
                ));
                false
            }
            None => true,
        })
        .collect();
    (kept, skipped)
}

/// What a hook that waits pushes, from what Nix said alone: the store paths
/// `OUT_PATHS` names, and an `OUT_PATHS entry …` line for each entry that is not one;
/// when `OUT_PATHS` is empty (Nix 2.8.0), the derivation whose valid outputs stand
/// for them instead.
pub(crate) fn hook_request<'a>(
    hook: &'a HookEnv,
    store_dir: &str,
) -> (Vec<StorePath>, Option<&'a str>, Vec<String>) {
    let mut roots = Vec::new();
    let mut junk = Vec::new();
    for tok in &hook.out_paths {
        match StorePath::from_full_path(store_dir, tok) {
            Ok(p) => roots.push(p),
            Err(e) => junk.push(format!("OUT_PATHS entry {e}")),
        }
    }
    let drv = if hook.out_paths.is_empty() {
        hook.drv_path.as_deref()
    } else {
        None
    };
    (roots, drv, junk)
}

/// What a hook that queues queues, decided without the store or a `nix` process:
/// the absolute store paths `OUT_PATHS` names that `exclude` leaves in; when
/// `OUT_PATHS` is empty (Nix 2.8.0), the derivation (`DRV_PATH`), if it exists, whose
/// outputs the pusher resolves. Returns the entries, the `skipped …` lines (printed
/// unless quiet) and the `ignored …` lines (always printed, to stderr).
pub(crate) fn queue_request(
    hook: &HookEnv,
    exclude: &[crate::glob::Glob],
    exists: &dyn Fn(&Path) -> bool,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut entries, mut skipped, mut ignored) = (Vec::new(), Vec::new(), Vec::new());
    for tok in &hook.out_paths {
        let base = tok.rsplit('/').next().unwrap_or("");
        match StorePath::from_base_name(base) {
            Ok(sp) if tok.starts_with('/') => match crate::glob::first_match(exclude, sp.name()) {
                Some(g) => skipped.push(format!("skipped {tok}: excluded by '{}'", g.as_str())),
                None => entries.push(tok.clone()),
            },
            Ok(_) => ignored.push(format!(
                "ignored OUT_PATHS entry {tok}: not an absolute store path"
            )),
            Err(e) => ignored.push(format!("ignored OUT_PATHS entry {tok}: {e}")),
        }
    }
    if hook.out_paths.is_empty() {
        if let Some(drv) = hook.drv_path.as_deref().filter(|d| !d.is_empty()) {
            if exists(Path::new(drv)) {
                entries.push(drv.to_string());
            } else {
                ignored.push(format!("ignored DRV_PATH {drv}: it does not exist"));
            }
        }
    }
    (entries, skipped, ignored)
}

/// What Nix says was built ([`hook_request`]), with the derivation's valid outputs
/// looked up. Entries that are not valid store paths are returned as lines to report.
fn hook_roots(nix: &LocalNix, hook: &HookEnv) -> Result<(Vec<StorePath>, Vec<String>)> {
    let (mut roots, drv, mut junk) = hook_request(hook, &nix.store_dir);
    if let Some(drv) = drv {
        roots = nix.valid_outputs_of(Path::new(drv))?;
    }
    // A well-formed entry that is not in the store must not keep the others from
    // being pushed (one query for all would fail as a whole).
    let valid = nix.valid_paths(&roots)?;
    for r in &roots {
        if !valid.contains(r) {
            junk.push(format!(
                "OUT_PATHS entry {}: not valid in the local Nix store",
                r.to_full(&nix.store_dir)
            ));
        }
    }
    Ok((valid, junk))
}

/// As Nix's post-build hook: never fail the build for a cache problem.
///
/// The outputs are written to the pending list *before* anything is pushed and
/// taken off once they are in the cache, so a hook that is killed (SIGKILL, OOM, a
/// reboot) leaves them for `narpush retry` instead of losing them. That first write
/// is best effort: when the state directory cannot be written, a warning says so,
/// and only a push that then fails makes the hook exit non-zero.
fn run_hook(config: &Config, hook: &HookEnv) -> Result<i32> {
    let nix = LocalNix::detect()?;
    let (roots, junk) = hook_roots(&nix, hook)?;
    let roots = without_excluded(config, roots, &nix.store_dir);
    for j in &junk {
        eprintln!("narpush: ignored {j}");
    }
    let all: Vec<String> = roots.iter().map(|r| r.to_full(&nix.store_dir)).collect();
    let ahead = PendingList::open(&config.state_dir).and_then(|l| l.append(&all).map(|()| l));
    if let Err(e) = &ahead {
        eprintln!("narpush: warning: {e}; paths that fail to push cannot be recorded for later");
    }
    let failed: Vec<String> = match open_target(config)
        .and_then(|t| push::push(&nix, &t.cache, &roots, &t.opts, &logger(config)).map(|r| (t, r)))
    {
        Ok((target, report)) => {
            summary(config, &report, &target.cache);
            if config.upload_log {
                let drv = hook.drv_path.as_deref();
                crate::life::log::upload_for(&nix, &target.cache, &report, drv, config.quiet);
            }
            report.failed().map(|(p, _)| p.to_string()).collect()
        }
        Err(e) => {
            for r in &all {
                eprintln!("narpush: failed {r}: {e}");
            }
            all.clone()
        }
    };
    if let Ok(list) = &ahead {
        let done: Vec<String> = all
            .iter()
            .filter(|p| !failed.contains(p))
            .cloned()
            .collect();
        if let Err(e) = list.remove(&done) {
            // The pushed paths stay listed; a retry finds them in the cache.
            eprintln!("narpush: warning: {e}");
        }
    };
    if failed.is_empty() {
        return Ok(0);
    }
    if let Err(e) = record_pending(&config.state_dir, &failed) {
        // Reported here, not handed to `main`, which would try to record them again.
        eprintln!("narpush: error: {e}");
        return Ok(1);
    }
    Ok(if config.strict { 1 } else { 0 })
}

/// Record paths to push later; failing to do so is the one hook error that stops the
/// build (losing a path silently is worse).
pub fn record_pending(state_dir: &Path, paths: &[String]) -> Result<()> {
    let list = PendingList::open(state_dir).map_err(|e| {
        Error::Other(format!(
            "could not record {} store path(s) to push later: {e}; they were NOT recorded \
             (push them by hand or fix the state directory)",
            paths.len()
        ))
    })?;
    list.append(paths)?;
    eprintln!(
        "narpush: {} path(s) recorded in {}; run 'narpush retry' to push them",
        paths.len(),
        list.path().display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glob::Glob;

    const A: &str = "/nix/store/sx5jrkbw8bglvjnhj2g2ylwj9zljcsfd-hello-2.12";
    const B: &str = "/nix/store/0c4v3ma0wfh8vdvwq2n4sm1ww7vrjj2i-nixpkgs-source";
    const DRV: &str = "/nix/store/1z3kfmdp1jba3m8pwd6zd2cb6bhy9vn4-hello-2.12.drv";

    fn hook(out: &[&str], drv: Option<&str>) -> HookEnv {
        HookEnv {
            out_paths: out.iter().map(|s| s.to_string()).collect(),
            drv_path: drv.map(str::to_string),
        }
    }

    fn globs(patterns: &[&str]) -> Vec<Glob> {
        patterns.iter().map(|p| Glob::new(p).unwrap()).collect()
    }

    #[test]
    fn a_hook_queues_unless_told_to_wait() {
        let h = hook(&[A], None);
        assert_eq!(push_mode(None, false), PushMode::ByHand);
        assert_eq!(push_mode(None, true), PushMode::ByHand);
        assert_eq!(push_mode(Some(&h), false), PushMode::Queue);
        // --wait, or --strict (config makes it imply wait).
        assert_eq!(push_mode(Some(&h), true), PushMode::HookWait);
    }

    #[test]
    fn queueing_takes_out_paths_and_leaves_the_derivation() {
        let exists = |_: &Path| panic!("DRV_PATH is not looked at when OUT_PATHS names paths");
        let (entries, skipped, ignored) = queue_request(&hook(&[A, B], Some(DRV)), &[], &exists);
        assert_eq!(entries, vec![A.to_string(), B.to_string()]);
        assert!(skipped.is_empty() && ignored.is_empty());
    }

    #[test]
    fn queueing_with_nix_2_8s_empty_out_paths_queues_the_derivation() {
        let (entries, _, ignored) = queue_request(&hook(&[], Some(DRV)), &[], &|p| {
            assert_eq!(p, Path::new(DRV));
            true
        });
        assert_eq!(entries, vec![DRV.to_string()]);
        assert!(ignored.is_empty());
        // A derivation that is gone has nothing to push later.
        let (entries, _, ignored) = queue_request(&hook(&[], Some(DRV)), &[], &|_| false);
        assert!(entries.is_empty());
        assert_eq!(
            ignored,
            vec![format!("ignored DRV_PATH {DRV}: it does not exist")]
        );
        // Neither: nothing.
        let (entries, skipped, ignored) = queue_request(&hook(&[], None), &[], &|_| true);
        assert!(entries.is_empty() && skipped.is_empty() && ignored.is_empty());
    }

    #[test]
    fn queueing_excludes_and_ignores_what_is_not_a_store_path() {
        let relative = "nix/store/sx5jrkbw8bglvjnhj2g2ylwj9zljcsfd-hello-2.12";
        let (entries, skipped, ignored) = queue_request(
            &hook(&[A, B, relative, "/tmp/junk"], None),
            &globs(&["*-source"]),
            &|_| true,
        );
        assert_eq!(entries, vec![A.to_string()]);
        assert_eq!(
            skipped,
            vec![format!("skipped {B}: excluded by '*-source'")]
        );
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert_eq!(
            ignored[0],
            format!("ignored OUT_PATHS entry {relative}: not an absolute store path")
        );
        assert!(
            ignored[1].starts_with("ignored OUT_PATHS entry /tmp/junk: "),
            "{}",
            ignored[1]
        );
    }

    #[test]
    fn waiting_pushes_out_paths_or_the_derivations_outputs() {
        let h = hook(&[A, "/elsewhere/x"], Some(DRV));
        let (roots, drv, junk) = hook_request(&h, "/nix/store");
        assert_eq!(roots.len(), 1);
        assert_eq!(roots[0].to_full("/nix/store"), A);
        assert_eq!(drv, None, "OUT_PATHS named paths: DRV_PATH is not used");
        assert_eq!(junk.len(), 1);
        assert!(junk[0].starts_with("OUT_PATHS entry "), "{}", junk[0]);
        // Nix 2.8.0: OUT_PATHS empty, the derivation's outputs stand for them.
        let h = hook(&[], Some(DRV));
        let (roots, drv, junk) = hook_request(&h, "/nix/store");
        assert!(roots.is_empty() && junk.is_empty());
        assert_eq!(drv, Some(DRV));
        // Another store directory.
        let (roots, _, junk) = hook_request(&hook(&[A], None), "/gnu/store");
        assert!(roots.is_empty());
        assert_eq!(junk.len(), 1);
    }

    #[test]
    fn waiting_excludes_by_name_after_the_hash() {
        let roots = [A, B]
            .iter()
            .map(|p| StorePath::from_full_path("/nix/store", p).unwrap())
            .collect();
        let (kept, skipped) = split_excluded(&globs(&["*-source", "linux-*"]), roots, "/nix/store");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].to_full("/nix/store"), A);
        assert_eq!(
            skipped,
            vec![format!("skipped {B}: excluded by '*-source'")]
        );
        let roots = vec![StorePath::from_full_path("/nix/store", A).unwrap()];
        let (kept, skipped) = split_excluded(&globs(&["hello-*"]), roots, "/nix/store");
        assert!(kept.is_empty());
        assert_eq!(skipped.len(), 1);
    }
}
