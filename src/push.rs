//! The push pipeline, and the only module that knows its order:
//!
//! 1. ask the local Nix for the path infos (the given paths, or their closures);
//! 2. choose what to push (`Deps`: the given paths; plus closure members that carry
//!    no upstream signature; or the whole closure);
//! 3. ask the cache which narinfos it already has (HEAD requests, in parallel);
//! 4. check `nix-cache-info` (write it when missing, refuse a different StoreDir);
//! 5. push in parallel, each path only after every reference being pushed in this run
//!    has its narinfo up (and never when a reference's presence could not be
//!    checked in step 3): serialise the NAR once, hashing it (NarHash) while it is
//!    compressed and hashed again (FileHash) on its way to the cache; refuse the path
//!    when its NarHash differs from the one Nix recorded; then the signed narinfo.

use crate::cache::{Cache, CACHE_INFO_TYPE, NARINFO_TYPE};
use crate::compress::{Compression, Encoder};
use crate::config::Deps;
use crate::error::{Error, Result};
use crate::hashing::HashingWriter;
use crate::nix::local::LocalNix;
use crate::nix::narinfo::{sha256_nix32, NarInfo};
use crate::nix::pathinfo::PathInfo;
use crate::nix::signing::{sig_key_name, SecretKey};
use crate::nix::store_path::StorePath;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// NARs at least this large are compressed with every core (zstd's multithreading).
const PARALLEL_COMPRESSION_MIN: u64 = 16 << 20;
/// NARs at least this large hold a compressor's buffers and up to two multipart parts
/// in memory while they go up: at most [`LARGE_AT_ONCE`] of them at a time, however
/// many small paths (`--jobs`) are in flight beside them.
const LARGE_NAR: u64 = 1 << 20;
const LARGE_AT_ONCE: usize = 4;

/// A counting semaphore: at most `n` holders at once.
struct Gate {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Gate {
    fn new(n: usize) -> Gate {
        Gate {
            free: Mutex::new(n.max(1)),
            freed: Condvar::new(),
        }
    }

    fn enter(&self) -> GatePass<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        GatePass(self)
    }
}

struct GatePass<'a>(&'a Gate);

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

pub struct PushOptions {
    pub compression: Compression,
    pub level: Option<i32>,
    pub keys: Vec<SecretKey>,
    pub deps: Deps,
    pub upstream_keys: Vec<String>,
    pub jobs: usize,
    /// Threads compressing one large NAR.
    pub compression_threads: u32,
    /// Show a live progress line on stderr for large NARs (a terminal, not quiet).
    pub progress: bool,
    /// Closure members whose name matches one of these are not pushed (`--exclude`;
    /// the caller has already left out given paths that match).
    pub exclude: Vec<crate::glob::Glob>,
}

/// NARs at least this large get a live progress line in a terminal.
const PROGRESS_MIN: u64 = 32 << 20;

/// `12.3 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Counts NAR bytes on their way in and redraws one stderr line a few times a second.
struct ProgressWriter<W> {
    inner: W,
    name: String,
    total: u64,
    done: u64,
    last: Instant,
}

impl<W: std::io::Write> std::io::Write for ProgressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.done += n as u64;
        if self.last.elapsed() >= Duration::from_millis(250) {
            self.last = Instant::now();
            let pct = self.done.saturating_mul(100) / self.total.max(1);
            eprint!(
                "\r\x1b[Kpushing {}: {pct}% of {}",
                self.name,
                human_bytes(self.total)
            );
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W> Drop for ProgressWriter<W> {
    fn drop(&mut self) {
        eprint!("\r\x1b[K");
    }
}

/// What happened to one path.
#[derive(Debug)]
pub enum Outcome {
    Pushed {
        nar_size: u64,
        file_size: u64,
    },
    /// The cache already had its narinfo.
    Present,
    Failed(Error),
}

/// Progress, reported as it happens (from worker threads).
pub enum Event<'a> {
    Pushed {
        path: &'a str,
        nar_size: u64,
        file_size: u64,
        compression: Compression,
        elapsed: Duration,
    },
    Present {
        path: &'a str,
    },
    Upstream {
        path: &'a str,
    },
    Excluded {
        path: &'a str,
        pattern: &'a str,
    },
    Failed {
        path: &'a str,
        error: &'a Error,
    },
}

