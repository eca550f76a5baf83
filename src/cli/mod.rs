//! The command line, and nothing else: a lexopt loop over an iterator of arguments
//! into raw [`Args`], plus the hand-written help texts. No environment variables,
//! no files, no defaults beyond "not given": `config::resolve` turns these raw
//! values, the environment and the config file into a validated `Config`.
//!
//! The options that are settings (also in the environment or the config file) are
//! found by the names `settings::SETTINGS` gives them, here and in `life`'s commands.
//! Numbers are parsed here (so the error can name the option); everything that can
//! also come from the environment or the config file (compression names, ranges,
//! conflicts with file values) is validated once, in `config`.

pub mod life;

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::settings::{self, Id, Setting};

/// Which help text to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    General,
    Push,
    Retry,
    Flush,
    Status,
    Pusher,
    Keygen,
    Help,
}

impl Topic {
    fn name(self) -> &'static str {
        match self {
            Topic::General => "",
            Topic::Push => "push",
            Topic::Retry => "retry",
            Topic::Flush => "flush",
            Topic::Status => "status",
            Topic::Pusher => "pusher",
            Topic::Keygen => "keygen",
            Topic::Help => "help",
        }
    }

    fn from_name(name: &str) -> Option<Topic> {
        Some(match name {
            "push" => Topic::Push,
            "retry" => Topic::Retry,
            "flush" => Topic::Flush,
            "status" => Topic::Status,
            "pusher" => Topic::Pusher,
            "keygen" => Topic::Keygen,
            "help" => Topic::Help,
            _ => return None,
        })
    }
}

/// The subcommand as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawCommand {
    /// `push [PATH...]`; no paths means hook mode or an error, decided in `config`.
    Push { paths: Vec<PathBuf> },
    /// `retry`: push the pending list.
    Retry,
    /// `flush [--timeout D]`: push the queue now, or wait for the running pusher.
    Flush,
    /// `status [--json] [--max-age D]`.
    Status,
    /// `pusher`: the background pusher (started by a hook or by systemd).
    Pusher,
    /// `keygen NAME [--out PREFIX]`.
    Keygen { name: String, out: Option<PathBuf> },
    /// `help [CMD]`, `--help`, `-h`.
    Help(Topic),
    /// `--version`, `-V`.
    Version,
    /// `init`, `verify` or `gc` (see `life`).
    Life(life::LifeCommand),
    /// The help text of `init`, `verify` or `gc`.
    LifeHelp(&'static str),
}

/// Raw values from the command line: `None`/empty/`false` means "not given".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub command: RawCommand,
    pub to: Option<String>,
    pub key_files: Vec<PathBuf>,
    pub credentials_file: Option<PathBuf>,
    pub compression: Option<String>,
    pub compression_level: Option<i32>,
    pub jobs: Option<usize>,
    pub compression_threads: Option<usize>,
    pub upstream_keys: Vec<String>,
    pub no_deps: bool,
    pub closure: bool,
    pub strict: bool,
    pub quiet: bool,
    pub verbose: bool,
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// `--wait`: the hook pushes before it exits instead of queueing.
    pub wait: bool,
    /// `--exclude GLOB`, repeatable.
    pub exclude: Vec<String>,
    /// Durations as written; checked in `config`.
    pub give_up_after: Option<String>,
    pub timeout: Option<String>,
    pub max_age: Option<String>,
    /// `status --json`.
    pub json: bool,
    /// `--upload-log`: also upload each derivation's build log.
    pub upload_log: bool,
}

impl Args {
    pub(crate) fn new(command: RawCommand) -> Args {
        Args {
            command,
            to: None,
            key_files: Vec::new(),
            credentials_file: None,
            compression: None,
            compression_level: None,
            jobs: None,
            compression_threads: None,
            upstream_keys: Vec::new(),
            no_deps: false,
            closure: false,
            strict: false,
            quiet: false,
            verbose: false,
            config: None,
            state_dir: None,
            wait: false,
            exclude: Vec::new(),
            give_up_after: None,
            timeout: None,
            max_age: None,
            json: false,
            upload_log: false,
        }
    }
}

