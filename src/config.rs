//! Configuration: raw command-line [`Args`], the environment and the config file,
//! resolved in one step into a validated [`Config`] that holds everything a command
//! needs: the store URL parsed (region defaulted from the environment), its
//! parameters merged under the settings, the compression and its level checked by one
//! rule, the signing key files, and where the S3 credentials are. This is the only
//! module that reads environment variables or the config file; it takes the
//! environment as a function so tests (and `main`) decide what it sees.
//!
//! Precedence, per setting: command line, then environment (`NARPUSH_*`), then the
//! config file (`--config F`, else `$NARPUSH_CONFIG`, else `/etc/narpush.toml` if it
//! exists), then defaults. The config file is a strict subset of TOML, parsed here
//! so that every error can name the file and the line:
//!
//! ```toml
//! # /etc/narpush.toml
//! [narpush]                       # optional
//! to = "s3://nix-cache?region=eu-west-1"
//! key-file = ["/etc/nix/cache-key.sec"]
//! compression = "zstd"
//! jobs = 4
//! strict = false
//! ```

use std::path::{Path, PathBuf};

use crate::cli::{self, Args, RawCommand};
use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::settings::{self, Id, Kind};
use crate::store_url::StoreUrl;

mod toml;
use toml::Value;

/// What to do, after hook detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Push `paths`; or, in hook mode (no paths given, `OUT_PATHS` or `DRV_PATH`
    /// set), the outputs named in `hook`.
    Push {
        paths: Vec<PathBuf>,
        hook: Option<HookEnv>,
    },
    /// Push the pending list.
    Retry,
    /// Push the queue now (or wait for the running pusher); `None`: give-up-after.
    Flush {
        timeout: Option<std::time::Duration>,
    },
    /// Report on the queue and the pusher.
    Status {
        json: bool,
        max_age: Option<std::time::Duration>,
    },
    /// The background pusher; `spawned`: started by a hook (`NARPUSH_PUSHER_SPAWNED`
    /// set), so it detaches itself.
    Pusher { spawned: bool },
    /// Write `out.sec` and `out.pub` for key `name`.
    Keygen { name: String, out: PathBuf },
    /// Print this text to stdout and exit 0.
    Help(String),
    /// Print the version and exit 0.
    Version,
    /// `init`, `verify` or `gc`.
    Life(crate::cli::life::LifeCommand),
}

/// What Nix tells a `post-build-hook`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEnv {
    /// `OUT_PATHS` split on whitespace; may be empty (Nix 2.8.0 set it empty).
    pub out_paths: Vec<String>,
    /// `DRV_PATH`, if set and non-empty.
    pub drv_path: Option<String>,
}

/// Which references of the given paths to push as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deps {
    /// References not already in the cache or upstream (the default).
    Missing,
    /// Only the given paths (`--no-deps`).
    None,
    /// The whole closure (`--closure`).
    Closure,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub command: Command,
    /// The store URL (`s3://…` or `file://…`) as given; [`Config::target`] is it parsed.
    pub to: Option<String>,
    /// The `key-file`s the settings name (the URL's `secret-key`s are in the target).
    pub key_files: Vec<PathBuf>,
    pub credentials_file: Option<PathBuf>,
    /// The cache, or why there is none; see [`Config::target`].
    target: std::result::Result<Target, String>,
    /// The compression, or why it is wrong; see [`Config::compression`].
    compression: std::result::Result<CompressionSettings, String>,
    pub jobs: usize,
    /// Threads compressing one large NAR (zstd and xz).
    pub compression_threads: usize,
    pub upstream_keys: Vec<String>,
    pub deps: Deps,
    pub strict: bool,
    pub quiet: bool,
    pub verbose: bool,
    pub state_dir: PathBuf,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Hook mode pushes before exiting (`--wait`, implied by strict) instead of queueing.
    pub wait: bool,
    /// Paths whose name matches are neither queued nor pushed.
    pub exclude: Vec<crate::glob::Glob>,
    /// How long the pusher retries an unreachable cache before it exits.
    pub give_up_after: std::time::Duration,
    /// Whether a hook starts the pusher itself (false under systemd's path unit).
    pub spawn_pusher: bool,
    /// Upload each derivation's build log with its outputs (`--upload-log`).
    pub upload_log: bool,
}

/// The cache that `to` names, with what the settings merge over its URL parameters:
/// everything a command needs to open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `to`, parsed; the region defaults to `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub url: StoreUrl,
    /// The signing keys: the `key-file`s, then the URL's `secret-key`s.
    pub key_files: Vec<PathBuf>,
    /// Where S3 credentials are to be found (unused for `file://`).
    pub credentials: CredentialSource,
}

/// How NARs are compressed: the method and its level, checked together by
/// [`Compression::check_level`] whatever each came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionSettings {
    pub method: Compression,
    /// In range for `method`; `None`: the method's default (always for `none`).
    pub level: Option<i32>,
}

/// Where S3 credentials are to be found: the credentials file, the URL's profile, the
/// `AWS_*` variables and the home directory, located here with the rest of the
/// configuration but *read* only by [`CredentialSource::read`], when a command opens
/// an `s3://` cache. Reading them here would make every command need them: the
/// queueing hook, `status` and `init --print-policy` need none (a hook must queue even
/// when the credentials file is not readable yet), and a pusher that runs for hours
/// reads the files again on each pass, so a fixed credentials file needs no restart.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialSource {
    /// `credentials-file`.
    pub file: Option<PathBuf>,
    /// The store URL's `profile=`.
    pub profile: Option<String>,
    /// `HOME`, for `~/.aws/credentials` and `~/.aws/config`.
    pub home: Option<PathBuf>,
    /// The [`crate::creds::VARIABLES`] that are set, as narpush found them.
    vars: Vec<(&'static str, String)>,
}

impl CredentialSource {
    fn locate(
        file: Option<PathBuf>,
        profile: Option<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> CredentialSource {
        CredentialSource {
            file,
            profile,
            home: env("HOME").map(PathBuf::from),
            vars: crate::creds::VARIABLES
                .iter()
                .filter_map(|&k| env(k).map(|v| (k, v)))
                .collect(),
        }
    }

    /// Read the credentials (the files named, or the variables).
    pub fn read(&self) -> Result<crate::creds::Credentials> {
        let req = crate::creds::Request {
            credentials_file: self.file.as_deref(),
            profile: self.profile.as_deref(),
        };
        let env = |k: &str| {
            self.vars
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.clone())
        };
        crate::creds::resolve(&req, &env, self.home.as_deref())
    }
}

impl std::fmt::Debug for CredentialSource {
    /// The variables' names only: their values include the secret key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.vars.iter().map(|(k, _)| *k).collect();
        f.debug_struct("CredentialSource")
            .field("file", &self.file)
            .field("profile", &self.profile)
            .field("home", &self.home)
            .field("vars", &names)
            .finish()
    }
}

impl Config {
    /// The cache to open. The error (no `to`, or a store URL that does not parse) is
    /// kept until a command that needs the cache asks: queueing a hook's outputs and
    /// `status` need none.
    pub fn target(&self) -> Result<&Target> {
        self.target.as_ref().map_err(|m| Error::Usage(m.clone()))
    }

    /// The compression to push with. An error that a store URL parameter takes part
    /// in is kept until a command that pushes asks; one that the command line, the
    /// environment or the config file alone make is reported by [`resolve`].
    pub fn compression(&self) -> Result<CompressionSettings> {
        self.compression.clone().map_err(Error::Usage)
    }
}

