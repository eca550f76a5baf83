//! The narpush binary: parse arguments, resolve configuration, run, print the error
//! once and pick the exit code (0 ok, 1 run-time failure, 2 usage or configuration).
#![forbid(unsafe_code)]

use narpush::{app, cli, config, error::Error};

fn main() {
    let env = |k: &str| std::env::var(k).ok();
    let code = match cli::parse_args(std::env::args_os().skip(1))
        .and_then(|args| config::resolve(args, &env))
    {
        Ok(cfg) => {
            let hook = matches!(&cfg.command, config::Command::Push { hook: Some(_), .. });
            let (strict, state_dir) = (cfg.strict, cfg.state_dir.clone());
            match app::run(cfg, &env) {
                Ok(code) => code,
                Err(e) if hook && !strict => hook_failure(&e, &state_dir),
                Err(e) => report(&e),
            }
        }
        Err(e) if in_hook(&env) => match config::fallback_state_dir(&env) {
            Ok(dir) => hook_failure(&e, &dir),
            Err(_) => report(&e),
        },
        Err(e) => report(&e),
    };
    std::process::exit(code);
}

fn report(e: &Error) -> i32 {
    eprintln!("narpush: error: {e}");
    e.exit_code()
}

/// Run by Nix as a hook with no arguments.
fn in_hook(env: &dyn Fn(&str) -> Option<String>) -> bool {
    std::env::args_os().len() <= 2 && (env("OUT_PATHS").is_some() || env("DRV_PATH").is_some())
}

/// A hook that could not even start pushing: say so, record the outputs, exit 0.
fn hook_failure(e: &Error, state_dir: &std::path::Path) -> i32 {
    eprintln!("narpush: error: {e}");
    let outs: Vec<String> = std::env::var("OUT_PATHS")
        .unwrap_or_default()
        .split_whitespace()
        .filter(|p| p.starts_with('/') && !p.contains(['\n', '\r']))
        .map(String::from)
        .collect();
    let outs = if outs.is_empty() {
        // A derivation that does not exist has no outputs to push later.
        std::env::var("DRV_PATH")
            .ok()
            .filter(|d| !d.is_empty() && std::path::Path::new(d).exists())
            .into_iter()
            .collect()
    } else {
        outs
    };
    if outs.is_empty() {
        return 0;
    }
    match app::record_pending(state_dir, &outs) {
        Ok(()) => 0,
        Err(rec) => {
            eprintln!("narpush: error: {rec}");
            1
        }
    }
}