/// Parse the arguments that follow the program name
/// (`parse_args(std::env::args_os().skip(1))`).
///
/// The subcommand is `push` unless the first argument is `push`, `retry`, `keygen`
/// or `help`; so `narpush` alone (how Nix runs a `post-build-hook`),
/// `narpush ./result` and `narpush --to URL ./result` all push.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Args> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let first = args.first().and_then(|a| a.to_str()).map(str::to_owned);
    let topic = match first.as_deref() {
        Some("-h" | "--help") if args.len() == 1 => {
            return Ok(Args::new(RawCommand::Help(Topic::General)))
        }
        Some("-V" | "--version") => return Ok(Args::new(RawCommand::Version)),
        Some(name) if life::is_command(name) => {
            let name = args.remove(0);
            return life::parse_args(&name.to_string_lossy(), args);
        }
        Some(name) => match Topic::from_name(name) {
            Some(topic) => {
                args.remove(0);
                topic
            }
            None => Topic::Push,
        },
        None => Topic::Push,
    };
    let mut parser = lexopt::Parser::from_args(args);
    match topic {
        Topic::Push | Topic::Retry | Topic::Flush | Topic::Status | Topic::Pusher => {
            parse_push(&mut parser, topic)
        }
        Topic::Keygen => parse_keygen(&mut parser),
        Topic::Help | Topic::General => parse_help(&mut parser),
    }
}

fn usage(topic: Topic, msg: impl std::fmt::Display) -> Error {
    usage_in(topic.name(), msg)
}

/// A usage error that points to the help of `cmd` (`""`: the general help).
pub(crate) fn usage_in(cmd: &str, msg: impl std::fmt::Display) -> Error {
    match cmd {
        "" => Error::Usage(format!("{msg}; see 'narpush --help'")),
        cmd => Error::Usage(format!("{msg}; see 'narpush {cmd} --help'")),
    }
}

fn lexopt_err(topic: Topic) -> impl Fn(lexopt::Error) -> Error {
    move |e| usage(topic, e)
}

pub(super) fn string_value(parser: &mut lexopt::Parser, cmd: &str, option: &str) -> Result<String> {
    let v = parser.value().map_err(|e| usage_in(cmd, e))?;
    let s = v.into_string().map_err(|v| {
        usage_in(
            cmd,
            format!("{option} {}: not valid UTF-8", v.to_string_lossy()),
        )
    })?;
    if s.is_empty() {
        return Err(usage_in(cmd, format!("{option} needs a non-empty value")));
    }
    Ok(s)
}

pub(super) fn path_value(parser: &mut lexopt::Parser, cmd: &str, option: &str) -> Result<PathBuf> {
    let v = parser.value().map_err(|e| usage_in(cmd, e))?;
    if v.is_empty() {
        return Err(usage_in(cmd, format!("{option} needs a non-empty path")));
    }
    Ok(PathBuf::from(v))
}

fn number_value<T: std::str::FromStr>(
    parser: &mut lexopt::Parser,
    cmd: &str,
    option: &str,
) -> Result<T> {
    let s = string_value(parser, cmd, option)?;
    s.trim()
        .parse()
        .map_err(|_| usage_in(cmd, format!("{option} {s}: not a whole number")))
}