pub struct Report {
    /// Full store paths in the order they were decided.
    pub outcomes: Vec<(String, Outcome)>,
    /// Closure members left out because an upstream cache signed them.
    pub upstream: Vec<String>,
    pub elapsed: Duration,
}

impl Report {
    pub fn failed(&self) -> impl Iterator<Item = (&str, &Error)> {
        self.outcomes.iter().filter_map(|(p, o)| match o {
            Outcome::Failed(e) => Some((p.as_str(), e)),
            _ => None,
        })
    }

    pub fn count(&self, pred: fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|(_, o)| pred(o)).count()
    }
}

/// A path pushed again whose narinfo is older than this is renewed (see `gc`).
pub const RENEW_AFTER_SECS: i64 = 86_400;

/// Push `roots` (and, per `opts.deps`, their dependencies) to `cache`.
pub fn push(
    nix: &LocalNix,
    cache: &Cache,
    roots: &[StorePath],
    opts: &PushOptions,
    log: &(dyn Fn(&Event) + Sync),
) -> Result<Report> {
    let start = Instant::now();
    let sd = nix.store_dir.as_str();
    let head_jobs = opts.jobs.clamp(8, 32);
    // With `--no-deps` only the given paths matter, so the cache is asked before Nix:
    // a path already there costs one HEAD, and when all are there Nix never starts.
    let mut asked: HashMap<&StorePath, Result<bool>> = HashMap::new();
    if opts.deps == Deps::None {
        let present = parallel_map(roots, head_jobs, |p| narinfo_present(cache, p));
        if present.iter().all(|r| matches!(r, Ok(true))) {
            let mut outcomes = Vec::new();
            for p in roots {
                let full = p.to_full(sd);
                log(&Event::Present { path: &full });
                outcomes.push((full, Outcome::Present));
            }
            return Ok(Report {
                outcomes,
                upstream: Vec::new(),
                elapsed: start.elapsed(),
            });
        }
        asked = roots.iter().zip(present).collect();
    }
    let infos = nix.query(roots, opts.deps != Deps::None)?;
    let root_set: BTreeSet<&StorePath> = roots.iter().collect();

    // 2. Choose.
    let mut candidates: Vec<&PathInfo> = Vec::new();
    let mut upstream = Vec::new();
    for info in &infos {
        let is_root = root_set.contains(&info.path);
        if !is_root {
            if let Some(g) = crate::glob::first_match(&opts.exclude, info.path.name()) {
                log(&Event::Excluded {
                    path: &info.path.to_full(sd),
                    pattern: g.as_str(),
                });
                continue;
            }
        }
        let upstream_signed = info
            .sigs
            .iter()
            .any(|s| opts.upstream_keys.iter().any(|k| k == sig_key_name(s)));
        if is_root || opts.deps == Deps::Closure || !upstream_signed {
            candidates.push(info);
        } else {
            log(&Event::Upstream {
                path: &info.path.to_full(sd),
            });
            upstream.push(info.path.to_full(sd));
        }
    }

    // 3. Which are in the cache already.
    let to_ask: Vec<&PathInfo> = candidates
        .iter()
        .filter(|i| !asked.contains_key(&i.path))
        .copied()
        .collect();
    let mut answers = parallel_map(&to_ask, head_jobs, |info| {
        narinfo_present(cache, &info.path)
    })
    .into_iter();
    let present: Vec<Result<bool>> = candidates
        .iter()
        .map(|i| {
            asked
                .remove(&i.path)
                .unwrap_or_else(|| answers.next().expect("one answer per path not asked yet"))
        })
        .collect();
    let mut outcomes: Vec<(String, Outcome)> = Vec::new();
    let mut todo: Vec<&PathInfo> = Vec::new();
    // Paths whose presence could not be checked: nothing referring to them may go up.
    let mut unknown: BTreeSet<&StorePath> = BTreeSet::new();
    for (info, p) in candidates.iter().zip(present) {
        let full = info.path.to_full(sd);
        match p {
            Ok(true) => {
                log(&Event::Present { path: &full });
                outcomes.push((full, Outcome::Present));
            }
            Ok(false) => todo.push(info),
            Err(e) => {
                log(&Event::Failed {
                    path: &full,
                    error: &e,
                });
                unknown.insert(&info.path);
                outcomes.push((full, Outcome::Failed(e)));
            }
        }
    }
    if todo.is_empty() {
        return Ok(Report {
            outcomes,
            upstream,
            elapsed: start.elapsed(),
        });
    }

    // 4. The cache's nix-cache-info.
    if let Err(e) = check_cache_info(cache, sd) {
        for info in todo {
            outcomes.push((
                info.path.to_full(sd),
                Outcome::Failed(Error::Other(e.to_string())),
            ));
        }
        return Err(e);
    }

    // 5. Push in reference order.
    let large = Gate::new(LARGE_AT_ONCE);
    let results = run_ordered(
        &todo,
        opts.jobs,
        |info| {
            let full = info.path.to_full(sd);
            // Its dependents wait for it and fail in turn.
            if let Some(r) = info.references.iter().find(|r| unknown.contains(r)) {
                let e = Error::Other(format!(
                    "not pushed: whether its reference {} is in the cache could not be checked",
                    r.to_full(sd)
                ));
                log(&Event::Failed {
                    path: &full,
                    error: &e,
                });
                return Outcome::Failed(e);
            }
            let _pass = (info.nar_size >= LARGE_NAR).then(|| large.enter());
            let t = Instant::now();
            match push_one(nix, cache, info, opts) {
                Ok((nar_size, file_size)) => {
                    let elapsed = t.elapsed();
                    log(&Event::Pushed {
                        path: &full,
                        nar_size,
                        file_size,
                        compression: opts.compression,
                        elapsed,
                    });
                    Outcome::Pushed {
                        nar_size,
                        file_size,
                    }
                }
                Err(e) => {
                    log(&Event::Failed {
                        path: &full,
                        error: &e,
                    });
                    Outcome::Failed(e)
                }
            }
        },
        |info, dep| {
            let e = Error::Other(format!(
                "not pushed: its reference {} could not be pushed",
                dep.path.to_full(sd)
            ));
            log(&Event::Failed {
                path: &info.path.to_full(sd),
                error: &e,
            });
            Outcome::Failed(e)
        },
    );
    for (info, outcome) in todo.iter().zip(results) {
        outcomes.push((info.path.to_full(sd), outcome));
    }
    Ok(Report {
        outcomes,
        upstream,
        elapsed: start.elapsed(),
    })
}

