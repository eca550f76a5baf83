//! The commands, from a resolved [`Config`] to an exit code: `push` (by hand or as
//! Nix's post-build hook), `retry` and `keygen`. This is where the never-wedge-a-build
//! policy lives: in hook mode a failure is reported in one line per path, the paths
//! are recorded in the pending list, and the exit code is 0 unless `--strict`.

use crate::cache::Cache;
use crate::compress::Compression;
use crate::config::{Command, Config, HookEnv};
use crate::error::{Error, Result};
use crate::nix::local::LocalNix;
use crate::nix::signing::SecretKey;
use crate::nix::store_path::StorePath;
use crate::nix::user_path::resolve_user_path;
use crate::pending::PendingList;
use crate::push::{self, human_bytes, Event, Outcome, PushOptions, Report};
use crate::store_url::StoreUrl;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How `main` sees the environment (the real one, or a test's).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Run a resolved command; returns the exit code.
pub fn run(config: Config, env: Env) -> Result<i32> {
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
        Command::Push { paths, hook } => {
            let (paths, hook) = (paths.clone(), hook.clone());
            match hook {
                Some(h) if !config.wait => crate::pusher::run_queue_hook(&config, &h),
                Some(h) => run_hook(&config, &h, env),
                None => run_push(&config, &paths, env),
            }
        }
        Command::Retry => crate::pusher::run_retry(&config, env),
        Command::Flush { timeout } => crate::pusher::run_flush(&config, env, *timeout),
        Command::Status { json, max_age } => crate::pusher::run_status(&config, *json, *max_age),
        Command::Pusher => crate::pusher::run_pusher(&config, env),
        Command::Life(c) => crate::life::run(c, &config, env),
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

/// Everything a push needs, built from the configuration.
pub(crate) struct Target {
    pub(crate) cache: Cache,
    pub(crate) opts: PushOptions,
}

/// The store URL `--to` names, parsed (the region defaults to `AWS_REGION`).
pub(crate) fn target_url(config: &Config, env: Env) -> Result<StoreUrl> {
    let to = config.to.as_deref().ok_or_else(|| {
        Error::Usage(
            "no binary cache given: pass --to URL (e.g. s3://nix-cache?endpoint=s3.example.org), \
             set NARPUSH_TO, or 'to' in /etc/narpush.toml"
                .into(),
        )
    })?;
    let region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION"));
    StoreUrl::parse(to, region.as_deref())
}

/// The [`Cache`] over `url`: for S3, a client with the credentials found, failing fast
/// once the server is unreachable, and (`journal`, for pushes) the upload journal in
/// the state directory, whose stale uploads are aborted now.
pub(crate) fn open_cache(
    url: &StoreUrl,
    config: &Config,
    env: Env,
    journal: bool,
) -> Result<Cache> {
    Ok(match url {
        StoreUrl::File { dir, .. } => Cache::File { dir: dir.clone() },
        StoreUrl::S3(s3) => {
            let home = env("HOME").map(PathBuf::from);
            let req = crate::creds::Request {
                credentials_file: config.credentials_file.as_deref(),
                profile: s3.profile.as_deref(),
            };
            let creds = crate::creds::resolve(&req, env, home.as_deref())?;
            let client = crate::s3::Client::new(s3.client_config(creds))?;
            client.fail_fast_after_outage();
            let journal =
                journal.then(|| crate::uploads::Journal::new(&config.state_dir, client.describe()));
            let cache = Cache::S3 {
                client,
                part_size: s3.part_size as usize,
                journal,
            };
            cache.abort_stale_uploads();
            cache
        }
    })
}

pub(crate) fn open_target(config: &Config, env: Env) -> Result<Target> {
    let url = target_url(config, env)?;
    let params = match &url {
        StoreUrl::File { params, .. } => params,
        StoreUrl::S3(s3) => &s3.cache,
    };
    let compression = Compression::parse(
        config
            .compression
            .as_deref()
            .or(params.compression.as_deref())
            .unwrap_or("zstd"),
    )?;
    let level = compression.check_level(config.compression_level.or(params.compression_level))?;
    let mut keys = Vec::new();
    for path in config.key_files.iter().chain(&params.secret_keys) {
        let (key, warning) = SecretKey::load(path)?;
        if let Some(w) = warning {
            eprintln!("narpush: warning: {w}");
        }
        keys.push(key);
    }
    if keys.is_empty() && !config.quiet {
        eprintln!(
            "narpush: warning: no signing key (--key-file); clients with require-sigs accept these paths only through signatures they already carry"
        );
    }
    let cache = open_cache(&url, config, env, true)?;
    let opts = PushOptions {
        compression,
        level,
        keys,
        deps: config.deps,
        upstream_keys: config.upstream_keys.clone(),
        jobs: config.jobs,
        compression_threads: config.compression_threads as u32,
        progress: !config.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        exclude: config.exclude.clone(),
    };
    Ok(Target { cache, opts })
}

/// The per-path lines, as they happen.
pub(crate) fn logger(config: &Config) -> impl Fn(&Event) + Sync + '_ {
    move |ev: &Event| match ev {
        Event::Pushed {
            path,
            nar_size,
            file_size,
            compression,
            elapsed,
        } if !config.quiet => {
            println!(
                "pushed {path}: {} → {} {} in {:.1} s",
                human_bytes(*nar_size),
                human_bytes(*file_size),
                compression.name(),
                elapsed.as_secs_f64()
            );
        }
        Event::Present { path } if config.verbose => {
            println!("skipped {path}: already in the cache")
        }
        Event::Upstream { path } if config.verbose => {
            println!("skipped {path}: signed by an upstream cache")
        }
        Event::Excluded { path, pattern } if config.verbose => {
            println!("skipped {path}: excluded by '{pattern}'")
        }
        Event::Failed { path, error } => eprintln!("narpush: failed {path}: {error}"),
        _ => {}
    }
}

pub(crate) fn summary(config: &Config, report: &Report, cache: &Cache) {
    if config.quiet {
        return;
    }
    let pushed = report.count(|o| matches!(o, Outcome::Pushed { .. }));
    let present = report.count(|o| matches!(o, Outcome::Present));
    let failed = report.count(|o| matches!(o, Outcome::Failed(_)));
    let (nar, file) = report
        .outcomes
        .iter()
        .fold((0, 0), |(n, f), (_, o)| match o {
            Outcome::Pushed {
                nar_size,
                file_size,
                ..
            } => (n + nar_size, f + file_size),
            _ => (n, f),
        });
    let mut line = format!(
        "narpush: {pushed} pushed ({} → {})",
        human_bytes(nar),
        human_bytes(file)
    );
    line += &format!(", {present} already cached");
    if !report.upstream.is_empty() {
        line += &format!(", {} left to upstream", report.upstream.len());
    }
    if failed > 0 {
        line += &format!(", {failed} failed");
    }
    line += &format!(
        " in {:.1} s to {}",
        report.elapsed.as_secs_f64(),
        cache.describe()
    );
    println!("{line}");
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
fn run_push(config: &Config, paths: &[PathBuf], env: Env) -> Result<i32> {
    let nix = LocalNix::detect()?;
    let roots = without_excluded(config, resolve_args(paths, &nix.store_dir)?, &nix.store_dir);
    if roots.is_empty() {
        return Ok(0);
    }
    let target = open_target(config, env)?;
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
    roots
        .into_iter()
        .filter(
            |r| match crate::glob::first_match(&config.exclude, r.name()) {
                Some(g) => {
                    eprintln!(
                        "narpush: skipped {}: excluded by '{}'",
                        r.to_full(store_dir),
                        g.as_str()
                    );
                    false
                }
                None => true,
            },
        )
        .collect()
}

/// What Nix says was built; `OUT_PATHS` may be empty (Nix 2.8.0), then the
/// derivation's valid outputs. Entries that are not valid store paths are returned
/// as lines to report.
fn hook_roots(nix: &LocalNix, hook: &HookEnv) -> Result<(Vec<StorePath>, Vec<String>)> {
    let mut roots = Vec::new();
    let mut junk = Vec::new();
    for tok in &hook.out_paths {
        match StorePath::from_full_path(&nix.store_dir, tok) {
            Ok(p) => roots.push(p),
            Err(e) => junk.push(format!("OUT_PATHS entry {e}")),
        }
    }
    if hook.out_paths.is_empty() {
        if let Some(drv) = &hook.drv_path {
            roots = nix.valid_outputs_of(Path::new(drv))?;
        }
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
fn run_hook(config: &Config, hook: &HookEnv, env: Env) -> Result<i32> {
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
    let failed: Vec<String> = match open_target(config, env)
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
