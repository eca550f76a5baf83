//! The local Nix installation, reached through its command-line tools as child
//! processes: `nix path-info --json` for what the store knows of paths (read by
//! [`parse_path_info_json`](super::pathinfo::parse_path_info_json)), `nix-store`
//! for a derivation's outputs and for validity. Every failure names the command line
//! and the last line Nix printed.
//!
//! Why `nix path-info --json` and not `nix-store --query`: one call gives the hash,
//! size, references, deriver, signatures and CA of a whole closure, where
//! `nix-store -q` needs one call per field and has no way to print signatures or CA.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::nix::pathinfo::{parse_path_info_json, PathInfo};
use crate::nix::store_path::{StorePath, DEFAULT_STORE_DIR};

/// Most paths passed to one child process, to stay well under `ARG_MAX`
/// (1000 store paths are about 80 KB of arguments).
const BATCH: usize = 1000;

/// The local Nix installation, reached through its command-line tools.
#[derive(Clone, Debug)]
pub struct LocalNix {
    pub store_dir: String,
}

/// The last non-empty line of a child's stderr, for error messages.
fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output on stderr)")
        .trim()
        .to_string()
}

fn not_found(program: &str, e: &io::Error) -> Error {
    Error::Nix(format!(
        "{program} not found on PATH ({e}); narpush needs the Nix command-line tools"
    ))
}

/// The command line for an error message: options as given, store paths shown
/// when there is one and counted when there are more.
fn describe(program: &str, args: &[&str]) -> String {
    let mut words = vec![program.to_string()];
    let mut paths = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--extra-experimental-features" => {
                it.next();
            }
            a if a.starts_with('/') => paths.push(a),
            a => words.push(a.to_string()),
        }
    }
    match paths.as_slice() {
        [] => {}
        [one] => words.push(one.to_string()),
        many => words.push(format!("<{} store paths>", many.len())),
    }
    words.join(" ")
}

/// Run a Nix tool; stdout on success, stderr's last line in the error otherwise.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => not_found(program, &e),
            _ => Error::Nix(format!("cannot run {program}: {e}")),
        })?;
    if !out.status.success() {
        return Err(Error::Nix(format!(
            "`{}` failed ({}): {}",
            describe(program, args),
            out.status,
            last_line(&out.stderr)
        )));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| Error::Nix(format!("{program} printed output that is not UTF-8")))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

fn invalid_error(invalid: &[String]) -> Error {
    match invalid {
        [one] => Error::Nix(format!(
            "{one} is not valid in the local Nix store (not built or garbage-collected)"
        )),
        // Name a few, not thousands: this is one line of an error message.
        many => Error::Nix(format!(
            "{} paths are not valid in the local Nix store (not built or garbage-collected): {}{}",
            many.len(),
            many[..many.len().min(5)].join(", "),
            if many.len() > 5 { ", …" } else { "" }
        )),
    }
}

impl LocalNix {
    /// Find the Nix tools and the store directory: `NIX_STORE_DIR`, else `/nix/store`
    /// (checked against the paths `nix path-info` returns).
    pub fn detect() -> Result<LocalNix> {
        if !on_path("nix") {
            let path = std::env::var("PATH").unwrap_or_default();
            return Err(Error::Nix(format!(
                "nix not found on PATH ({path}); narpush needs the Nix command-line tools"
            )));
        }
        if let Some(dir) = std::env::var("NIX_STORE_DIR")
            .ok()
            .filter(|d| !d.is_empty())
        {
            return Ok(LocalNix {
                store_dir: dir.trim_end_matches('/').to_string(),
            });
        }
        // No `nix eval` for the store directory: a child process per run for what is
        // /nix/store everywhere but on machines that set NIX_STORE_DIR. Paths that
        // `nix path-info` reports elsewhere are refused by the JSON reader, naming it.
        Ok(LocalNix {
            store_dir: DEFAULT_STORE_DIR.to_string(),
        })
    }

    fn full(&self, paths: &[StorePath]) -> Vec<String> {
        paths.iter().map(|p| p.to_full(&self.store_dir)).collect()
    }