/// Whether the cache has `path`'s narinfo: one HEAD. One older than a day is written
/// again, so that gc keeps what is pushed.
fn narinfo_present(cache: &Cache, path: &StorePath) -> Result<bool> {
    let key = format!("{}.narinfo", path.hash_part());
    cache.exists_renewing(&key, RENEW_AFTER_SECS, crate::cache::now_secs())
}

/// Write `nix-cache-info` when the cache has none; refuse a cache for another store.
pub fn check_cache_info(cache: &Cache, store_dir: &str) -> Result<()> {
    cache.prepare()?;
    match cache.get("nix-cache-info")? {
        None => cache.put(
            "nix-cache-info",
            format!("StoreDir: {store_dir}\n").as_bytes(),
            CACHE_INFO_TYPE,
        ),
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let theirs = text.lines().find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| *k == "StoreDir")
                    .map(|(_, v)| v.trim())
            });
            match theirs {
                Some(dir) if dir != store_dir => Err(Error::Other(format!(
                    "binary cache {} is for Nix stores with prefix '{dir}', not '{store_dir}'; push to another cache",
                    cache.describe()
                ))),
                _ => Ok(()),
            }
        }
    }
}

/// Serialise, check, compress and upload one path, then its narinfo.
fn push_one(
    nix: &LocalNix,
    cache: &Cache,
    info: &PathInfo,
    opts: &PushOptions,
) -> Result<(u64, u64)> {
    let sd = nix.store_dir.as_str();
    let full = info.path.to_full(sd);
    let threads = if info.nar_size >= PARALLEL_COMPRESSION_MIN {
        opts.compression_threads
    } else {
        1
    };
    let expected = info.nar_size + info.nar_size / 16 + (64 << 10);
    let sink = cache.nar_sink(&info.nar_hash, opts.compression.extension(), expected)?;
    let encoder = Encoder::new(
        opts.compression,
        opts.level,
        threads,
        info.nar_size,
        HashingWriter::new(sink),
    )
    .map_err(|e| {
        Error::Other(format!(
            "start {} compression: {e}",
            opts.compression.name()
        ))
    })?;
    let mut pipeline = HashingWriter::new(encoder);
    let dumped = if opts.progress && info.nar_size >= PROGRESS_MIN {
        let mut shown = ProgressWriter {
            inner: &mut pipeline,
            name: info.path.name().to_string(),
            total: info.nar_size,
            done: 0,
            last: Instant::now(),
        };
        crate::nix::dump::dump_path(Path::new(&full), &mut shown).map(|_| ())
    } else {
        crate::nix::dump::dump_path(Path::new(&full), &mut pipeline).map(|_| ())
    };
    let (encoder, nar_hash, nar_size) = pipeline.finish();
    let finished = encoder.finish();
    let (sink, file_hash, file_size) = match (dumped, finished) {
        (Ok(_), Ok(w)) => w.finish(),
        (Err(e), Ok(w)) => {
            w.finish().0.abort();
            return Err(transport_or(e));
        }
        (Ok(_), Err(e)) | (Err(_), Err(e)) => {
            // The sink was dropped with the encoder: a temporary file is removed and a
            // multipart upload aborted by their Drop.
            return Err(io_to_error(e, cache));
        }
    };
    if nar_hash != info.nar_hash || nar_size != info.nar_size {
        sink.abort();
        return Err(Error::Other(format!(
            "{full} is corrupted: the local Nix database records NarHash {} ({} bytes) but its contents \
             serialise to {} ({nar_size} bytes); nothing was uploaded for it; repair it with \
             'nix-store --verify --check-contents --repair'",
            sha256_nix32(&info.nar_hash),
            info.nar_size,
            sha256_nix32(&nar_hash),
        )));
    }
    let url = sink.finish(&file_hash)?;
    let mut narinfo = NarInfo {
        store_path: full,
        url,
        compression: opts.compression.name().to_string(),
        file_hash: Some(file_hash),
        file_size: Some(file_size),
        nar_hash,
        nar_size,
        references: info
            .references
            .iter()
            .map(|r| r.base_name().to_string())
            .collect(),
        deriver: info.deriver.as_ref().map(|d| d.base_name().to_string()),
        sigs: Vec::new(),
        ca: info.ca.clone(),
    };
    let fingerprint = narinfo.fingerprint();
    let mut sigs: BTreeSet<String> = info.sigs.iter().cloned().collect();
    for key in &opts.keys {
        // One signature per key name: ours replaces a stale one under the same name.
        sigs.retain(|s| sig_key_name(s) != key.name());
        sigs.insert(key.sign(fingerprint.as_bytes()));
    }
    narinfo.sigs = sigs.into_iter().collect();
    cache.put(
        &format!("{}.narinfo", info.path.hash_part()),
        narinfo.render().as_bytes(),
        NARINFO_TYPE,
    )?;
    Ok((nar_size, file_size))
}

