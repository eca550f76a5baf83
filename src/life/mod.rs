//! The cache's life after the push: `init` (set a bucket or directory up as a binary
//! cache), `verify` (check what it serves the way a client would), `gc` (closure-aware
//! mark and sweep over the bucket alone) and build logs (`--upload-log`). This module
//! runs them and owns what they share (opening the cache, store-path arguments);
//! each command lives in its own file, and their command lines in `cli::life`.

pub mod gc;
pub mod init;
pub mod log;
pub mod verify;

pub use crate::cli::life::{GcArgs, InitArgs, LifeCommand, VerifyArgs};

use crate::cache::Cache;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::store_url::StoreUrl;
use std::path::PathBuf;

/// Run a resolved command; returns the exit code.
pub fn run(cmd: &LifeCommand, config: &Config) -> Result<i32> {
    match cmd {
        LifeCommand::Init(a) => init::run(a, config),
        LifeCommand::Verify(a) => verify::run(a, config),
        LifeCommand::Gc(a) => gc::run(a, config),
    }
}

/// The cache named by `--to`, opened for reading, listing and deleting.
pub fn open_cache(config: &Config) -> Result<(Cache, StoreUrl)> {
    let target = config.target()?;
    let cache = crate::session::open_cache(target, None)?;
    Ok((cache, target.url.clone()))
}

/// The hash part of a narinfo key (`<hash>.narinfo`), if it is one.
pub fn narinfo_hash(key: &str) -> Option<&str> {
    key.strip_suffix(".narinfo")
        .filter(|h| h.len() == 32 && !h.contains('/'))
}

/// The hash part of a store path's base name or full path.
pub fn hash_of(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split('-').next().unwrap_or(base)
}

/// The store paths `--keep`/`PATH` arguments name: store paths as written (they need
/// not exist here) or symlinks into the store such as `./result`, resolved.
pub fn resolve_store_paths(args: &[PathBuf], store_dir: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in args {
        let s = p.to_string_lossy();
        let prefix = format!("{store_dir}/");
        let full = if s.starts_with(&prefix) {
            let rest = &s[prefix.len()..];
            format!("{prefix}{}", rest.split('/').next().unwrap_or(rest))
        } else {
            crate::nix::user_path::resolve_user_path(&s, store_dir)?.to_full(store_dir)
        };
        crate::nix::store_path::StorePath::from_full_path(store_dir, &full)
            .map_err(|e| Error::Usage(format!("'{s}': {e}")))?;
        out.push(full);
    }
    Ok(out)
}

/// The store directory: the local Nix's, else `/nix/store`.
pub fn store_dir() -> String {
    crate::nix::local::LocalNix::detect()
        .map(|n| n.store_dir)
        .unwrap_or_else(|_| "/nix/store".to_string())
}
