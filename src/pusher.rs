//! Working the queue the hook fills (`app`): the background pusher (`narpush
//! pusher`), `flush`, `retry` (one pass) and `status`. A *pass* takes the listed
//! entries, turns each into store paths (a derivation queued for Nix 2.8's empty
//! `OUT_PATHS` stands for its valid outputs), pushes them with the push scheduler
//! (reference order), and takes each entry off once all its paths are in the cache.
//! An entry is dropped only when Nix says its path is gone; when Nix cannot answer,
//! it stays. The pusher repeats passes until the list is empty, backing off (growing,
//! capped, jittered waits) while passes fail, and gives up after `give-up-after`
//! without progress, leaving the list for the next hook or the retry timer. How it
//! exits without losing a path queued meanwhile is `queue.rs`'s protocol.

use crate::config::Config;
use crate::duration::human as human_duration;
use crate::error::{Error, Result};
use crate::glob::first_match;
use crate::nix::local::LocalNix;
use crate::nix::store_path::StorePath;
use crate::pending::PendingList;
use crate::push::{self, Event};
use crate::pushlog::PushLog;
use crate::queue::{self, PusherGuard, PusherState};
use crate::session::{logger, open_target, pushed_text, summary};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Longest wait between passes while the cache is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What one pass left in the queue, and why.
struct Pass {
    /// Entries still listed, each with the reason.
    left: BTreeMap<String, String>,
    /// Some path went up or some entry was settled.
    progress: bool,
    /// The entries this pass looked at.
    handled: Vec<String>,
}

/// Resolve the entries to store paths: `(entry, paths)`; entries to drop (Nix says
/// they are gone, or excluded) are reported and returned apart; entries Nix could
/// not answer for are kept with the reason.
#[allow(clippy::type_complexity)]
fn resolve_entries(
    config: &Config,
    nix: &LocalNix,
    entries: &[String],
    note: &dyn Fn(&str, &str),
) -> Result<(
    Vec<(String, Vec<StorePath>)>,
    Vec<String>,
    BTreeMap<String, String>,
)> {
    let mut gone = Vec::new();
    let mut keep_err = BTreeMap::new();
    let parsed: Vec<Option<StorePath>> = entries
        .iter()
        .map(|p| match StorePath::from_full_path(&nix.store_dir, p) {
            Ok(sp) => Some(sp),
            Err(e) => {
                note("dropped", &format!("{p}: {e}"));
                eprintln!("narpush: dropping pending entry: {e}");
                None
            }
        })
        .collect();
    let plain: Vec<StorePath> = parsed
        .iter()
        .flatten()
        .filter(|sp| !sp.name().ends_with(".drv"))
        .cloned()
        .collect();
    let valid: HashSet<StorePath> = nix.valid_paths(&plain)?.into_iter().collect();
    let mut out = Vec::new();
    for (p, sp) in entries.iter().zip(parsed) {
        let paths = match sp {
            None => {
                gone.push(p.clone());
                continue;
            }
            Some(sp) if sp.name().ends_with(".drv") => match nix.valid_outputs_of(Path::new(p)) {
                Ok(outs) => outs,
                Err(e) => {
                    if Path::new(p).symlink_metadata().is_err() {
                        Vec::new()
                    } else {
                        // Nix could not answer now (daemon down, store locked…): keep it.
                        eprintln!("narpush: keeping {p}: cannot resolve its outputs now: {e}");
                        note("failed", &format!("{p}: cannot resolve its outputs: {e}"));
                        keep_err.insert(p.clone(), format!("cannot resolve its outputs: {e}"));
                        continue;
                    }
                }
            },
            Some(sp) => valid.get(&sp).cloned().into_iter().collect(),
        };
        let mut kept = Vec::new();
        for sp in paths {
            match first_match(&config.exclude, sp.name()) {
                Some(g) => {
                    let full = sp.to_full(&nix.store_dir);
                    eprintln!("narpush: skipped {full}: excluded by '{}'", g.as_str());
                    note("excluded", &format!("{full} by '{}'", g.as_str()));
                }
                None => kept.push(sp),
            }
        }
        if kept.is_empty() {
            eprintln!(
                "narpush: dropping {p}: nothing valid to push in the local store (garbage-collected?)"
            );
            note(
                "dropped",
                &format!("{p}: nothing valid to push (garbage-collected?)"),
            );
            gone.push(p.clone());
            continue;
        }
        out.push((p.clone(), kept));
    }
    Ok((out, gone, keep_err))
}

