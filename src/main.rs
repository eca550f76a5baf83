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
            let hook = match &cfg.command {
                config::Command::Push { hook: Some(h), .. } if !cfg.strict => Some(h.clone()),
                _ => None,
            };
            let state_dir = cfg.state_dir.clone();
            match (app::run(cfg), hook) {
                (Ok(code), _) => code,
                (Err(e), Some(h)) => hook_failure(&e, &h, &state_dir),
                (Err(e), None) => report(&e),
            }
        }
        Err(e) => match (in_hook(&env), config::fallback_state_dir(&env)) {
            (Some(h), Ok(dir)) => hook_failure(&e, &h, &dir),
            _ => report(&e),
        },
    };
    std::process::exit(code);
}

fn report(e: &Error) -> i32 {
    eprintln!("narpush: error: {e}");
    e.exit_code()
}

/// Run by Nix as a hook (no arguments, or just `push`): what Nix said.
fn in_hook(env: &dyn Fn(&str) -> Option<String>) -> Option<config::HookEnv> {
    (std::env::args_os().len() <= 2)
        .then(|| config::hook_env(env))
        .flatten()
}

/// A hook that could not even start pushing: say so, record the outputs, exit 0.
fn hook_failure(e: &Error, hook: &config::HookEnv, state_dir: &std::path::Path) -> i32 {
    eprintln!("narpush: error: {e}");
    let outs: Vec<String> = hook
        .out_paths
        .iter()
        .filter(|p| p.starts_with('/'))
        .cloned()
        .collect();
    let outs = if outs.is_empty() {
        // A derivation that does not exist has no outputs to push later.
        hook.drv_path
            .iter()
            .filter(|d| !d.is_empty() && std::path::Path::new(d).exists())
            .cloned()
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