/// What [`Config::target`] says when no setting names the cache.
const NO_CACHE: &str =
    "no binary cache given: pass --to URL (e.g. s3://nix-cache?endpoint=s3.example.org), \
     set NARPUSH_TO, or 'to' in /etc/narpush.toml";

/// A value with where it came from (`--jobs`, `NARPUSH_JOBS`, `config file F line N:
/// jobs`), for messages.
type Sourced<T> = (T, String);

/// The compression from the settings (`own_…`) and the store URL's parameters
/// (`url`: them and the URL as given), merged (the settings win, one value at a time)
/// and checked by the one rule, [`Compression::check_level`]. The flag says whether
/// the store URL supplied the method or the level used, so the caller knows whose
/// error it is.
fn merge_compression(
    own_method: Option<Compression>,
    own_level: Option<Sourced<i32>>,
    url: Option<(&crate::store_url::CacheParams, &str)>,
) -> (std::result::Result<CompressionSettings, String>, bool) {
    let mut from_url = false;
    let method = match (
        own_method,
        url.and_then(|(p, to)| Some((p.compression.as_deref()?, to))),
    ) {
        (Some(m), _) => Ok(m),
        (None, Some((name, to))) => {
            from_url = true;
            Compression::parse(name).map_err(|e| format!("store URL '{to}': compression: {e}"))
        }
        (None, None) => Ok(Compression::Zstd),
    };
    let level = match (
        own_level,
        url.and_then(|(p, to)| Some((p.compression_level?, to))),
    ) {
        (Some(l), _) => Some(l),
        (None, Some((l, to))) => {
            from_url = true;
            Some((l, format!("store URL '{to}': compression-level")))
        }
        (None, None) => None,
    };
    let settings = method.and_then(|method| {
        let level = match level {
            Some((l, from)) => method
                .check_level(Some(l))
                .map_err(|e| format!("{from}: {e}"))?,
            None => None,
        };
        Ok(CompressionSettings { method, level })
    });
    (settings, from_url)
}