/// One pass over `entries`. `log` sees every push event.
fn pass(
    config: &Config,
    list: &PendingList,
    entries: &[String],
    plog: &PushLog,
    log: &(dyn Fn(&Event) + Sync),
    progress: &Mutex<PusherState>,
) -> Result<Pass> {
    let note = |kind: &str, text: &str| plog.write(kind, text);
    let mut left: BTreeMap<String, String> = BTreeMap::new();
    let handled = entries.to_vec();
    // Nix not usable now: every entry stays, with the reason.
    let all_left = |e: Error| Pass {
        left: entries.iter().map(|p| (p.clone(), e.to_string())).collect(),
        progress: false,
        handled: entries.to_vec(),
    };
    let nix = match LocalNix::detect() {
        Ok(n) => n,
        Err(e) => return Ok(all_left(e)),
    };
    let (resolved, drop, keep_err) = match resolve_entries(config, &nix, entries, &note) {
        Ok(r) => r,
        Err(e) => return Ok(all_left(e)),
    };
    left.extend(keep_err);
    list.remove(&drop)?;
    let mut roots: Vec<StorePath> = resolved
        .iter()
        .flat_map(|(_, ps)| ps.iter().cloned())
        .collect();
    roots.sort();
    roots.dedup();
    if roots.is_empty() {
        return Ok(Pass {
            left,
            progress: !drop.is_empty(),
            handled,
        });
    }
    if let Ok(mut s) = progress.lock() {
        s.total = roots.len();
        s.done = 0;
    }
    let report = open_target(config)
        .and_then(|t| push::push(&nix, &t.cache, &roots, &t.opts, log).map(|r| (t, r)));
    let (target, report) = match report {
        Ok(r) => r,
        Err(e) => {
            if e.is_transient() || matches!(e, Error::S3(_)) {
                plog.write("outage", &e.to_string());
            } else {
                plog.write("failed", &format!("{} queued paths: {e}", roots.len()));
            }
            for (p, _) in &resolved {
                left.insert(p.clone(), e.to_string());
            }
            return Ok(Pass {
                left,
                progress: !drop.is_empty(),
                handled,
            });
        }
    };
    summary(config, &report, &target.cache);
    if config.upload_log {
        // The queued paths' own derivers: the DRV_PATH of the builds that queued them.
        crate::life::log::upload_for(&nix, &target.cache, &report, None, config.quiet);
    }
    let failed: BTreeMap<&str, String> = report.failed().map(|(p, e)| (p, e.to_string())).collect();
    if let Some((_, e)) = report.failed().find(|(_, e)| e.is_transient()) {
        plog.write("outage", &format!("{} (at {})", e, target.cache.describe()));
    }
    let mut done = Vec::new();
    for (p, ps) in &resolved {
        let why = ps
            .iter()
            .find_map(|sp| failed.get(sp.to_full(&nix.store_dir).as_str()));
        match why {
            Some(why) => {
                left.insert(p.clone(), why.clone());
            }
            None => done.push(p.clone()),
        }
    }
    list.remove(&done)?;
    Ok(Pass {
        left,
        progress: !done.is_empty() || !drop.is_empty(),
        handled,
    })
}

