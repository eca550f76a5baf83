//! What the commands that push share, between the configuration and the pipeline:
//! opening the cache a [`Target`] names (credentials read now, the upload journal,
//! stale uploads aborted) with the signing keys and options of a push, and what a
//! push prints (a line per path as it happens, then the summary). Used by `push`
//! and the hook (`app`), the pusher and the cache-life commands.

use crate::cache::Cache;
use crate::config::{Config, Target};
use crate::error::Result;
use crate::nix::signing::SecretKey;
use crate::push::{human_bytes, Event, Outcome, PushOptions, Report};
use crate::store_url::StoreUrl;
use std::path::Path;

/// An open cache and the options a push needs, from the configuration.
pub(crate) struct Opened {
    pub(crate) cache: Cache,
    pub(crate) opts: PushOptions,
}

/// Open the [`Cache`] `target` names: for S3, a client with the credentials read now,
/// failing fast once the server is unreachable, and (`journal`, the state directory
/// of a push) the upload journal there, whose stale uploads are aborted now.
pub(crate) fn open_cache(target: &Target, journal: Option<&Path>) -> Result<Cache> {
    Ok(match &target.url {
        StoreUrl::File { dir, .. } => Cache::File { dir: dir.clone() },
        StoreUrl::S3(s3) => {
            let creds = target.credentials.read()?;
            let client = crate::s3::Client::new(s3.client_config(creds))?;
            client.fail_fast_after_outage();
            let journal = journal.map(|dir| crate::uploads::Journal::new(dir, client.describe()));
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

/// Open the cache to push to, with the signing keys loaded.
pub(crate) fn open_target(config: &Config) -> Result<Opened> {
    let target = config.target()?;
    let compression = config.compression()?;
    let mut keys = Vec::new();
    for path in &target.key_files {
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
    let cache = open_cache(target, Some(&config.state_dir))?;
    let opts = PushOptions {
        compression: compression.method,
        level: compression.level,
        keys,
        deps: config.deps,
        upstream_keys: config.upstream_keys.clone(),
        jobs: config.jobs,
        compression_threads: config.compression_threads as u32,
        progress: !config.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        exclude: config.exclude.clone(),
    };
    Ok(Opened { cache, opts })
}

/// `PATH: 1.2 MiB → 300.0 KiB zstd in 0.4 s`: a pushed path, on the console and in
/// STATE/log alike.
pub(crate) fn pushed_text(
    path: &str,
    nar_size: u64,
    file_size: u64,
    compression: crate::compress::Compression,
    elapsed: std::time::Duration,
) -> String {
    format!(
        "{path}: {} → {} {} in {:.1} s",
        human_bytes(nar_size),
        human_bytes(file_size),
        compression.name(),
        elapsed.as_secs_f64()
    )
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
                "pushed {}",
                pushed_text(path, *nar_size, *file_size, *compression, *elapsed)
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