/// The default of `give-up-after`.
pub const DEFAULT_GIVE_UP_AFTER: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The config file read when neither `--config` nor `NARPUSH_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/narpush.toml";
/// The default upstream key: paths signed by it are not pushed.
pub const DEFAULT_UPSTREAM_KEY: &str = "cache.nixos.org-1";

/// Resolve `args`, the environment (`env("NAME")`) and the config file into a
/// [`Config`]. Reads the config file and `/proc/self` (for the effective uid);
/// nothing else. `help`, `--version` and `keygen` read neither environment nor file.
pub fn resolve(args: Args, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
    resolve_as(args, env, effective_uid_is_root())
}

/// True if this process runs as root: the owner of `/proc/self` is the effective uid.
fn effective_uid_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// What Nix tells a post-build hook, when it says anything (`OUT_PATHS` or
/// `DRV_PATH` set).
pub fn hook_env(env: &dyn Fn(&str) -> Option<String>) -> Option<HookEnv> {
    let out_paths = env("OUT_PATHS");
    let drv_path = env("DRV_PATH");
    (out_paths.is_some() || drv_path.is_some()).then(|| HookEnv {
        out_paths: out_paths
            .map(|o| o.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        drv_path,
    })
}

/// The state directory used when the configuration names none (also when the
/// configuration itself cannot be read, so a hook can still record what it missed).
pub fn fallback_state_dir(env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf> {
    match env(settings::env_name(Id::StateDir)).filter(|d| !d.is_empty()) {
        Some(d) => Ok(PathBuf::from(d)),
        None => default_state_dir(env, effective_uid_is_root()),
    }
}

/// Paths in flight at once by default: enough requests to fill a link with a 25-50 ms
/// round trip (Nix's own S3 store opens up to 25 connections; at 25 ms, 500 new small
/// paths took 3.2 s with 16 and 2.2 s with 24 in `make bench`); the CPU and memory are
/// bounded elsewhere (compression threads, and the few large NARs pushed at a time,
/// see `push`).
fn default_jobs() -> usize {
    24
}

fn default_compression_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_COMPRESSION_THREADS))
}

fn default_state_dir(env: &dyn Fn(&str) -> Option<String>, root: bool) -> Result<PathBuf> {
    if root {
        return Ok(PathBuf::from("/var/lib/narpush"));
    }
    // The XDG base directory spec says relative values are to be ignored.
    if let Some(x) = env("XDG_STATE_HOME").filter(|x| x.starts_with('/')) {
        return Ok(Path::new(&x).join("narpush"));
    }
    match env("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(Path::new(&h).join(".local/state/narpush")),
        None => Err(Error::Usage(
            "cannot choose a state directory: HOME and XDG_STATE_HOME are not set; \
             set --state-dir or NARPUSH_STATE_DIR"
                .into(),
        )),
    }
}

fn resolve_as(args: Args, env: &dyn Fn(&str) -> Option<String>, root: bool) -> Result<Config> {
    let raw_env = env;
    // Environment values that are set but empty count as unset.
    let env = |name: &str| raw_env(name).filter(|v| !v.is_empty());
    let mut config = Config {
        command: Command::Version,
        to: None,
        key_files: Vec::new(),
        credentials_file: None,
        target: Err(NO_CACHE.to_string()),
        compression: Ok(CompressionSettings {
            method: Compression::Zstd,
            level: None,
        }),
        jobs: default_jobs(),
        compression_threads: default_compression_threads(),
        upstream_keys: vec![DEFAULT_UPSTREAM_KEY.to_string()],
        deps: Deps::Missing,
        strict: false,
        quiet: false,
        verbose: false,
        state_dir: PathBuf::new(),
        config_file: None,
        wait: false,
        exclude: Vec::new(),
        give_up_after: DEFAULT_GIVE_UP_AFTER,
        spawn_pusher: true,
        upload_log: false,
    };
    let paths = match args.command {
        RawCommand::Help(topic) => {
            config.command = Command::Help(cli::help_text(topic).to_string());
            return Ok(config);
        }
        RawCommand::Version => return Ok(config),
        RawCommand::Keygen { name, out } => {
            if name.contains(':') || name.chars().any(char::is_whitespace) {
                return Err(Error::Usage(format!(
                    "key name '{name}' may not contain ':' or whitespace; \
                     use a name like cache.example.org-1"
                )));
            }
            let out = out.unwrap_or_else(|| PathBuf::from(&name));
            config.command = Command::Keygen { name, out };
            return Ok(config);
        }
        RawCommand::LifeHelp(text) => {
            config.command = Command::Help(text.to_string());
            return Ok(config);
        }
        RawCommand::Life(cmd) => {
            config.command = Command::Life(cmd);
            None
        }
        RawCommand::Retry => None,
        RawCommand::Flush => {
            let timeout = match &args.timeout {
                Some(t) => Some(
                    crate::duration::parse(t)
                        .map_err(|e| Error::Usage(format!("--timeout {e}")))?,
                ),
                None => None,
            };
            config.command = Command::Flush { timeout };
            None
        }
        RawCommand::Status => {
            let max_age = match &args.max_age {
                Some(t) => Some(
                    crate::duration::parse(t)
                        .map_err(|e| Error::Usage(format!("--max-age {e}")))?,
                ),
                None => None,
            };
            config.command = Command::Status {
                json: args.json,
                max_age,
            };
            None
        }
        RawCommand::Pusher => {
            config.command = Command::Pusher {
                spawned: env(crate::queue::SPAWNED_ENV).is_some(),
            };
            None
        }
        RawCommand::Push { paths } => Some(paths),
    };

    config.command = match paths {
        None if config.command == Command::Version => Command::Retry,
        None => config.command,
        Some(paths) => {
            let hook = if paths.is_empty() {
                hook_env(&env)
            } else {
                None
            };
            if paths.is_empty() && hook.is_none() {
                return Err(Error::Usage(
                    "nothing to push: give store paths, or run as a Nix post-build-hook \
                     (OUT_PATHS set); see 'narpush push --help'"
                        .into(),
                ));
            }
            Command::Push { paths, hook }
        }
    };

    // The config file.
    let var = settings::env_name;
    let file = match (&args.config, env(var(Id::Config))) {
        (Some(f), _) => Some(read_config(f, &settings::get(Id::Config).option())?),
        (None, Some(f)) => Some(read_config(Path::new(&f), var(Id::Config))?),
        (None, None) => match std::fs::read_to_string(DEFAULT_CONFIG_FILE) {
            Ok(text) => Some(parse_file(Path::new(DEFAULT_CONFIG_FILE), &text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::io(
                    "read config file",
                    Path::new(DEFAULT_CONFIG_FILE),
                    e,
                ))
            }
        },
    };
    let file = file.unwrap_or_default();
    config.config_file = file.path.clone();
    let file_path = file.path.clone();
    let at = |line: usize, key: &str| {
        let path = file_path.as_deref().unwrap_or(Path::new("?"));
        format!("config file {} line {line}: {key}", path.display())
    };
    let in_file = |id: Id| {
        file.get(id)
            .map(|(v, line)| (v.clone(), at(line, settings::get(id).name)))
    };
    let option = |id: Id| settings::get(id).option();

    // Command line > environment > file > default, one setting at a time.
    config.to = args.to.or_else(|| env(var(Id::To))).or(file.text(Id::To));

    config.key_files = if !args.key_files.is_empty() {
        args.key_files
    } else if let Some(k) = env(var(Id::KeyFile)) {
        k.split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect()
    } else {
        file.paths(Id::KeyFile).unwrap_or_default()
    };

    config.credentials_file = args
        .credentials_file
        .or_else(|| env(var(Id::CredentialsFile)).map(PathBuf::from))
        .or(file.path(Id::CredentialsFile));

    let compression = match (
        args.compression,
        env(var(Id::Compression)),
        in_file(Id::Compression),
    ) {
        (Some(c), _, _) => Some((c, option(Id::Compression))),
        (None, Some(c), _) => Some((c, var(Id::Compression).to_string())),
        (None, None, Some((FileValue::Text(c), from))) => Some((c, from)),
        _ => None,
    };
    // A misspelt method is wrong whatever the URL says: report it now.
    let compression = match compression {
        Some((c, from)) => {
            Some(Compression::parse(&c).map_err(|e| Error::Usage(format!("{from}: {e}")))?)
        }
        None => None,
    };
    let level = match (
        args.compression_level,
        env(var(Id::CompressionLevel)),
        in_file(Id::CompressionLevel),
    ) {
        (Some(l), _, _) => Some((l, option(Id::CompressionLevel))),
        (None, Some(l), _) => {
            let name = var(Id::CompressionLevel);
            let n = l
                .trim()
                .parse::<i32>()
                .map_err(|_| Error::Usage(format!("{name}='{l}': not a whole number")))?;
            Some((n, name.to_string()))
        }
        // The file's parser made sure it fits.
        (None, None, Some((FileValue::Number(l), from))) => Some((l as i32, from)),
        _ => None,
    };

    // The store URL, and what the settings merge over its parameters. Errors that
    // come from the settings alone are reported now, by every command, as they
    // always were; those the URL takes part in wait for a command that opens the
    // cache (a hook that only queues must not fail for a typo in a URL it does not
    // use yet). The region and HOME are taken as the environment has them.
    let region = raw_env("AWS_REGION").or_else(|| raw_env("AWS_DEFAULT_REGION"));
    let url = match &config.to {
        Some(to) => StoreUrl::parse(to, region.as_deref()).map_err(|e| e.to_string()),
        None => Err(NO_CACHE.to_string()),
    };
    let params = url.as_ref().ok().map(|u| match u {
        StoreUrl::File { params, .. } => params,
        StoreUrl::S3(s3) => &s3.cache,
    });
    let to = config.to.as_deref().unwrap_or_default();
    let (compression, from_url) = merge_compression(compression, level, params.map(|p| (p, to)));
    if let (Err(e), false) = (&compression, from_url) {
        return Err(Error::Usage(e.clone()));
    }
    config.compression = compression;
    config.target = url.map(|url| {
        let (secret_keys, profile) = match &url {
            StoreUrl::File { params, .. } => (&params.secret_keys, None),
            StoreUrl::S3(s3) => (&s3.cache.secret_keys, s3.profile.clone()),
        };
        Target {
            key_files: config
                .key_files
                .iter()
                .chain(secret_keys)
                .cloned()
                .collect(),
            credentials: CredentialSource::locate(
                config.credentials_file.clone(),
                profile,
                raw_env,
            ),
            url,
        }
    });

    let count = |flag: Option<usize>, id: Id, max| {
        let var = var(id);
        let n = match (flag, env(var), in_file(id)) {
            (Some(n), _, _) => (n as i64, option(id)),
            (None, Some(v), _) => {
                let n = v
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| Error::Usage(format!("{var}='{v}': not a whole number")))?;
                (n, var.to_string())
            }
            (None, None, Some((FileValue::Number(n), from))) => (n, from),
            _ => return Ok(None),
        };
        check_count(n.0, &n.1, settings::get(id).name, max).map(Some)
    };
    if let Some(j) = count(args.jobs, Id::Jobs, 1024)? {
        config.jobs = j;
    }
    if let Some(t) = count(
        args.compression_threads,
        Id::CompressionThreads,
        MAX_COMPRESSION_THREADS,
    )? {
        config.compression_threads = t;
    }

    if !args.upstream_keys.is_empty() {
        config.upstream_keys = args.upstream_keys;
    } else if let Some(keys) = file.texts(Id::UpstreamKey) {
        config.upstream_keys = keys;
    }

    config.deps = if args.no_deps {
        Deps::None
    } else if args.closure {
        Deps::Closure
    } else {
        file.deps().unwrap_or(Deps::Missing)
    };

    config.strict = if args.strict {
        true
    } else if let Some(s) = env(var(Id::Strict)) {
        parse_env_bool(var(Id::Strict), &s)?
    } else {
        file.switch(Id::Strict).unwrap_or(false)
    };

    (config.quiet, config.verbose) = if args.quiet || args.verbose {
        (args.quiet, args.verbose)
    } else {
        (
            file.switch(Id::Quiet).unwrap_or(false),
            file.switch(Id::Verbose).unwrap_or(false),
        )
    };
    if config.quiet && config.verbose {
        return Err(Error::Usage(format!(
            "{}: quiet and verbose are both true; choose one",
            file.path
                .as_deref()
                .unwrap_or(Path::new("config file"))
                .display()
        )));
    }

    config.wait = if args.wait {
        true
    } else if let Some(s) = env(var(Id::Wait)) {
        parse_env_bool(var(Id::Wait), &s)?
    } else {
        file.switch(Id::Wait).unwrap_or(false)
    } || config.strict;

    config.spawn_pusher = match env(var(Id::SpawnPusher)) {
        Some(s) => parse_env_bool(var(Id::SpawnPusher), &s)?,
        None => file.switch(Id::SpawnPusher).unwrap_or(true),
    };

    let (patterns, from) = if !args.exclude.is_empty() {
        (args.exclude, option(Id::Exclude))
    } else if let Some((FileValue::Texts(p), from)) = in_file(Id::Exclude) {
        (p, from)
    } else {
        (Vec::new(), String::new())
    };
    config.exclude = patterns
        .iter()
        .map(|p| crate::glob::Glob::new(p).map_err(|e| Error::Usage(format!("{from}: {e}"))))
        .collect::<Result<_>>()?;

    let duration = |d: &str, from: &str, sep: &str| {
        crate::duration::parse(d).map_err(|e| Error::Usage(format!("{from}{sep}{e}")))
    };
    config.give_up_after = match (
        args.give_up_after,
        env(var(Id::GiveUpAfter)),
        in_file(Id::GiveUpAfter),
    ) {
        (Some(d), _, _) => duration(&d, &option(Id::GiveUpAfter), " ")?,
        (None, Some(d), _) => duration(&d, var(Id::GiveUpAfter), ": ")?,
        (None, None, Some((FileValue::Text(d), from))) => duration(&d, &from, ": ")?,
        _ => DEFAULT_GIVE_UP_AFTER,
    };
    config.upload_log = args.upload_log || file.switch(Id::UploadLog).unwrap_or(false);

    config.state_dir = match args.state_dir {
        Some(d) => d,
        None => match env(var(Id::StateDir)) {
            Some(d) => PathBuf::from(d),
            None => match file.path(Id::StateDir) {
                Some(d) => d,
                None => default_state_dir(&env, root)?,
            },
        },
    };
    Ok(config)
}

/// The most threads one NAR is compressed with (lzma-rust2's cap).
const MAX_COMPRESSION_THREADS: usize = 256;

fn check_count(n: i64, from: &str, what: &str, max: usize) -> Result<usize> {
    if !(1..=max as i64).contains(&n) {
        return Err(Error::Usage(format!(
            "{from}: {what} must be between 1 and {max}, not {n}"
        )));
    }
    Ok(n as usize)
}

fn parse_env_bool(name: &str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::Usage(format!(
            "{name}='{v}': expected true or false (or 1 or 0)"
        ))),
    }
}

fn read_config(path: &Path, named_by: &str) -> Result<FileValues> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_file(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Usage(format!(
            "config file {} (named by {named_by}) does not exist",
            path.display()
        ))),
        Err(e) => Err(Error::io("read config file", path, e)),
    }
}

/// A config-file value, read as its setting's [`Kind`] says.
#[derive(Debug, Clone)]
enum FileValue {
    /// Text, and durations (whole seconds as digits).
    Text(String),
    Path(PathBuf),
    Texts(Vec<String>),
    Paths(Vec<PathBuf>),
    Number(i64),
    Switch(bool),
    /// `deps`, `no-deps` and `closure` (`None`: `no-deps = false`, `closure = false`).
    Deps(Option<Deps>),
}

/// The settings a config file sets, each with its value and line (an error about a
/// value found later can still name the line).
#[derive(Debug, Default)]
struct FileValues {
    path: Option<PathBuf>,
    values: Vec<(Id, FileValue, usize)>,
}

impl FileValues {
    fn get(&self, id: Id) -> Option<(&FileValue, usize)> {
        self.values
            .iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, v, line)| (v, *line))
    }
    fn text(&self, id: Id) -> Option<String> {
        match self.get(id)? {
            (FileValue::Text(t), _) => Some(t.clone()),
            _ => None,
        }
    }
    fn path(&self, id: Id) -> Option<PathBuf> {
        match self.get(id)? {
            (FileValue::Path(p), _) => Some(p.clone()),
            _ => None,
        }
    }
    fn texts(&self, id: Id) -> Option<Vec<String>> {
        match self.get(id)? {
            (FileValue::Texts(t), _) => Some(t.clone()),
            _ => None,
        }
    }
    fn paths(&self, id: Id) -> Option<Vec<PathBuf>> {
        match self.get(id)? {
            (FileValue::Paths(p), _) => Some(p.clone()),
            _ => None,
        }
    }
    fn switch(&self, id: Id) -> Option<bool> {
        match self.get(id)? {
            (FileValue::Switch(b), _) => Some(*b),
            _ => None,
        }
    }
    fn deps(&self) -> Option<Deps> {
        match self.get(Id::Deps)? {
            (FileValue::Deps(d), _) => *d,
            _ => None,
        }
    }
}

fn parse_file(path: &Path, text: &str) -> Result<FileValues> {
    let err = |line: usize, msg: String| {
        Error::Usage(format!("config file {} line {line}: {msg}", path.display()))
    };
    let entries = toml::parse(text).map_err(|(line, msg)| err(line, msg))?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let rel = |s: String| -> PathBuf {
        let p = PathBuf::from(s);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };
    let mut v = FileValues {
        path: Some(path.to_path_buf()),
        ..FileValues::default()
    };
    let mut seen: Vec<(Id, usize)> = Vec::new();
    let mut deps_line: Option<(&str, usize)> = None;
    for (key, value, line) in entries {
        let Some(setting) = settings::by_key(&key) else {
            return Err(err(
                line,
                format!(
                    "unknown key '{key}'; known keys: {}",
                    settings::known_keys()
                ),
            ));
        };
        if let Some((_, first)) = seen.iter().find(|(id, _)| *id == setting.id) {
            return Err(err(
                line,
                format!("'{key}' is set twice (first on line {first})"),
            ));
        }
        seen.push((setting.id, line));
        let kind = value.kind();
        let want = |what: &str| err(line, format!("{key} must be {what}, not {kind}"));
        let string = |value: Value| match value {
            Value::Str(s) if !s.is_empty() => Ok(s),
            Value::Str(_) => Err(err(line, format!("{key} must not be empty"))),
            _ => Err(want("a string")),
        };
        let strings = |value: Value| match value {
            Value::Array(items) => items
                .into_iter()
                .map(|i| match i {
                    Value::Str(s) if !s.is_empty() => Ok(s),
                    _ => Err(err(
                        line,
                        format!("{key} must be a list of non-empty strings"),
                    )),
                })
                .collect::<Result<Vec<_>>>(),
            other => string(other).map(|s| vec![s]),
        };
        let boolean = |value: &Value| match value {
            Value::Bool(b) => Ok(*b),
            _ => Err(want("true or false")),
        };
        let (id, value) = match (setting.id, setting.kind) {
            (Id::Deps | Id::NoDeps | Id::Closure, kind) => {
                if let Some((other, first)) = deps_line {
                    return Err(err(
                        line,
                        format!("'{key}' conflicts with '{other}' on line {first}; set only deps = \"missing\"|\"none\"|\"closure\""),
                    ));
                }
                deps_line = Some((setting.name, line));
                let deps = match (kind, setting.id) {
                    (Kind::Deps, _) => Some(match string(value)?.as_str() {
                        "missing" => Deps::Missing,
                        "none" => Deps::None,
                        "closure" => Deps::Closure,
                        other => {
                            return Err(err(
                                line,
                                format!(
                                    "deps = \"{other}\": use \"missing\", \"none\" or \"closure\""
                                ),
                            ))
                        }
                    }),
                    (_, Id::NoDeps) => boolean(&value)?.then_some(Deps::None),
                    _ => boolean(&value)?.then_some(Deps::Closure),
                };
                (Id::Deps, FileValue::Deps(deps))
            }
            (id, Kind::Text) => (id, FileValue::Text(string(value)?)),
            (id, Kind::Path) => (id, FileValue::Path(rel(string(value)?))),
            (id, Kind::Texts) => (id, FileValue::Texts(strings(value)?)),
            (id, Kind::Paths) => (
                id,
                FileValue::Paths(strings(value)?.into_iter().map(rel).collect()),
            ),
            (id, Kind::Number) => match value {
                Value::Int(n) => {
                    if id == Id::CompressionLevel && i32::try_from(n).is_err() {
                        return Err(err(line, format!("{key} {n} is out of range")));
                    }
                    (id, FileValue::Number(n))
                }
                _ => return Err(want("an integer")),
            },
            (id, Kind::Switch) => (id, FileValue::Switch(boolean(&value)?)),
            (id, Kind::Duration) => (
                id,
                FileValue::Text(match value {
                    Value::Int(n) if n >= 0 => n.to_string(),
                    other => string(other)?,
                }),
            ),
            (_, Kind::Deps) => unreachable!("only deps is of kind Deps"),
        };
        v.values.push((id, value, line));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn args(a: &[&str]) -> Args {
        cli::parse_args(a.iter().map(OsString::from)).unwrap()
    }

    struct Env(HashMap<String, String>);

    impl Env {
        fn new(vars: &[(&str, &str)]) -> Env {
            Env(vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect())
        }
        fn get(&self) -> impl Fn(&str) -> Option<String> + '_ {
            |k| self.0.get(k).cloned()
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("narpush-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write_config(name: &str, text: &str) -> PathBuf {
        let f = tmpdir(name).join("narpush.toml");
        std::fs::write(&f, text).unwrap();
        f
    }

    fn usage_msg(r: Result<Config>) -> String {
        match r {
            Err(Error::Usage(m)) => m,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    /// An empty config file so /etc/narpush.toml on the test machine cannot interfere.
    fn no_file(name: &str) -> String {
        write_config(name, "").display().to_string()
    }

    #[test]
    fn defaults() {
        let cf = no_file("defaults");
        let env = Env::new(&[("NARPUSH_CONFIG", &cf), ("HOME", "/home/u")]);
        let c = resolve_as(args(&["/nix/store/x"]), &env.get(), false).unwrap();
        assert_eq!(
            c.command,
            Command::Push {
                paths: vec!["/nix/store/x".into()],
                hook: None
            }
        );
        assert_eq!(c.to, None);
        assert!(c.key_files.is_empty());
        assert_eq!(c.compression().unwrap().method, Compression::Zstd);
        assert_eq!(c.compression().unwrap().level, None);
        assert_eq!(c.jobs, 24);
        assert_eq!(c.upstream_keys, vec!["cache.nixos.org-1".to_string()]);
        assert_eq!(c.deps, Deps::Missing);
        assert!(!c.strict && !c.quiet && !c.verbose);
        assert_eq!(c.state_dir, PathBuf::from("/home/u/.local/state/narpush"));
        assert_eq!(c.config_file, Some(PathBuf::from(&cf)));
    }

    #[test]
    fn queue_settings_from_flags_env_and_file() {
        let cf = no_file("queue-defaults");
        let env = Env::new(&[("NARPUSH_CONFIG", &cf), ("HOME", "/home/u")]);
        let c = resolve_as(args(&["/nix/store/x"]), &env.get(), false).unwrap();
        assert!(!c.wait && c.spawn_pusher && c.exclude.is_empty());
        assert_eq!(c.give_up_after, DEFAULT_GIVE_UP_AFTER);

        let f = write_config(
            "queue-file",
            "wait = true\nspawn-pusher = false\nexclude = [\"*-source\", \"*.iso\"]\ngive-up-after = \"2h\"\n",
        )
        .display()
        .to_string();
        let env = Env::new(&[("NARPUSH_CONFIG", &f), ("HOME", "/home/u")]);
        let c = resolve_as(args(&["/nix/store/x"]), &env.get(), false).unwrap();
        assert!(c.wait && !c.spawn_pusher);
        assert_eq!(c.exclude.len(), 2);
        assert!(c.exclude[0].matches("nixpkgs-source"));
        assert_eq!(c.give_up_after, std::time::Duration::from_secs(7200));
        // The command line wins over the file; the environment over the file.
        let c = resolve_as(
            args(&[
                "--exclude",
                "linux-*",
                "--give-up-after",
                "90s",
                "/nix/store/x",
            ]),
            &env.get(),
            false,
        )
        .unwrap();
        assert_eq!(c.exclude.len(), 1);
        assert_eq!(c.give_up_after, std::time::Duration::from_secs(90));
        let env = Env::new(&[
            ("NARPUSH_CONFIG", &cf),
            ("HOME", "/home/u"),
            ("NARPUSH_WAIT", "1"),
            ("NARPUSH_SPAWN_PUSHER", "no"),
        ]);
        let c = resolve_as(args(&["/nix/store/x"]), &env.get(), false).unwrap();
        assert!(c.wait && !c.spawn_pusher);
        // strict implies wait.
        let env = Env::new(&[("NARPUSH_CONFIG", &cf), ("HOME", "/home/u")]);
        let c = resolve_as(args(&["--strict", "/nix/store/x"]), &env.get(), false).unwrap();
        assert!(c.wait);

        // Bad values name where they came from.
        let bad = write_config("queue-bad", "exclude = [\"a[\"]\n");
        let env = Env::new(&[("NARPUSH_CONFIG", bad.to_str().unwrap()), ("HOME", "/h")]);
        let e = resolve_as(args(&["/nix/store/x"]), &env.get(), false).unwrap_err();
        assert!(
            e.to_string().contains("line 1: exclude") && e.to_string().contains("'a['"),
            "{e}"
        );
        let env = Env::new(&[("NARPUSH_CONFIG", &cf), ("HOME", "/h")]);
        let e = resolve_as(
            args(&["--give-up-after", "soon", "/nix/store/x"]),
            &env.get(),
            false,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--give-up-after 'soon' is not a duration"),
            "{e}"
        );
        let e = resolve_as(args(&["flush", "--timeout", "x"]), &env.get(), false).unwrap_err();
        assert!(e.to_string().contains("--timeout"), "{e}");
        let c = resolve_as(
            args(&["status", "--json", "--max-age", "1h"]),
            &env.get(),
            false,
        )
        .unwrap();
        assert_eq!(
            c.command,
            Command::Status {
                json: true,
                max_age: Some(std::time::Duration::from_secs(3600))
            }
        );
        let c = resolve_as(args(&["retry"]), &env.get(), false).unwrap();
        assert_eq!(c.command, Command::Retry);
    }

    #[test]
    fn state_dir_defaults() {
        let cf = no_file("statedir");
        let p = |vars: &[(&str, &str)], root| {
            let mut all = vec![("NARPUSH_CONFIG", cf.as_str())];
            all.extend_from_slice(vars);
            resolve_as(args(&["p"]), &Env::new(&all).get(), root).map(|c| c.state_dir)
        };
        assert_eq!(
            p(&[("HOME", "/home/u")], true).unwrap(),
            PathBuf::from("/var/lib/narpush")
        );
        assert_eq!(
            p(&[("HOME", "/home/u"), ("XDG_STATE_HOME", "/xdg")], false).unwrap(),
            PathBuf::from("/xdg/narpush")
        );
        assert_eq!(
            p(&[("HOME", "/home/u"), ("XDG_STATE_HOME", "rel")], false).unwrap(),
            PathBuf::from("/home/u/.local/state/narpush")
        );
        let m = usage_msg(p(&[], false).map(|_| unreachable!()));
        assert!(m.contains("--state-dir"), "{m}");
        assert_eq!(
            p(&[("NARPUSH_STATE_DIR", "/s")], false).unwrap(),
            PathBuf::from("/s"),
            "an explicit state dir needs no HOME"
        );
    }

    #[test]
    fn effective_uid_matches_proc() {
        // Whatever we run as, the detection must agree with the owner of /proc/self.
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        assert_eq!(effective_uid_is_root(), uid == 0);
    }

    #[test]
    fn hook_detection() {
        let cf = no_file("hook");
        let env = Env::new(&[
            ("NARPUSH_CONFIG", &cf),
            ("HOME", "/h"),
            ("OUT_PATHS", " /nix/store/a-x\n/nix/store/b-y  "),
            ("DRV_PATH", "/nix/store/c-x.drv"),
        ]);
        let c = resolve_as(args(&[]), &env.get(), false).unwrap();
        let hook = HookEnv {
            out_paths: vec!["/nix/store/a-x".into(), "/nix/store/b-y".into()],
            drv_path: Some("/nix/store/c-x.drv".into()),
        };
        assert_eq!(
            c.command,
            Command::Push {
                paths: vec![],
                hook: Some(hook)
            }
        );
        // Paths on the command line win: not hook mode.
        let c = resolve_as(args(&["./result"]), &env.get(), false).unwrap();
        assert_eq!(
            c.command,
            Command::Push {
                paths: vec!["./result".into()],
                hook: None
            }
        );
        // Nix 2.8.0: OUT_PATHS empty, DRV_PATH set.
        let env = Env::new(&[
            ("NARPUSH_CONFIG", &cf),
            ("HOME", "/h"),
            ("OUT_PATHS", ""),
            ("DRV_PATH", "/d.drv"),
        ]);
        let c = resolve_as(args(&["push"]), &env.get(), false).unwrap();
        let hook = HookEnv {
            out_paths: vec![],
            drv_path: Some("/d.drv".into()),
        };
        assert_eq!(
            c.command,
            Command::Push {
                paths: vec![],
                hook: Some(hook)
            }
        );
        // Neither paths nor hook variables.
        let env = Env::new(&[("NARPUSH_CONFIG", &cf), ("HOME", "/h")]);
        let m = usage_msg(resolve_as(args(&[]), &env.get(), false));
        assert!(m.starts_with("nothing to push"), "{m}");
    }

    #[test]
    fn one_rule_for_the_compression_level_from_flag_env_file_and_url() {
        let cf = no_file("level-rule");
        let run = |a: &[&str], vars: &[(&str, &str)]| {
            let mut all = vec![("NARPUSH_CONFIG", cf.as_str()), ("HOME", "/h")];
            all.extend_from_slice(vars);
            resolve_as(args(a), &Env::new(&all).get(), false)
        };
        let level = |a: &[&str]| {
            run(a, &[])
                .unwrap()
                .compression()
                .map(|c| (c.method, c.level))
        };
        // The same level is refused with the same words, wherever it was given.
        let flag = usage_msg(run(&["--compression-level", "23", "p"], &[]));
        assert_eq!(
            flag,
            "--compression-level: level 23 is out of range for zstd (1..=22)"
        );
        let url = "file:///c?compression-level=23";
        let c = run(&["--to", url, "p"], &[]).expect("a URL's level waits for the push");
        let m = c.compression().unwrap_err().to_string();
        assert_eq!(
            m,
            format!(
                "store URL '{url}': compression-level: level 23 is out of range for zstd (1..=22)"
            )
        );
        assert_eq!(
            m.split_once(": compression-level: ").unwrap().1,
            flag.split_once(": ").unwrap().1
        );
        let env = usage_msg(run(&["p"], &[("NARPUSH_COMPRESSION_LEVEL", "23")]));
        assert_eq!(
            env.split_once(": ").unwrap().1,
            flag.split_once(": ").unwrap().1
        );
        // -1 is Nix's "the default", from a flag as from a URL.
        assert_eq!(
            level(&["--compression-level", "-1", "p"]).unwrap(),
            (Compression::Zstd, None)
        );
        assert_eq!(
            level(&["--to", "file:///c?compression=xz&compression-level=-1", "p"]).unwrap(),
            (Compression::Xz, None)
        );
        // A level is checked against the method it is used with, wherever that came from.
        assert_eq!(
            level(&[
                "--to",
                "file:///c?compression=xz",
                "--compression-level",
                "0",
                "p"
            ])
            .unwrap(),
            (Compression::Xz, Some(0))
        );
        let m = level(&[
            "--to",
            "file:///c?compression=xz",
            "--compression-level",
            "12",
            "p",
        ])
        .unwrap_err()
        .to_string();
        assert_eq!(
            m,
            "--compression-level: level 12 is out of range for xz (0..=9)"
        );
        assert_eq!(
            level(&[
                "--to",
                "file:///c?compression=none",
                "--compression-level",
                "30",
                "p"
            ])
            .unwrap(),
            (Compression::None, None)
        );
        // The settings win over the URL, one value at a time.
        assert_eq!(
            level(&[
                "--to",
                "file:///c?compression=xz&compression-level=2",
                "--compression",
                "zstd",
                "p"
            ])
            .unwrap(),
            (Compression::Zstd, Some(2))
        );
        let m = level(&["--to", "file:///c?compression=gz", "p"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            m,
            "store URL 'file:///c?compression=gz': compression: unknown compression 'gz'; use zstd, xz or none"
        );
        // A misspelt method in the settings is refused at once, URL or not.
        let m = usage_msg(run(
            &[
                "--to",
                "file:///c?compression-level=3",
                "--compression",
                "gz",
                "p",
            ],
            &[],
        ));
        assert_eq!(
            m,
            "--compression: unknown compression 'gz'; use zstd, xz or none"
        );
    }

    #[test]
    fn the_target_is_resolved_with_the_configuration() {
        let cf = no_file("target");
        let run = |a: &[&str], vars: &[(&str, &str)]| {
            let mut all = vec![("NARPUSH_CONFIG", cf.as_str())];
            all.extend_from_slice(vars);
            resolve_as(args(a), &Env::new(&all).get(), false).unwrap()
        };
        // No cache named: only the commands that open one say so.
        let c = run(&["--state-dir", "/s", "p"], &[]);
        assert_eq!(
            c.target().unwrap_err().to_string(),
            "no binary cache given: pass --to URL (e.g. s3://nix-cache?endpoint=s3.example.org), \
             set NARPUSH_TO, or 'to' in /etc/narpush.toml"
        );
        let c = run(&["--to", "http://x", "--state-dir", "/s", "p"], &[]);
        assert!(c
            .target()
            .unwrap_err()
            .to_string()
            .starts_with("store URL 'http://x'"));
        // The URL's keys follow the settings' keys; the region defaults from the
        // environment; the credentials are located, not read.
        let c = run(
            &[
                "--to",
                "s3://bkt?profile=builder&secret-key=/url.sec",
                "--key-file",
                "/flag.sec",
                "--credentials-file",
                "/nonexistent/creds",
                "p",
            ],
            &[
                ("HOME", "/home/u"),
                ("AWS_DEFAULT_REGION", "eu-north-1"),
                ("AWS_SECRET_ACCESS_KEY", "s3cr3t-value"),
            ],
        );
        let t = c.target().unwrap();
        assert_eq!(
            t.key_files,
            vec![PathBuf::from("/flag.sec"), PathBuf::from("/url.sec")]
        );
        let StoreUrl::S3(s3) = &t.url else {
            panic!("{:?}", t.url)
        };
        assert_eq!(s3.region, "eu-north-1");
        assert_eq!(
            t.credentials.file,
            Some(PathBuf::from("/nonexistent/creds"))
        );
        assert_eq!(t.credentials.profile.as_deref(), Some("builder"));
        assert_eq!(t.credentials.home, Some(PathBuf::from("/home/u")));
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY"), "{shown}");
        // Read when asked, with the file named.
        let e = t.credentials.read().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/creds"), "{e}");
    }

    /// A hook that queues opens no cache: a missing or broken store URL, or credentials
    /// that cannot be read, must not stop it from resolving its configuration.
    #[test]
    fn a_queueing_hook_needs_no_cache() {
        let cf = no_file("hook-no-cache");
        for to in [
            None,
            Some("s3://bkt?nonsense=1"),
            Some("s3://bkt?compression-level=99"),
        ] {
            let mut vars = vec![
                ("NARPUSH_CONFIG", cf.as_str()),
                ("HOME", "/h"),
                (
                    "OUT_PATHS",
                    "/nix/store/sx5jrkbw8bglvjnhj2g2ylwj9zljcsfd-hello",
                ),
                ("NARPUSH_CREDENTIALS_FILE", "/nonexistent/creds"),
            ];
            if let Some(to) = to {
                vars.push(("NARPUSH_TO", to));
            }
            let c = resolve_as(args(&[]), &Env::new(&vars).get(), false)
                .unwrap_or_else(|e| panic!("{to:?}: {e}"));
            assert!(matches!(c.command, Command::Push { hook: Some(_), .. }));
            assert!(!c.wait);
            assert!(
                c.target().is_err() || c.compression().is_err(),
                "{to:?}: the error waits for a push"
            );
        }
    }

    #[test]
    fn precedence_cli_env_file() {
        let f = write_config(
            "precedence",
            r#"
# every key
to = "file:///from-file"
key-file = ["keys/a.sec", "/abs/b.sec"]
credentials-file = "creds"
compression = "xz"
compression-level = 3
jobs = 7
compression-threads = 3
upstream-keys = ["u-1"]
deps = "closure"
strict = true
verbose = true
state-dir = "state"
"#,
        );
        let dir = f.parent().unwrap().to_path_buf();
        let cf = f.display().to_string();
        let home = [("HOME", "/h")];
        // File only.
        let env = Env::new(&[("NARPUSH_CONFIG", &cf), home[0]]);
        let c = resolve_as(args(&["p"]), &env.get(), false).unwrap();
        assert_eq!(c.to.as_deref(), Some("file:///from-file"));
        assert_eq!(
            c.key_files,
            vec![dir.join("keys/a.sec"), PathBuf::from("/abs/b.sec")]
        );
        assert_eq!(c.credentials_file, Some(dir.join("creds")));
        assert_eq!(c.compression().unwrap().method, Compression::Xz);
        assert_eq!(c.compression().unwrap().level, Some(3));
        assert_eq!(c.jobs, 7);
        assert_eq!(c.compression_threads, 3);
        assert_eq!(c.upstream_keys, vec!["u-1".to_string()]);
        assert_eq!(c.deps, Deps::Closure);
        assert!(c.strict && c.verbose && !c.quiet);
        assert_eq!(c.state_dir, dir.join("state"));
        assert_eq!(c.config_file, Some(f.clone()));
        // Environment over file.
        let env = Env::new(&[
            ("NARPUSH_CONFIG", &cf),
            home[0],
            ("NARPUSH_TO", "file:///from-env"),
            ("NARPUSH_KEY_FILE", "/e1:/e2"),
            ("NARPUSH_CREDENTIALS_FILE", "/ecreds"),
            ("NARPUSH_COMPRESSION", "zstd"),
            ("NARPUSH_COMPRESSION_LEVEL", "19"),
            ("NARPUSH_JOBS", "5"),
            ("NARPUSH_COMPRESSION_THREADS", "2"),
            ("NARPUSH_STRICT", "0"),
            ("NARPUSH_STATE_DIR", "/estate"),
        ]);
        let c = resolve_as(args(&["p"]), &env.get(), false).unwrap();
        assert_eq!(c.to.as_deref(), Some("file:///from-env"));
        assert_eq!(
            c.key_files,
            vec![PathBuf::from("/e1"), PathBuf::from("/e2")]
        );
        assert_eq!(c.credentials_file, Some(PathBuf::from("/ecreds")));
        assert_eq!(c.compression().unwrap().method, Compression::Zstd);
        assert_eq!(c.compression().unwrap().level, Some(19));
        assert_eq!(c.jobs, 5);
        assert_eq!(c.compression_threads, 2);
        assert!(!c.strict);
        assert_eq!(c.state_dir, PathBuf::from("/estate"));
        // Command line over environment.
        let a = args(&[
            "--to",
            "file:///cli",
            "--key-file",
            "/c1",
            "--credentials-file",
            "/ccreds",
            "--compression",
            "none",
            "--compression-level",
            "9",
            "--jobs",
            "3",
            "--upstream-key",
            "x-1",
            "--no-deps",
            "--quiet",
            "--state-dir",
            "/cstate",
            "--strict",
            "p",
        ]);
        let c = resolve_as(a, &env.get(), false).unwrap();
        assert_eq!(c.to.as_deref(), Some("file:///cli"));
        assert_eq!(c.key_files, vec![PathBuf::from("/c1")]);
        assert_eq!(c.credentials_file, Some(PathBuf::from("/ccreds")));
        assert_eq!(c.compression().unwrap().method, Compression::None);
        assert_eq!(
            c.compression().unwrap().level,
            None,
            "a level means nothing for none"
        );
        assert_eq!(c.jobs, 3);
        assert_eq!(c.upstream_keys, vec!["x-1".to_string()]);
        assert_eq!(c.deps, Deps::None);
        assert!(
            c.strict && c.quiet && !c.verbose,
            "--quiet overrides verbose = true in the file"
        );
        assert_eq!(c.state_dir, PathBuf::from("/cstate"));
        // --config over NARPUSH_CONFIG.
        let other = no_file("precedence-other");
        let c = resolve_as(args(&["--config", &other, "p"]), &env.get(), false).unwrap();
        assert_eq!(c.config_file, Some(PathBuf::from(&other)));
        assert_eq!(c.deps, Deps::Missing);
    }

    #[test]
    fn validation_names_the_source() {
        let cf = no_file("validation");
        let run = |a: &[&str], vars: &[(&str, &str)]| {
            let mut all = vec![("NARPUSH_CONFIG", cf.as_str()), ("HOME", "/h")];
            all.extend_from_slice(vars);
            usage_msg(resolve_as(args(a), &Env::new(&all).get(), false))
        };
        let m = run(&["--compression", "gzip", "p"], &[]);
        assert_eq!(
            m,
            "--compression: unknown compression 'gzip'; use zstd, xz or none"
        );
        let m = run(&["p"], &[("NARPUSH_COMPRESSION", "lz4")]);
        assert!(
            m.starts_with("NARPUSH_COMPRESSION: unknown compression 'lz4'"),
            "{m}"
        );
        let m = run(&["--compression-level", "23", "p"], &[]);
        assert_eq!(
            m,
            "--compression-level: level 23 is out of range for zstd (1..=22)"
        );
        let m = run(
            &["--compression", "xz", "--compression-level", "10", "p"],
            &[],
        );
        assert!(m.contains("out of range for xz (0..=9)"), "{m}");
        let m = run(&["p"], &[("NARPUSH_COMPRESSION_LEVEL", "high")]);
        assert!(m.starts_with("NARPUSH_COMPRESSION_LEVEL='high'"), "{m}");
        let m = run(&["--jobs", "0", "p"], &[]);
        assert!(
            m.starts_with("--jobs: jobs must be between 1 and 1024"),
            "{m}"
        );
        let m = run(&["p"], &[("NARPUSH_JOBS", "x")]);
        assert!(m.starts_with("NARPUSH_JOBS='x'"), "{m}");
        let m = run(&["--compression-threads", "257", "p"], &[]);
        assert!(
            m.starts_with("--compression-threads: compression-threads must be between 1 and 256"),
            "{m}"
        );
        let m = run(&["p"], &[("NARPUSH_STRICT", "maybe")]);
        assert!(m.starts_with("NARPUSH_STRICT='maybe'"), "{m}");
        let m = run(&["--config", "/nonexistent/narpush.toml", "p"], &[]);
        assert_eq!(
            m,
            "config file /nonexistent/narpush.toml (named by --config) does not exist"
        );
        let m = usage_msg(resolve_as(
            args(&["p"]),
            &Env::new(&[("NARPUSH_CONFIG", "/nonexistent/n.toml"), ("HOME", "/h")]).get(),
            false,
        ));
        assert!(m.contains("(named by NARPUSH_CONFIG)"), "{m}");
    }

    fn file_error(name: &str, text: &str) -> String {
        let f = write_config(name, text);
        let env = Env::new(&[("HOME", "/h")]);
        let m = usage_msg(resolve_as(
            args(&["--config", f.to_str().unwrap(), "p"]),
            &env.get(),
            false,
        ));
        let prefix = format!("config file {} ", f.display());
        m.strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{m} lacks {prefix}"))
            .to_string()
    }

    #[test]
    fn config_file_errors_have_line_numbers() {
        let m = file_error("e-unknown", "to = \"file:///c\"\n\nfoo = 1\n");
        assert!(
            m.starts_with("line 3: unknown key 'foo'; known keys: to, key-file,"),
            "{m}"
        );
        let m = file_error("e-bare", "# c\ncompression = zstd\n");
        assert_eq!(
            m,
            "line 2: 'zstd' is not a value; strings need quotes: \"zstd\""
        );
        let m = file_error("e-type", "jobs = \"4\"\n");
        assert_eq!(m, "line 1: jobs must be an integer, not a string");
        let m = file_error("e-range", "\n\njobs = 0\n");
        assert_eq!(m, "line 3: jobs: jobs must be between 1 and 1024, not 0");
        let m = file_error("e-level", "compression = \"xz\"\ncompression-level = 12\n");
        assert_eq!(
            m,
            "line 2: compression-level: level 12 is out of range for xz (0..=9)"
        );
        let m = file_error("e-comp", "compression = \"gz\"\n");
        assert!(
            m.starts_with("line 1: compression: unknown compression 'gz'"),
            "{m}"
        );
        let m = file_error("e-dup", "to = \"a\"\nto = \"b\"\n");
        assert_eq!(m, "line 2: 'to' is set twice (first on line 1)");
        let m = file_error("e-alias", "upstream-key = \"a\"\nupstream-keys = [\"b\"]\n");
        assert!(m.starts_with("line 2: 'upstream-keys' is set twice"), "{m}");
        let m = file_error("e-noeq", "strict true\n");
        assert_eq!(m, "line 1: expected '=' after key 'strict'");
        let m = file_error("e-trailing", "strict = true false\n");
        assert!(m.starts_with("line 1: unexpected 'false'"), "{m}");
        let m = file_error("e-unterminated", "to = \"abc\n");
        assert!(m.starts_with("line 1: unterminated string"), "{m}");
        let m = file_error("e-array", "key-file = [\"a\",\n  \"b\"\n");
        assert!(m.starts_with("line 1: unterminated array"), "{m}");
        let m = file_error("e-array-type", "key-file = [\"a\", 1]\n");
        assert!(
            m.starts_with("line 1: key-file must be a list of non-empty strings"),
            "{m}"
        );
        let m = file_error("e-table", "[cache]\nto = \"x\"\n");
        assert_eq!(m, "line 1: the only table allowed is [narpush]");
        let m = file_error("e-deps", "no-deps = true\ncloture = true\n");
        assert!(m.starts_with("line 2: unknown key 'cloture'"), "{m}");
        let m = file_error("e-deps2", "no-deps = true\nclosure = true\n");
        assert!(
            m.starts_with("line 2: 'closure' conflicts with 'no-deps' on line 1"),
            "{m}"
        );
        let m = file_error("e-depsval", "deps = \"all\"\n");
        assert!(m.starts_with("line 1: deps = \"all\""), "{m}");
        let m = file_error("e-bool", "strict = 1\n");
        assert_eq!(m, "line 1: strict must be true or false, not an integer");
        let m = file_error("e-garbage", "}}}\n");
        assert!(m.starts_with("line 1: expected a key"), "{m}");
        let m = file_error(
            "e-lines",
            "# one\n[narpush]\nkey-file = [\n  \"a\", # two\n  \"b\",\n]\nbogus = 1\n",
        );
        assert!(m.starts_with("line 7: unknown key 'bogus'"), "{m}");
    }

    #[test]
    fn default_config_file_is_optional_and_help_reads_nothing() {
        // help, --version and keygen never read a config file or the environment.
        let env = Env::new(&[
            ("NARPUSH_CONFIG", "/nonexistent/n.toml"),
            ("NARPUSH_JOBS", "x"),
        ]);
        let c = resolve_as(args(&["help", "retry"]), &env.get(), false).unwrap();
        assert_eq!(
            c.command,
            Command::Help(cli::help_text(cli::Topic::Retry).into())
        );
        let c = resolve_as(args(&["-V"]), &env.get(), false).unwrap();
        assert_eq!(c.command, Command::Version);
        let c = resolve_as(args(&["keygen", "n-1"]), &env.get(), false).unwrap();
        assert_eq!(
            c.command,
            Command::Keygen {
                name: "n-1".into(),
                out: "n-1".into()
            }
        );
        let c = resolve_as(args(&["keygen", "n-1", "--out", "/k/x"]), &env.get(), false).unwrap();
        assert_eq!(
            c.command,
            Command::Keygen {
                name: "n-1".into(),
                out: "/k/x".into()
            }
        );
        let m = usage_msg(resolve_as(args(&["keygen", "a:b"]), &env.get(), false));
        assert!(m.contains("may not contain ':'"), "{m}");
    }

    #[test]
    fn file_booleans_for_deps_and_quiet_verbose_conflict() {
        let f = write_config("bools", "no-deps = true\nquiet = true\n");
        let env = Env::new(&[("HOME", "/h")]);
        let c = resolve_as(
            args(&["--config", f.to_str().unwrap(), "p"]),
            &env.get(),
            false,
        )
        .unwrap();
        assert_eq!(c.deps, Deps::None);
        assert!(c.quiet);
        let c = resolve_as(
            args(&["--config", f.to_str().unwrap(), "--closure", "-v", "p"]),
            &env.get(),
            false,
        )
        .unwrap();
        assert_eq!(c.deps, Deps::Closure);
        assert!(c.verbose && !c.quiet);
        let f = write_config("bools2", "quiet = true\nverbose = true\n");
        let m = usage_msg(resolve_as(
            args(&["--config", f.to_str().unwrap(), "p"]),
            &env.get(),
            false,
        ));
        assert!(m.contains("quiet and verbose are both true"), "{m}");
    }
}