/// The per-event log of a pusher: `STATE/log` lines, progress in `pusher.state`,
/// and the usual console lines when `console`.
fn event_log<'a>(
    config: &'a Config,
    plog: &'a PushLog,
    progress: &'a Mutex<PusherState>,
    console: bool,
) -> impl Fn(&Event) + Sync + 'a {
    let print = logger(config);
    move |ev: &Event| {
        let path = match ev {
            Event::Pushed {
                path,
                nar_size,
                file_size,
                compression,
                elapsed,
            } => {
                plog.write(
                    "pushed",
                    &pushed_text(path, *nar_size, *file_size, *compression, *elapsed),
                );
                Some(*path)
            }
            Event::Present { path } => Some(*path),
            Event::Failed { path, error } => {
                plog.write("failed", &format!("{path}: {error}"));
                Some(*path)
            }
            Event::Excluded { path, pattern } => {
                plog.write("excluded", &format!("{path} by '{pattern}'"));
                None
            }
            Event::Upstream { .. } => None,
        };
        if let (Some(p), Ok(mut s)) = (path, progress.lock()) {
            s.done += 1;
            s.last = p.to_string();
            s.save(&config.state_dir);
        }
        if console {
            print(ev);
        }
    }
}

/// How a drain ended.
enum Drained {
    /// The queue is empty and the pusher lock released.
    Empty,
    /// Gave up (no progress for give-up-after, or the deadline): what is left, why.
    GaveUp(BTreeMap<String, String>),
}

/// Work the queue until it is empty or `give_up` passes without progress (or
/// `deadline`); releases the pusher lock per the protocol in every case. `reasons`
/// holds the last known reason for each entry left.
#[allow(clippy::too_many_arguments)]
fn drain(
    config: &Config,
    list: &PendingList,
    mut guard: PusherGuard,
    console: bool,
    deadline: Option<Instant>,
    reasons: &Mutex<BTreeMap<String, String>>,
) -> Result<(Drained, Vec<String>)> {
    let plog = PushLog::new(&config.state_dir);
    let progress = Mutex::new(PusherState {
        pid: std::process::id(),
        since: crate::cache::now_secs(),
        ..PusherState::default()
    });
    progress.lock().map(|s| s.save(&config.state_dir)).ok();
    let log = event_log(config, &plog, &progress, console);
    let mut last_progress = Instant::now();
    let mut attempt: u32 = 0;
    let mut handled: Vec<String> = Vec::new();
    loop {
        let entries = list.load()?;
        if entries.is_empty() {
            match guard.release_if_empty(list)? {
                Ok(()) => return Ok((Drained::Empty, Vec::new())),
                Err((g, _)) => {
                    guard = g;
                    continue;
                }
            }
        }
        let p = pass(config, list, &entries, &plog, &log, &progress)?;
        for h in &p.handled {
            if !handled.contains(h) {
                handled.push(h.clone());
            }
        }
        if let Ok(mut r) = reasons.lock() {
            r.clone_from(&p.left);
        }
        if p.left.is_empty() {
            attempt = 0;
            last_progress = Instant::now();
            continue;
        }
        if p.progress {
            attempt = 0;
            last_progress = Instant::now();
        }
        let now = Instant::now();
        let give_up_at = last_progress + config.give_up_after;
        let end = deadline.map_or(give_up_at, |d| d.min(give_up_at));
        if now >= end {
            plog.write(
                "pusher",
                &format!(
                    "giving up after {}: {} queued entries left for the next run",
                    human_duration(now - last_progress),
                    p.left.len()
                ),
            );
            let new = guard.release(list, &handled)?;
            return Ok((Drained::GaveUp(p.left), new));
        }
        // Growing, capped, jittered: a half to all of min(2^attempt s, 60 s).
        let full = Duration::from_secs(1u64 << attempt.min(6)).min(MAX_BACKOFF);
        let mut b = [0u8; 2];
        let _ = getrandom::fill(&mut b);
        let frac = 0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0;
        let wait = full.mul_f64(frac).min(end - now);
        plog.write(
            "outage",
            &format!(
                "{} queued entries not pushed; next try in {:.1} s",
                p.left.len(),
                wait.as_secs_f64()
            ),
        );
        std::thread::sleep(wait);
        attempt += 1;
    }
}

