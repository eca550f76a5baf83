//! Build logs in the cache (`--upload-log`): the local Nix's log of a derivation,
//! uploaded to `log/<drv file name>` as `nix store copy-log` writes it (plain text,
//! `text/plain; charset=utf-8`), where `nix log` on another machine asks for it.
//! Called per derivation from the push path (by hand, in hook mode, or by a
//! background pusher); a log that cannot be read or uploaded is a warning only.

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::nix::local::LocalNix;
use crate::nix::store_path::StorePath;
use std::process::{Command, Stdio};

/// The content type Nix gives build logs.
pub const LOG_TYPE: &str = "text/plain; charset=utf-8";

/// What happened to one derivation's log.
#[derive(Debug, PartialEq, Eq)]
pub enum LogOutcome {
    Uploaded(u64),
    /// The cache has it already.
    Present,
    /// The local Nix has no log for it (substituted, or logs are off).
    NoLog,
}

/// The cache key of a derivation's log: `log/<drv file name>`.
pub fn log_key(drv: &str) -> String {
    format!("log/{}", drv.rsplit('/').next().unwrap_or(drv))
}

/// The local Nix's build log of `drv` (a full `.drv` path), `None` when it has none.
pub fn read_local_log(drv: &str) -> Result<Option<Vec<u8>>> {
    let out = Command::new("nix-store")
        .args(["--read-log", drv])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Nix(format!("cannot run nix-store --read-log {drv}: {e}")))?;
    Ok(out.status.success().then_some(out.stdout))
}

/// Upload the build log of `drv` (a full `.drv` path) unless the cache has it.
pub fn upload_log(cache: &Cache, drv: &str) -> Result<LogOutcome> {
    let key = log_key(drv);
    if cache.exists(&key)? {
        return Ok(LogOutcome::Present);
    }
    let Some(log) = read_local_log(drv)? else {
        return Ok(LogOutcome::NoLog);
    };
    if let Cache::File { dir } = cache {
        let d = dir.join("log");
        std::fs::create_dir_all(&d).map_err(|e| Error::io("create", &d, e))?;
    }
    cache.put(&key, &log, LOG_TYPE)?;
    Ok(LogOutcome::Uploaded(log.len() as u64))
}

/// Upload the logs of the derivations that built what a push put in the cache (or
/// found there): `drv` (a hook's `DRV_PATH`) when given, else each path's `Deriver`.
/// Reports, never fails.
pub fn upload_for(
    nix: &LocalNix,
    cache: &Cache,
    report: &crate::push::Report,
    drv: Option<&str>,
    quiet: bool,
) {
    let drvs: Vec<String> = match drv {
        Some(d) if !d.is_empty() => vec![d.to_string()],
        _ => {
            let paths: Vec<StorePath> = report
                .outcomes
                .iter()
                .filter(|(_, o)| !matches!(o, crate::push::Outcome::Failed(_)))
                .filter_map(|(p, _)| StorePath::from_full_path(&nix.store_dir, p).ok())
                .collect();
            match nix.query(&paths, false) {
                Ok(infos) => {
                    let mut v: Vec<String> = infos
                        .iter()
                        .filter_map(|i| i.deriver.as_ref())
                        .map(|d| d.to_full(&nix.store_dir))
                        .collect();
                    v.sort();
                    v.dedup();
                    v
                }
                Err(e) => {
                    eprintln!("narpush: warning: build logs not uploaded: {e}");
                    return;
                }
            }
        }
    };
    for d in drvs {
        match upload_log(cache, &d) {
            Ok(LogOutcome::Uploaded(n)) if !quiet => {
                println!("uploaded build log of {d} ({n} bytes) to {}", log_key(&d))
            }
            Ok(_) => {}
            Err(e) => eprintln!("narpush: warning: build log of {d} not uploaded: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_the_drv_file_name() {
        assert_eq!(
            log_key("/nix/store/yps7aaaaaaaaaaaaaaaaaaaaaaaaaaaa-refdemo.drv"),
            "log/yps7aaaaaaaaaaaaaaaaaaaaaaaaaaaa-refdemo.drv"
        );
    }
}