fn parse_push(parser: &mut lexopt::Parser, topic: Topic) -> Result<Args> {
    use lexopt::prelude::*;
    let mut a = Args::new(RawCommand::Retry);
    let mut paths = Vec::new();
    while let Some(arg) = parser.next().map_err(lexopt_err(topic))? {
        match arg {
            Short('h') | Long("help") => return Ok(Args::new(RawCommand::Help(topic))),
            Short('V') | Long("version") => return Ok(Args::new(RawCommand::Version)),
            Long("timeout") if topic == Topic::Flush => {
                a.timeout = Some(string_value(parser, topic.name(), "--timeout")?)
            }
            Long("max-age") if topic == Topic::Status => {
                a.max_age = Some(string_value(parser, topic.name(), "--max-age")?)
            }
            Long("json") if topic == Topic::Status => a.json = true,
            Long(name) => {
                let name = name.to_string();
                let Some(s) = settings::by_long(&name) else {
                    return Err(usage(topic, Long(&name).unexpected()));
                };
                set(&mut a, s, parser, topic.name())?;
            }
            Short(c) => {
                let Some(s) = settings::by_short(c) else {
                    return Err(usage(topic, Short(c).unexpected()));
                };
                set(&mut a, s, parser, topic.name())?;
            }
            Value(v) if topic == Topic::Push => {
                if v.is_empty() {
                    return Err(usage(topic, "empty store path argument"));
                }
                paths.push(PathBuf::from(v));
            }
            Value(v) => {
                return Err(usage(
                    topic,
                    format!(
                        "unexpected argument '{}': {} takes no paths (it works on the queue)",
                        v.to_string_lossy(),
                        topic.name()
                    ),
                ))
            }
        }
    }
    if a.no_deps && a.closure {
        return Err(usage(topic, "--no-deps and --closure conflict: choose one"));
    }
    if a.quiet && a.verbose {
        return Err(usage(topic, "--quiet and --verbose conflict: choose one"));
    }
    a.command = match topic {
        Topic::Push => RawCommand::Push { paths },
        Topic::Flush => RawCommand::Flush,
        Topic::Status => RawCommand::Status,
        Topic::Pusher => RawCommand::Pusher,
        _ => RawCommand::Retry,
    };
    Ok(a)
}

/// Set the setting `s` in `a` from the command line of `cmd`, taking its value from
/// `parser`.
pub(crate) fn set(a: &mut Args, s: &Setting, parser: &mut lexopt::Parser, cmd: &str) -> Result<()> {
    let opt = s.option();
    let opt = opt.as_str();
    match s.id {
        Id::To => a.to = Some(string_value(parser, cmd, opt)?),
        Id::KeyFile => a.key_files.push(path_value(parser, cmd, opt)?),
        Id::CredentialsFile => a.credentials_file = Some(path_value(parser, cmd, opt)?),
        Id::Compression => a.compression = Some(string_value(parser, cmd, opt)?),
        Id::CompressionLevel => a.compression_level = Some(number_value(parser, cmd, opt)?),
        Id::Jobs => a.jobs = Some(number_value(parser, cmd, opt)?),
        Id::CompressionThreads => a.compression_threads = Some(number_value(parser, cmd, opt)?),
        Id::UpstreamKey => a.upstream_keys.push(string_value(parser, cmd, opt)?),
        Id::NoDeps => a.no_deps = true,
        Id::Closure => a.closure = true,
        Id::UploadLog => a.upload_log = true,
        Id::Strict => a.strict = true,
        Id::Quiet => a.quiet = true,
        Id::Verbose => a.verbose = true,
        Id::Config => a.config = Some(path_value(parser, cmd, opt)?),
        Id::StateDir => a.state_dir = Some(path_value(parser, cmd, opt)?),
        Id::Wait => a.wait = true,
        Id::Exclude => a.exclude.push(string_value(parser, cmd, opt)?),
        Id::GiveUpAfter => a.give_up_after = Some(string_value(parser, cmd, opt)?),
        // Config-file and environment only.
        Id::Deps | Id::SpawnPusher => unreachable!("{} has no option", s.name),
    }
    Ok(())
}

fn parse_keygen(parser: &mut lexopt::Parser) -> Result<Args> {
    use lexopt::prelude::*;
    let topic = Topic::Keygen;
    let mut name: Option<String> = None;
    let mut out = None;
    while let Some(arg) = parser.next().map_err(lexopt_err(topic))? {
        match arg {
            Short('h') | Long("help") => return Ok(Args::new(RawCommand::Help(topic))),
            Long("out") => out = Some(path_value(parser, topic.name(), "--out")?),
            Value(v) if name.is_none() => {
                let v = v.into_string().map_err(|v| {
                    usage(
                        topic,
                        format!("key name {}: not valid UTF-8", v.to_string_lossy()),
                    )
                })?;
                name = Some(v);
            }
            Value(v) => {
                return Err(usage(
                    topic,
                    format!(
                        "unexpected argument '{}': keygen takes one NAME",
                        v.to_string_lossy()
                    ),
                ))
            }
            _ => return Err(usage(topic, arg.unexpected())),
        }
    }
    let name = name.ok_or_else(|| {
        usage(
            topic,
            "keygen needs a key NAME, e.g. 'narpush keygen cache.example.org-1'",
        )
    })?;
    Ok(Args::new(RawCommand::Keygen { name, out }))
}