/// `narpush pusher`: exit at once if another holds the lock; else drain.
pub fn run_pusher(config: &Config, spawned: bool) -> Result<i32> {
    if spawned {
        queue::detach_self();
    }
    let list = PendingList::open(&config.state_dir)?;
    let Some(guard) = queue::try_lock_pusher(&config.state_dir)? else {
        return Ok(0);
    };
    queue::take_wake(&config.state_dir);
    let plog = PushLog::new(&config.state_dir);
    plog.write("pusher", &format!("{} started", std::process::id()));
    let reasons = Mutex::new(BTreeMap::new());
    let (end, new) = drain(config, &list, guard, !spawned, None, &reasons)?;
    match end {
        Drained::Empty => {
            plog.write(
                "pusher",
                &format!("{} done: queue empty", std::process::id()),
            );
            Ok(0)
        }
        Drained::GaveUp(left) => {
            if !new.is_empty() && config.spawn_pusher {
                // Queued while this one worked: a fresh pusher (and budget) for them.
                let _ = queue::spawn_pusher(&config.state_dir, config.config_file.as_deref());
            }
            Ok(if left.is_empty() { 0 } else { 1 })
        }
    }
}

/// `narpush flush`: push the queue in the foreground (after the running pusher, if
/// any, lets go); exit 0 only with the queue empty. The timeout is hard: when it
/// passes, what is left is listed and the process exits 1, even mid-upload (the
/// entries stay queued, the upload journal lets the next run abort the upload).
pub fn run_flush(config: &Config, timeout: Option<Duration>) -> Result<i32> {
    let timeout = timeout.unwrap_or(config.give_up_after);
    let deadline = Instant::now() + timeout;
    let list = PendingList::open(&config.state_dir)?;
    let reasons: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let finished = Mutex::new(false);
    let report_left = |why_default: &str| {
        let left = list.load().unwrap_or_default();
        let reasons = reasons.lock().map(|r| r.clone()).unwrap_or_default();
        eprintln!(
            "narpush: flush: {} queued entries left after {} (in {}):",
            left.len(),
            human_duration(timeout),
            list.path().display()
        );
        for p in &left {
            let why = reasons.get(p).map_or(why_default, String::as_str);
            eprintln!("narpush: left {p}: {why}");
        }
    };
    std::thread::scope(|scope| -> Result<i32> {
        scope.spawn(|| {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            let done = finished.lock().unwrap_or_else(|p| p.into_inner());
            if !*done {
                report_left("still being pushed when the timeout passed");
                std::process::exit(1);
            }
        });
        let code = (|| -> Result<i32> {
            let Some(guard) = queue::lock_pusher_until(&config.state_dir, deadline)? else {
                let who = queue::lock_holder(&config.state_dir)
                    .map_or("a pusher".to_string(), |p| format!("pusher {p}"));
                let mut done = finished.lock().unwrap_or_else(|p| p.into_inner());
                *done = true;
                report_left(&format!("{who} is still working on the queue"));
                return Ok(1);
            };
            queue::take_wake(&config.state_dir);
            let (end, _) = drain(config, &list, guard, true, Some(deadline), &reasons)?;
            let mut done = finished.lock().unwrap_or_else(|p| p.into_inner());
            *done = true;
            Ok(match end {
                Drained::Empty => {
                    if !config.quiet {
                        println!("narpush: flush: queue empty");
                    }
                    0
                }
                Drained::GaveUp(_) => {
                    report_left("not pushed");
                    1
                }
            })
        })();
        // The watchdog sleeps until the deadline: leave without waiting for it.
        *finished.lock().unwrap_or_else(|p| p.into_inner()) = true;
        match code {
            Ok(c) => std::process::exit(c),
            Err(e) => {
                eprintln!("narpush: error: {e}");
                std::process::exit(e.exit_code())
            }
        }
    })
}