/// An I/O error out of the pipeline may carry an S3 error (from the upload sink).
fn io_to_error(e: std::io::Error, cache: &Cache) -> Error {
    match crate::s3::S3Error::from_io(e) {
        Ok(s3) => Error::S3(s3),
        Err(e) => Error::Other(format!("write NAR to {}: {e}", cache.describe())),
    }
}

/// A dump error wrapping a failed write to the sink is the sink's error.
fn transport_or(e: Error) -> Error {
    match e {
        Error::Io { context, source } => match crate::s3::S3Error::from_io(source) {
            Ok(s3) => Error::S3(s3),
            Err(source) => Error::Io { context, source },
        },
        other => other,
    }
}

/// Apply `f` to every item with up to `threads` threads; results in input order.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap_or_else(|p| p.into_inner());
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.expect("every item done"))
        .collect()
}

/// Run `work` on every path with up to `jobs` threads, each only after all of its
/// references among `items` succeeded; a path whose reference failed gets
/// `dep_failed(path, failed reference)` instead. Results in input order.
fn run_ordered<'a>(
    items: &[&'a PathInfo],
    jobs: usize,
    work: impl Fn(&'a PathInfo) -> Outcome + Sync,
    dep_failed: impl Fn(&'a PathInfo, &'a PathInfo) -> Outcome + Sync,
) -> Vec<Outcome> {
    let index: HashMap<&StorePath, usize> = items
        .iter()
        .enumerate()
        .map(|(i, p)| (&p.path, i))
        .collect();
    let mut waiting_on: Vec<usize> = vec![0; items.len()];
    let mut dependents: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, info) in items.iter().enumerate() {
        for r in &info.references {
            if let Some(&j) = index.get(r) {
                if j != i {
                    waiting_on[i] += 1;
                    dependents.entry(j).or_default().push(i);
                }
            }
        }
    }
    struct State {
        ready: VecDeque<usize>,
        waiting_on: Vec<usize>,
        results: Vec<Option<Outcome>>,
        running: usize,
        remaining: usize,
        /// A job panicked: the others stop taking work, and the panic goes on up
        /// (instead of leaving them waiting for a result that never comes).
        panicked: bool,
    }
    let mut ready: Vec<usize> = (0..items.len()).filter(|&i| waiting_on[i] == 0).collect();
    // Largest first: the long uploads start early.
    ready.sort_by_key(|&i| std::cmp::Reverse(items[i].nar_size));
    let state = Mutex::new(State {
        ready: ready.into(),
        waiting_on,
        results: (0..items.len()).map(|_| None).collect(),
        running: 0,
        remaining: items.len(),
        panicked: false,
    });
    let cv = Condvar::new();
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    loop {
                        if let Some(i) = st.ready.pop_front() {
                            st.running += 1;
                            break i;
                        }
                        if st.panicked
                            || st.remaining == 0
                            || (st.running == 0 && st.ready.is_empty())
                        {
                            cv.notify_all();
                            return;
                        }
                        st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                };
                let outcome =
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(items[i])))
                    {
                        Ok(o) => o,
                        Err(panic) => {
                            state.lock().unwrap_or_else(|p| p.into_inner()).panicked = true;
                            cv.notify_all();
                            std::panic::resume_unwind(panic);
                        }
                    };
                let ok = !matches!(outcome, Outcome::Failed(_));
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                st.results[i] = Some(outcome);
                st.running -= 1;
                st.remaining -= 1;
                // Settle dependents: ready when their last reference is up; failed
                // (transitively) when one cannot be.
                let mut stack = vec![(i, ok)];
                while let Some((done, ok)) = stack.pop() {
                    for &d in dependents.get(&done).map(Vec::as_slice).unwrap_or(&[]) {
                        if st.results[d].is_some() {
                            continue;
                        }
                        if ok {
                            st.waiting_on[d] -= 1;
                            if st.waiting_on[d] == 0 {
                                st.ready.push_back(d);
                            }
                        } else {
                            st.results[d] = Some(dep_failed(items[d], items[done]));
                            st.remaining -= 1;
                            stack.push((d, false));
                        }
                    }
                }
                cv.notify_all();
            });
        }
    });
    state
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| Outcome::Failed(Error::Other("not pushed: reference cycle".into())))
        })
        .collect()
}