fn parse_help(parser: &mut lexopt::Parser) -> Result<Args> {
    use lexopt::prelude::*;
    let topic = Topic::Help;
    let mut which = Topic::General;
    let mut seen = false;
    while let Some(arg) = parser.next().map_err(lexopt_err(topic))? {
        match arg {
            Short('h') | Long("help") => which = Topic::Help,
            Value(v) if !seen => {
                seen = true;
                let name = v.to_string_lossy();
                if life::is_command(&name) {
                    return Ok(Args::new(RawCommand::LifeHelp(life::help_text(&name))));
                }
                which = Topic::from_name(&name).ok_or_else(|| {
                    usage(
                        topic,
                        format!("unknown command '{name}'; commands are push, retry, flush, status, keygen, init, verify, gc, help"),
                    )
                })?;
            }
            _ => return Err(usage(topic, arg.unexpected())),
        }
    }
    Ok(Args::new(RawCommand::Help(which)))
}

/// The version line printed by `--version`.
pub fn version_text() -> String {
    format!("narpush {}\n", env!("CARGO_PKG_VERSION"))
}

/// The help text for one topic, ending in a newline.
pub fn help_text(topic: Topic) -> &'static str {
    match topic {
        Topic::General => GENERAL_HELP,
        Topic::Push => PUSH_HELP,
        Topic::Retry => RETRY_HELP,
        Topic::Flush => FLUSH_HELP,
        Topic::Status => STATUS_HELP,
        Topic::Pusher => PUSHER_HELP,
        Topic::Keygen => KEYGEN_HELP,
        Topic::Help => HELP_HELP,
    }
}

const GENERAL_HELP: &str = "\
narpush - push Nix store paths to a signed binary cache (S3 or file://)

USAGE:
    narpush [push] [OPTIONS] [PATH...]   push paths (the default command)
    narpush retry [OPTIONS]              one pass over the queue, in the foreground
    narpush flush [--timeout D]          push the whole queue now; exit 0 when empty
    narpush status [--json] [--max-age D]  the queue, the pusher, the last results
    narpush keygen NAME [--out PREFIX]   make a signing key pair
    narpush init --to URL [OPTIONS]      set a bucket up as a binary cache
    narpush verify --to URL --trusted-key KEY (PATH...|--all)
                                         check the cache as a client would
    narpush gc --to URL --older-than D   delete what was not pushed within D,
                                         keeping closures whole
    narpush help [COMMAND]               show help for a command
    narpush --version

As a Nix post-build-hook (no arguments; Nix sets OUT_PATHS and DRV_PATH),
in /etc/nix/nix.conf:
    post-build-hook = /usr/local/bin/narpush
with the cache and key in /etc/narpush.toml:
    to = \"s3://nix-cache?region=eu-west-1\"
    key-file = \"/etc/nix/cache-key.sec\"

As a hook, narpush only queues the build's outputs (STATE_DIR/pending) and
makes sure one background pusher is running, so the build goes on at once;
the pusher uploads the queue in reference order and logs to STATE_DIR/log.
--wait (wait = true) pushes before the hook exits instead, as before.
At the end of a CI job, 'narpush flush' waits until everything is up.

Run 'narpush push --help' for all options.
";

const PUSH_HELP: &str = "\
narpush push - push store paths and their signed narinfo to a binary cache

USAGE:
    narpush [push] [OPTIONS] [PATH...]

With no PATH and OUT_PATHS or DRV_PATH in the environment (a Nix
post-build-hook), pushes the outputs of that build. PATH may be a store
path or a symlink into the store such as ./result.