    /// Path info for `paths` (or their whole closures when `closure`); batches of
    /// [`BATCH`] paths per `nix path-info --json` call, results de-duplicated.
    /// An invalid path is an error naming it.
    pub fn query(&self, paths: &[StorePath], closure: bool) -> Result<Vec<PathInfo>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for batch in paths.chunks(BATCH) {
            let full = self.full(batch);
            let mut args = vec![
                "--extra-experimental-features",
                "nix-command",
                "path-info",
                "--json",
                // Only what is here: never try a substituter for a missing path.
                "--option",
                "substitute",
                "false",
            ];
            if closure {
                args.push("--recursive");
            }
            args.extend(full.iter().map(String::as_str));
            let text = match run("nix", &args) {
                Ok(t) => t,
                Err(e) => {
                    // 2.8 with --recursive fails on the first invalid path; name them all.
                    let valid = self.valid_paths(batch)?;
                    let invalid: Vec<String> = batch
                        .iter()
                        .filter(|p| !valid.contains(p))
                        .map(|p| p.to_full(&self.store_dir))
                        .collect();
                    return Err(if invalid.is_empty() {
                        e
                    } else {
                        invalid_error(&invalid)
                    });
                }
            };
            let (infos, invalid) = parse_path_info_json(&text, &self.store_dir)?;
            if !invalid.is_empty() {
                return Err(invalid_error(&invalid));
            }
            let got: HashSet<&StorePath> = infos.iter().map(|i| &i.path).collect();
            if let Some(missing) = batch.iter().find(|p| !got.contains(p)) {
                return Err(Error::Nix(format!(
                    "`nix path-info --json` said nothing about {}",
                    missing.to_full(&self.store_dir)
                )));
            }
            for info in infos {
                if seen.insert(info.path.clone()) {
                    out.push(info);
                }
            }
        }
        Ok(out)
    }

    /// Output paths of the derivation `drv` that are valid locally
    /// (`nix-store -q --outputs`, then `nix-store --check-validity`). For Nix
    /// 2.8.0's empty `OUT_PATHS` in a post-build hook.
    pub fn valid_outputs_of(&self, drv: &Path) -> Result<Vec<StorePath>> {
        match drv.symlink_metadata() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Nix(format!(
                    "derivation {} does not exist",
                    drv.display()
                )))
            }
            Err(e) => return Err(Error::io("read derivation", drv, e)),
        }
        if drv.extension().is_none_or(|e| e != "drv") {
            // `nix-store -q --outputs` maps a non-derivation to itself; refuse instead.
            return Err(Error::Nix(format!(
                "{} is not a derivation (a .drv file)",
                drv.display()
            )));
        }
        let drv_s = drv
            .to_str()
            .ok_or_else(|| Error::Nix(format!("derivation path {} is not UTF-8", drv.display())))?;
        let text = run("nix-store", &["--query", "--outputs", drv_s])?;
        let mut outputs = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let p = StorePath::from_full_path(&self.store_dir, line).map_err(|e| {
                Error::Nix(format!(
                    "`nix-store --query --outputs {drv_s}` printed {line:?}: {e}"
                ))
            })?;
            outputs.push(p);
        }
        self.valid_paths(&outputs)
    }

    /// Which of `paths` are valid in the local store, in the order given
    /// (`nix-store --check-validity --print-invalid`, batched).
    pub fn valid_paths(&self, paths: &[StorePath]) -> Result<Vec<StorePath>> {
        let mut invalid = HashSet::new();
        for batch in paths.chunks(BATCH) {
            let full = self.full(batch);
            let mut args = vec!["--check-validity", "--print-invalid"];
            args.extend(full.iter().map(String::as_str));
            let text = run("nix-store", &args)?;
            invalid.extend(text.lines().map(str::to_string));
        }
        Ok(paths
            .iter()
            .filter(|p| !invalid.contains(&p.to_full(&self.store_dir)))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_command_lines() {
        let args = [
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--json",
            "/nix/store/a",
            "/nix/store/b",
        ];
        assert_eq!(
            describe("nix", &args),
            "nix path-info --json <2 store paths>"
        );
        assert_eq!(
            describe("nix-store", &["--query", "--outputs", "/nix/store/x.drv"]),
            "nix-store --query --outputs /nix/store/x.drv"
        );
    }
}