#[cfg(test)]
mod scheduler_tests {
    //! The ordering scheduler on its own: no Nix, no cache, paths made up.
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Run `f` on its own thread and fail (instead of hanging) if it takes longer
    /// than a loaded CI machine could need.
    fn within_deadline<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(120))
            .expect("the scheduler stalled (or panicked)")
    }

    fn path(i: usize) -> StorePath {
        StorePath::from_base_name(&format!("{i:0>32}-p{i}")).unwrap()
    }

    /// Path `i` referring to paths `refs` (and to itself, as many real paths do).
    fn info(i: usize, refs: &[usize]) -> PathInfo {
        let mut references: Vec<StorePath> = refs.iter().map(|&r| path(r)).collect();
        references.push(path(i));
        references.sort();
        PathInfo {
            path: path(i),
            nar_hash: [0; 32],
            nar_size: (i as u64 * 7919) % 1000,
            references,
            deriver: None,
            sigs: Vec::new(),
            ca: None,
            ultimate: false,
        }
    }

    fn index(p: &PathInfo) -> usize {
        p.path.name()[1..].parse().unwrap()
    }

    fn failed_text(o: &Outcome) -> Option<String> {
        match o {
            Outcome::Failed(e) => Some(e.to_string()),
            _ => None,
        }
    }

    /// A deterministic DAG of `n` paths: each refers to up to three earlier ones.
    fn dag(n: usize) -> Vec<PathInfo> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|i| {
                let mut refs = Vec::new();
                for _ in 0..3 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if i > 0 && !x.is_multiple_of(3) {
                        refs.push((x as usize) % i);
                    }
                }
                info(i, &refs)
            })
            .collect()
    }

    /// Runs `run_ordered` over `infos` (given in reverse, so references come last),
    /// checking that no path starts before all its references finished and that
    /// `work` runs once per path; `fails` are the paths whose work fails.
    fn run(infos: Vec<PathInfo>, jobs: usize, fails: &'static [usize]) -> Vec<(usize, Outcome)> {
        within_deadline(move || {
            let items: Vec<&PathInfo> = infos.iter().rev().collect();
            let done: Mutex<HashSet<usize>> = Mutex::default();
            let calls: Vec<AtomicUsize> = (0..infos.len()).map(|_| AtomicUsize::new(0)).collect();
            let outcomes = run_ordered(
                &items,
                jobs,
                |p| {
                    let i = index(p);
                    assert_eq!(calls[i].fetch_add(1, Ordering::SeqCst), 0, "path {i} twice");
                    {
                        let done = done.lock().unwrap();
                        for r in p.references.iter().filter(|r| **r != p.path) {
                            let r = infos.iter().position(|q| q.path == *r).unwrap();
                            assert!(
                                done.contains(&r),
                                "path {i} started before its reference {r}"
                            );
                        }
                    }
                    std::thread::yield_now();
                    if fails.contains(&i) {
                        return Outcome::Failed(Error::Other(format!("path {i} broke")));
                    }
                    done.lock().unwrap().insert(i);
                    Outcome::Present
                },
                |p, r| {
                    Outcome::Failed(Error::Other(format!(
                        "path {} not pushed: needs path {}",
                        index(p),
                        index(r)
                    )))
                },
            );
            assert_eq!(outcomes.len(), items.len());
            items.iter().map(|p| index(p)).zip(outcomes).collect()
        })
    }

    #[test]
    fn a_path_never_starts_before_its_references_and_each_runs_once() {
        for jobs in [1, 2, 4, 16] {
            let got = run(dag(60), jobs, &[]);
            // Results come in input order (reversed here), every one a success.
            let order: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
            assert_eq!(order, (0..60).rev().collect::<Vec<_>>());
            for (i, o) in &got {
                assert!(
                    matches!(o, Outcome::Present),
                    "jobs {jobs}, path {i}: {o:?}"
                );
            }
        }
    }

    #[test]
    fn a_failure_fails_its_dependents_only_and_stalls_nothing() {
        // 0 <- 1 <- 2 (a chain), 3 and 4 independent, 5 needs 4 and 2.
        let infos = vec![
            info(0, &[]),
            info(1, &[0]),
            info(2, &[1]),
            info(3, &[]),
            info(4, &[]),
            info(5, &[4, 2]),
        ];
        for jobs in [1, 3] {
            let got: HashMap<usize, Outcome> = run(infos.clone(), jobs, &[0]).into_iter().collect();
            assert_eq!(failed_text(&got[&0]).unwrap(), "path 0 broke");
            assert_eq!(
                failed_text(&got[&1]).unwrap(),
                "path 1 not pushed: needs path 0"
            );
            // Transitively, naming the reference that could not be pushed.
            assert_eq!(
                failed_text(&got[&2]).unwrap(),
                "path 2 not pushed: needs path 1"
            );
            assert_eq!(
                failed_text(&got[&5]).unwrap(),
                "path 5 not pushed: needs path 2"
            );
            for i in [3, 4] {
                assert!(matches!(got[&i], Outcome::Present), "{i}: {:?}", got[&i]);
            }
        }
    }

    #[test]
    fn failures_inside_a_large_graph_leave_every_other_path_done() {
        let infos = dag(80);
        let got = run(infos.clone(), 4, &[3, 40]);
        // A path fails exactly when it, or something it needs, failed.
        let mut bad: HashSet<usize> = HashSet::new();
        for (i, p) in infos.iter().enumerate() {
            let needs_bad = p
                .references
                .iter()
                .filter(|r| **r != p.path)
                .any(|r| bad.contains(&infos.iter().position(|q| q.path == *r).unwrap()));
            if [3, 40].contains(&i) || needs_bad {
                bad.insert(i);
            }
        }
        assert!(
            bad.len() < infos.len(),
            "the graph makes every path depend on 3"
        );
        for (i, o) in &got {
            assert_eq!(failed_text(o).is_some(), bad.contains(i), "path {i}: {o:?}");
        }
    }

    #[test]
    fn a_reference_cycle_is_reported_not_waited_on() {
        let infos = vec![info(0, &[1]), info(1, &[0]), info(2, &[])];
        let got: HashMap<usize, Outcome> = run(infos, 2, &[]).into_iter().collect();
        for i in [0, 1] {
            assert!(failed_text(&got[&i]).unwrap().contains("reference cycle"));
        }
        assert!(matches!(got[&2], Outcome::Present));
    }

    #[test]
    fn a_slow_path_does_not_hold_back_independent_ones() {
        use std::sync::Condvar;
        // 1 is slow and the largest, so it starts first; 2, 3 and 4 (which needs
        // 2) do not depend on it. With two jobs they all finish while 1 is still
        // running: 1 waits for them (up to a deadline a loaded machine never
        // needs), so a scheduler that waited for the slow path fails here instead
        // of hanging.
        let saw = within_deadline(|| {
            let infos = [info(1, &[]), info(2, &[]), info(3, &[]), info(4, &[2])];
            let items: Vec<&PathInfo> = infos.iter().collect();
            let others_done = (Mutex::new(0usize), Condvar::new());
            let saw = Mutex::new(None);
            let outcomes = run_ordered(
                &items,
                2,
                |p| {
                    if index(p) == 1 {
                        let g = others_done.0.lock().unwrap();
                        let (g, _) = others_done
                            .1
                            .wait_timeout_while(g, Duration::from_secs(60), |n| *n < 3)
                            .unwrap();
                        *saw.lock().unwrap() = Some(*g);
                    } else {
                        *others_done.0.lock().unwrap() += 1;
                        others_done.1.notify_all();
                    }
                    Outcome::Present
                },
                |_, _| unreachable!("nothing fails"),
            );
            assert!(outcomes.iter().all(|o| matches!(o, Outcome::Present)));
            saw.into_inner().unwrap()
        });
        assert_eq!(saw, Some(3), "paths done while the slow one ran (of 3)");
    }

    #[test]
    fn a_job_that_panics_ends_the_run_with_its_panic_instead_of_hanging() {
        // Without the `panicked` flag the other job waits for a result forever.
        let panicked = within_deadline(|| {
            std::panic::catch_unwind(|| {
                let infos = dag(20);
                let items: Vec<&PathInfo> = infos.iter().collect();
                run_ordered(
                    &items,
                    3,
                    |p| {
                        if index(p) == 3 {
                            panic!("job 3 panics");
                        }
                        Outcome::Present
                    },
                    |_, _| Outcome::Present,
                )
            })
            .is_err()
        });
        assert!(panicked);
    }

    #[test]
    fn at_most_jobs_paths_run_at_once() {
        for jobs in [1, 3] {
            let most = within_deadline(move || {
                let infos = dag(60);
                let items: Vec<&PathInfo> = infos.iter().collect();
                let (inside, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
                run_ordered(
                    &items,
                    jobs,
                    |_| {
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        Outcome::Present
                    },
                    |_, _| unreachable!("nothing fails"),
                );
                most.into_inner()
            });
            assert!((1..=jobs).contains(&most), "jobs {jobs}: {most} at once");
        }
    }

    #[test]
    fn references_outside_the_set_are_not_waited_on_and_zero_jobs_is_one() {
        // Path 1 refers to 0, which is not being pushed (already in the cache).
        let got = within_deadline(|| {
            let infos = [info(1, &[0]), info(2, &[1])];
            let items: Vec<&PathInfo> = infos.iter().collect();
            let calls = AtomicUsize::new(0);
            let outcomes = run_ordered(
                &items,
                0,
                |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Outcome::Present
                },
                |_, _| unreachable!("nothing fails"),
            );
            let none: Vec<&PathInfo> = Vec::new();
            let empty = run_ordered(&none, 4, |_| Outcome::Present, |_, _| Outcome::Present);
            (outcomes, calls.into_inner(), empty.len())
        });
        assert!(
            got.0.iter().all(|o| matches!(o, Outcome::Present)),
            "{:?}",
            got.0
        );
        assert_eq!((got.1, got.2), (2, 0));
    }

    #[test]
    fn parallel_map_runs_up_to_threads_at_once_and_no_more() {
        // Four items meet at a barrier: only four threads at once get past it, so
        // a map that ran fewer at a time fails at the deadline instead of hanging.
        within_deadline(|| {
            let items: Vec<usize> = (0..8).collect();
            let barrier = std::sync::Barrier::new(4);
            let (inside, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let out = parallel_map(&items, 4, |&i| {
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                barrier.wait();
                inside.fetch_sub(1, Ordering::SeqCst);
                i + 1
            });
            assert_eq!(out, (1..=8).collect::<Vec<_>>());
            assert_eq!(most.into_inner(), 4);
        });
    }

    #[test]
    fn the_gate_lets_at_most_n_in() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let gate = Gate::new(2);
        let (inside, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let items: Vec<usize> = (0..32).collect();
        parallel_map(&items, 8, |_| {
            let _pass = gate.enter();
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::yield_now();
            inside.fetch_sub(1, Ordering::SeqCst);
        });
        assert!((1..=2).contains(&most.load(Ordering::SeqCst)));
        assert_eq!(*gate.free.lock().unwrap(), 2);
    }

    #[test]
    fn parallel_map_runs_each_item_once_and_keeps_the_order() {
        for threads in [0, 1, 3, 64] {
            let items: Vec<usize> = (0..100).collect();
            let calls: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
            let out = parallel_map(&items, threads, |&i| {
                calls[i].fetch_add(1, Ordering::SeqCst);
                i * 2
            });
            assert_eq!(out, (0..100).map(|i| i * 2).collect::<Vec<_>>());
            assert!(calls.iter().all(|c| c.load(Ordering::SeqCst) == 1));
        }
        let none: Vec<u8> = Vec::new();
        assert!(parallel_map(&none, 4, |_| 1).is_empty());
    }
}