/// `narpush retry`: one pass over the queue in the foreground (nothing if a pusher
/// runs). A path queued during the pass gets a pusher, per the protocol.
pub fn run_retry(config: &Config) -> Result<i32> {
    let list = PendingList::open(&config.state_dir)?;
    let Some(guard) = queue::try_lock_pusher(&config.state_dir)? else {
        eprintln!("narpush: another 'narpush retry' or pusher is running; nothing done");
        return Ok(0);
    };
    let pending = list.load()?;
    if pending.is_empty() {
        let _ = guard.release(&list, &[])?;
        if !config.quiet {
            println!("narpush: nothing pending in {}", list.path().display());
        }
        return Ok(0);
    }
    let plog = PushLog::new(&config.state_dir);
    let progress = Mutex::new(PusherState {
        pid: std::process::id(),
        since: crate::cache::now_secs(),
        ..PusherState::default()
    });
    let log = event_log(config, &plog, &progress, true);
    let result = pass(config, &list, &pending, &plog, &log, &progress);
    let new = guard.release(&list, &pending)?;
    if !new.is_empty() && config.spawn_pusher {
        let _ = queue::spawn_pusher(&config.state_dir, config.config_file.as_deref());
    }
    let p = result?;
    Ok(if p.left.is_empty() { 0 } else { 1 })
}

/// `narpush status`.
pub fn run_status(config: &Config, json: bool, max_age: Option<Duration>) -> Result<i32> {
    let dir = &config.state_dir;
    let list = PendingList::open(dir)?;
    let entries = list.load()?;
    let since = list.queued_since(&entries);
    let now = crate::cache::now_secs();
    let oldest = since.iter().min().map(|t| (now - t).max(0) as u64);
    let pusher = PusherState::load(dir).filter(|s| crate::sys::process_alive(s.pid));
    let last = PushLog::new(dir).tail(10);
    let too_old = match (oldest, max_age) {
        (Some(o), Some(m)) => o > m.as_secs(),
        _ => false,
    };
    if json {
        let v = serde_json::json!({
            "state_dir": dir.display().to_string(),
            "queued": entries.len(),
            "oldest_age_seconds": oldest,
            "pusher": pusher.as_ref().map(|s| serde_json::json!({
                "pid": s.pid,
                "since": crate::pushlog::timestamp(UNIX_EPOCH + Duration::from_secs(s.since.max(0) as u64)),
                "total": s.total,
                "done": s.done,
                "last": s.last,
            })),
            "last": last.iter().map(|e| serde_json::json!({
                "time": crate::pushlog::timestamp(UNIX_EPOCH + Duration::from_secs(e.time.max(0) as u64)),
                "kind": e.kind,
                "text": e.rest,
            })).collect::<Vec<_>>(),
            "max_age_seconds": max_age.map(|m| m.as_secs()),
            "too_old": too_old,
        });
        println!("{v}");
    } else {
        match oldest {
            Some(o) => println!(
                "queue: {} entries in {}, the oldest queued {} ago",
                entries.len(),
                list.path().display(),
                human_duration(Duration::from_secs(o))
            ),
            None => println!("queue: empty ({})", list.path().display()),
        }
        match &pusher {
            Some(s) => {
                let since = crate::pushlog::timestamp(
                    UNIX_EPOCH + Duration::from_secs(s.since.max(0) as u64),
                );
                let mut line = format!("pusher: {} running since {since}", s.pid);
                if s.total > 0 {
                    line += &format!(", {} of {} paths of this pass done", s.done, s.total);
                }
                if !s.last.is_empty() {
                    line += &format!(", last {}", s.last);
                }
                println!("{line}");
            }
            None => println!("pusher: not running"),
        }
        if last.is_empty() {
            println!("log: nothing yet ({})", PushLog::new(dir).path().display());
        } else {
            println!("last results ({}):", PushLog::new(dir).path().display());
            for e in &last {
                println!(
                    "  {} {} {}",
                    crate::pushlog::timestamp(
                        UNIX_EPOCH + Duration::from_secs(e.time.max(0) as u64)
                    ),
                    e.kind,
                    e.rest
                );
            }
        }
    }
    if too_old {
        eprintln!(
            "narpush: the oldest queued entry has waited {}, longer than --max-age {}",
            human_duration(Duration::from_secs(oldest.unwrap_or(0))),
            human_duration(max_age.unwrap_or_default())
        );
        return Ok(1);
    }
    Ok(0)
}