OPTIONS:
    --to URL                 cache: s3://BUCKET?region=R&endpoint=HOST&profile=P
                             or file:///DIR                      [NARPUSH_TO]
    --key-file FILE          secret signing key (NAME:BASE64); repeatable
                             [NARPUSH_KEY_FILE, colon-separated list]
    --credentials-file FILE  AWS credentials file for s3:// caches
                                                   [NARPUSH_CREDENTIALS_FILE]
    --compression ALGO       zstd, xz or none (default zstd)
                                                        [NARPUSH_COMPRESSION]
    --compression-level N    zstd 1..=22, xz 0..=9 (default: the algorithm's)
                                                  [NARPUSH_COMPRESSION_LEVEL]
    --jobs N                 paths in flight at once, 1..=1024 (default 24;
                             at most 4 NARs of 1 MiB or more)  [NARPUSH_JOBS]
    --compression-threads N  threads compressing one large NAR, 1..=256
                             (default: cores; xz needs ~100 MiB each)
                                                [NARPUSH_COMPRESSION_THREADS]
    --upstream-key NAME      paths signed by this key are not pushed;
                             repeatable (default cache.nixos.org-1)
    --no-deps                push only the given paths
    --closure                push the whole closure, even paths already upstream
                             (default: also push references missing from the
                             cache and not signed by an upstream key)
    --upload-log             also upload each derivation's build log to
                             log/<drv> (config upload-log = true; off by
                             default: logs can hold secrets)
    --strict                 fail instead of recording failures for later
                             (implies --wait)                [NARPUSH_STRICT]
    --wait                   as a hook: push before exiting instead of queueing
                             for the background pusher         [NARPUSH_WAIT]
    --exclude GLOB           never push paths whose name (after the hash)
                             matches, e.g. '*-source'; repeatable
    --give-up-after D        the pusher stops retrying an unreachable cache
                             after D (default 15min; the queue stays)
                                                   [NARPUSH_GIVE_UP_AFTER]
    -q, --quiet              print errors only
    -v, --verbose            print each step
    --config FILE            config file (default $NARPUSH_CONFIG, else
                             /etc/narpush.toml if it exists)
    --state-dir DIR          where the queue and log live  [NARPUSH_STATE_DIR]
                             (default /var/lib/narpush as root, else
                             $XDG_STATE_HOME/narpush or ~/.local/state/narpush)
    -h, --help               show this help
    -V, --version            show the version

Precedence: command line, then environment, then config file, then defaults.
Config file keys are the long option names: to = \"...\", key-file = [\"...\"],
jobs = 4, strict = true, deps = \"missing\"|\"none\"|\"closure\", wait = true,
exclude = [\"*-source\"], give-up-after = \"15min\", spawn-pusher = false (the
hook then only queues; a service runs 'narpush pusher'), ...

EXAMPLES:
    narpush push --to 's3://nix-cache?profile=nixbuilder&endpoint=s3.homelab.local' ./result
    narpush --to file:///srv/cache --key-file /etc/nix/cache-key.sec --no-deps ./result
    post-build-hook = /usr/local/bin/narpush        (in /etc/nix/nix.conf)
";

const RETRY_HELP: &str = "\
narpush retry - push the paths recorded in the pending list

USAGE:
    narpush retry [OPTIONS]

Pushes every path in STATE_DIR/pending (recorded when an earlier push or
post-build-hook failed) and removes each one once it is in the cache.
Takes the same options as 'narpush push' (see 'narpush push --help'),
but no paths.

EXAMPLES:
    narpush retry
    narpush retry --to 's3://nix-cache?profile=nixbuilder&endpoint=s3.homelab.local' -v
";

const FLUSH_HELP: &str = "\
narpush flush - push everything queued now, and say whether it all went up

USAGE:
    narpush flush [--timeout D] [OPTIONS]

Pushes the queue (STATE_DIR/pending) in the foreground, or waits for the
running pusher, until it is empty: exit 0. When the cache stays unreachable
until D passes (default: give-up-after, 15min), exit 1 naming every path
left and why. Takes the options of 'narpush push'. For the end of a CI job.

EXAMPLES:
    narpush flush --timeout 10min
";

const STATUS_HELP: &str = "\
narpush status - the queue, the background pusher and the last results

USAGE:
    narpush status [--json] [--max-age D] [--state-dir DIR]

Shows how many paths are queued and how long the oldest has waited, whether
a pusher is running (pid, since when, how far), and the last lines of
STATE_DIR/log. --json prints the same as one JSON object. Exits 1 when the
oldest queued path has waited longer than --max-age (for monitoring).

EXAMPLES:
    narpush status
    narpush status --json --max-age 1h
";

const PUSHER_HELP: &str = "\
narpush pusher - the background pusher (started by a hook, or by systemd)

USAGE:
    narpush pusher [OPTIONS]

Pushes the queue until it is empty, backing off while the cache is
unreachable and giving up after --give-up-after (the queue stays). Exits at
once when another pusher is running. Takes the options of 'narpush push'.
";

const KEYGEN_HELP: &str = "\
narpush keygen - make an Ed25519 signing key pair for a binary cache

USAGE:
    narpush keygen NAME [--out PREFIX]

Writes the secret key to PREFIX.sec (mode 0600) and the public key to
PREFIX.pub, both in Nix's NAME:BASE64 format. PREFIX defaults to NAME.
Put the public key in trusted-public-keys on the machines that substitute
from the cache.

OPTIONS:
    --out PREFIX    file name prefix (default NAME)
    -h, --help      show this help

EXAMPLE:
    narpush keygen cache.example.org-1 --out /etc/nix/cache-key
";

const HELP_HELP: &str = "\
narpush help - show help

USAGE:
    narpush help [push|retry|flush|status|keygen|init|verify|gc|help]
";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args> {
        parse_args(args.iter().map(OsString::from))
    }

    fn usage_msg(args: &[&str]) -> String {
        match parse(args) {
            Err(Error::Usage(m)) => m,
            other => panic!("expected a usage error for {args:?}, got {other:?}"),
        }
    }

    #[test]
    fn no_arguments_is_push_without_paths() {
        let a = parse(&[]).unwrap();
        assert_eq!(a, Args::new(RawCommand::Push { paths: vec![] }));
    }

    #[test]
    fn push_is_default_for_options_and_paths() {
        let a = parse(&["./result", "/nix/store/x"]).unwrap();
        assert_eq!(
            a.command,
            RawCommand::Push {
                paths: vec!["./result".into(), "/nix/store/x".into()]
            }
        );
        let a = parse(&["--to", "file:///c", "./result"]).unwrap();
        assert_eq!(
            a.command,
            RawCommand::Push {
                paths: vec!["./result".into()]
            }
        );
        assert_eq!(a.to.as_deref(), Some("file:///c"));
        let a = parse(&["push", "--no-deps"]).unwrap();
        assert_eq!(a.command, RawCommand::Push { paths: vec![] });
        assert!(a.no_deps);
    }

    #[test]
    fn every_push_option() {
        let a = parse(&[
            "push",
            "--to",
            "s3://nix-cache?profile=nixbuilder&endpoint=s3.homelab.local",
            "--key-file",
            "/k1",
            "--key-file=/k2",
            "--credentials-file",
            "/creds",
            "--compression",
            "xz",
            "--compression-level",
            "6",
            "--jobs",
            "8",
            "--upstream-key",
            "a-1",
            "--upstream-key",
            "b-1",
            "--compression-threads",
            "3",
            "--closure",
            "--strict",
            "-v",
            "--config",
            "/c.toml",
            "--state-dir",
            "/state",
            "p1",
            "--",
            "--p2",
        ])
        .unwrap();
        let want = Args {
            command: RawCommand::Push {
                paths: vec!["p1".into(), "--p2".into()],
            },
            to: Some("s3://nix-cache?profile=nixbuilder&endpoint=s3.homelab.local".into()),
            key_files: vec!["/k1".into(), "/k2".into()],
            credentials_file: Some("/creds".into()),
            compression: Some("xz".into()),
            compression_level: Some(6),
            jobs: Some(8),
            compression_threads: Some(3),
            upstream_keys: vec!["a-1".into(), "b-1".into()],
            no_deps: false,
            closure: true,
            strict: true,
            quiet: false,
            verbose: true,
            config: Some("/c.toml".into()),
            state_dir: Some("/state".into()),
            wait: false,
            exclude: Vec::new(),
            give_up_after: None,
            timeout: None,
            max_age: None,
            json: false,
            upload_log: false,
        };
        assert_eq!(a, want);
        let a = parse(&["--no-deps", "-q", "--verbose"]);
        assert!(a.is_err());
        let a = parse(&["--no-deps", "--quiet"]).unwrap();
        assert!(a.no_deps && a.quiet && !a.verbose);
    }

    #[test]
    fn retry_takes_options_but_no_paths() {
        let a = parse(&["retry", "--to", "file:///c", "--jobs", "3"]).unwrap();
        assert_eq!(a.command, RawCommand::Retry);
        assert_eq!(a.jobs, Some(3));
        let m = usage_msg(&["retry", "/nix/store/x"]);
        assert!(m.contains("retry takes no paths"), "{m}");
        let a = parse(&["flush", "--timeout", "5min", "--exclude", "*-source"]).unwrap();
        assert_eq!(a.command, RawCommand::Flush);
        assert_eq!(a.timeout.as_deref(), Some("5min"));
        assert_eq!(a.exclude, vec!["*-source".to_string()]);
        let a = parse(&["status", "--json", "--max-age", "1h"]).unwrap();
        assert_eq!(a.command, RawCommand::Status);
        assert!(a.json);
        assert_eq!(a.max_age.as_deref(), Some("1h"));
        assert!(usage_msg(&["push", "--timeout", "1"]).contains("--timeout"));
        let a = parse(&["--wait", "--exclude", "a*", "--exclude", "*.iso"]).unwrap();
        assert!(a.wait);
        assert_eq!(a.exclude.len(), 2);
        assert_eq!(parse(&["pusher"]).unwrap().command, RawCommand::Pusher);
        assert!(m.ends_with("see 'narpush retry --help'"), "{m}");
    }

    #[test]
    fn conflicts_and_bad_values_are_usage_errors() {
        let m = usage_msg(&["--no-deps", "--closure"]);
        assert!(m.contains("--no-deps and --closure conflict"), "{m}");
        assert!(m.ends_with("see 'narpush push --help'"), "{m}");
        let m = usage_msg(&["--jobs", "many"]);
        assert!(m.starts_with("--jobs many: not a whole number"), "{m}");
        let m = usage_msg(&["--compression-level", "x"]);
        assert!(m.contains("--compression-level"), "{m}");
        let m = usage_msg(&["--to"]);
        assert!(
            m.contains("--to") && m.contains("see 'narpush push --help'"),
            "{m}"
        );
        let m = usage_msg(&["--to", ""]);
        assert!(m.contains("--to needs a non-empty value"), "{m}");
    }

    #[test]
    fn unknown_option_names_it() {
        let m = usage_msg(&["push", "--frobnicate"]);
        assert_eq!(
            m,
            "invalid option '--frobnicate'; see 'narpush push --help'"
        );
        let m = usage_msg(&["--frobnicate"]);
        assert!(
            m.contains("'--frobnicate'") && m.contains("narpush push --help"),
            "{m}"
        );
        let m = usage_msg(&["keygen", "n", "--jobs", "2"]);
        assert!(
            m.contains("'--jobs'") && m.ends_with("see 'narpush keygen --help'"),
            "{m}"
        );
        let m = usage_msg(&["--no-deps=yes"]);
        assert!(m.contains("--no-deps"), "{m}");
    }

    #[test]
    fn keygen() {
        let a = parse(&["keygen", "cache.example.org-1"]).unwrap();
        assert_eq!(
            a.command,
            RawCommand::Keygen {
                name: "cache.example.org-1".into(),
                out: None
            }
        );
        let a = parse(&["keygen", "--out", "/etc/nix/k", "n-1"]).unwrap();
        assert_eq!(
            a.command,
            RawCommand::Keygen {
                name: "n-1".into(),
                out: Some("/etc/nix/k".into())
            }
        );
        assert!(usage_msg(&["keygen"]).contains("keygen needs a key NAME"));
        assert!(usage_msg(&["keygen", "a", "b"]).contains("keygen takes one NAME"));
    }

    #[test]
    fn help_for_each_command() {
        for (args, topic) in [
            (&["--help"][..], Topic::General),
            (&["-h"], Topic::General),
            (&["help"], Topic::General),
            (&["help", "push"], Topic::Push),
            (&["help", "retry"], Topic::Retry),
            (&["help", "keygen"], Topic::Keygen),
            (&["help", "help"], Topic::Help),
            (&["push", "--help"], Topic::Push),
            (&["--to", "x", "-h"], Topic::Push),
            (&["retry", "-h"], Topic::Retry),
            (&["keygen", "--help"], Topic::Keygen),
            (&["keygen", "name", "-h"], Topic::Keygen),
        ] {
            assert_eq!(
                parse(args).unwrap().command,
                RawCommand::Help(topic),
                "{args:?}"
            );
        }
        let m = usage_msg(&["help", "frob"]);
        assert!(m.contains("unknown command 'frob'"), "{m}");
        for t in [
            Topic::General,
            Topic::Push,
            Topic::Retry,
            Topic::Keygen,
            Topic::Help,
        ] {
            assert!(help_text(t).ends_with('\n'));
        }
        let push = help_text(Topic::Push);
        for opt in [
            "--to",
            "--key-file",
            "--credentials-file",
            "--compression ",
            "--compression-level",
            "--jobs",
            "--upstream-key",
            "--no-deps",
            "--closure",
            "--strict",
            "--quiet",
            "--verbose",
            "--config",
            "--state-dir",
        ] {
            assert!(push.contains(opt), "push help lacks {opt}");
        }
        assert!(push.contains("narpush push --to 's3://nix-cache?profile=nixbuilder&endpoint=s3.homelab.local' ./result"));
        assert!(push.contains("post-build-hook = /usr/local/bin/narpush"));
    }

    /// The help is written by hand; every setting in the table must be in it: its
    /// option, its variable (but `NARPUSH_SPAWN_PUSHER`, which the NixOS module sets,
    /// is only named as the key) and its config-file key.
    #[test]
    fn push_help_names_every_setting() {
        let push = help_text(Topic::Push);
        for s in settings::SETTINGS {
            if s.long {
                assert!(push.contains(&s.option()), "push help lacks {}", s.option());
            }
            if let Some(c) = s.short {
                let both = format!("-{c}, {}", s.option());
                assert!(push.contains(&both), "push help lacks {both}");
            }
            if let Some(e) = s.env.filter(|_| s.id != Id::SpawnPusher) {
                assert!(push.contains(e), "push help lacks {e}");
            }
            if s.in_file {
                assert!(push.contains(s.name), "push help lacks the key {}", s.name);
            }
        }
    }

    /// Every option of the table parses, by the name the table gives it.
    #[test]
    fn the_table_names_the_options() {
        for s in settings::SETTINGS.iter().filter(|s| s.long) {
            let opt = s.option();
            let value = match s.kind {
                settings::Kind::Switch => None,
                settings::Kind::Number => Some("3"),
                _ => Some("x"),
            };
            let mut args = vec![opt.as_str()];
            args.extend(value);
            let a = parse(&args).unwrap_or_else(|e| panic!("{opt}: {e}"));
            assert_ne!(a, Args::new(RawCommand::Push { paths: vec![] }), "{opt}");
        }
        let a = parse(&["-q"]).unwrap();
        assert!(a.quiet);
    }

    #[test]
    fn version() {
        assert_eq!(parse(&["--version"]).unwrap().command, RawCommand::Version);
        assert_eq!(parse(&["-V"]).unwrap().command, RawCommand::Version);
        assert_eq!(parse(&["push", "-V"]).unwrap().command, RawCommand::Version);
        assert!(version_text().starts_with("narpush "));
    }

    #[test]
    fn non_utf8_paths_survive() {
        use std::os::unix::ffi::OsStringExt;
        let raw = OsString::from_vec(b"/tmp/r\xffsult".to_vec());
        let a = parse_args([OsString::from("--state-dir"), raw.clone(), raw.clone()]).unwrap();
        assert_eq!(a.state_dir, Some(PathBuf::from(raw.clone())));
        assert_eq!(
            a.command,
            RawCommand::Push {
                paths: vec![PathBuf::from(raw)]
            }
        );
    }
}
