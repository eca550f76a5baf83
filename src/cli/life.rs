//! The command lines of the cache-life commands, `init`, `verify` and `gc`: their
//! options (the settings they share with `push` come from the settings table), their
//! help texts, and the age syntax of `gc` (a duration that must have a unit).

use super::{path_value, string_value, usage_in as usage, Args, RawCommand};
use crate::error::Result;
use crate::settings::{self, Id};
use std::ffi::OsString;
use std::path::PathBuf;

/// `narpush init` options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InitArgs {
    pub priority: u32,
    pub force: bool,
    pub create_bucket: bool,
    pub public_read: bool,
    pub print_policy: bool,
}

/// `narpush verify` options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyArgs {
    /// Public keys (`name:base64`) or files holding one.
    pub trusted_keys: Vec<String>,
    pub paths: Vec<PathBuf>,
    pub all: bool,
}

/// `narpush gc` options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcArgs {
    /// Seconds.
    pub older_than: u64,
    pub keep: Vec<PathBuf>,
    pub keep_files: Vec<PathBuf>,
    pub dry_run: bool,
    /// Seconds.
    pub grace: u64,
}

/// One of the cache-life commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifeCommand {
    Init(InitArgs),
    Verify(VerifyArgs),
    Gc(GcArgs),
}

/// The default `Priority` written to `nix-cache-info` (cache.nixos.org's is 40).
pub const DEFAULT_PRIORITY: u32 = 40;
/// The shortest `gc --older-than`: anything shorter would race builds in progress.
pub const MIN_OLDER_THAN: u64 = 86_400;
/// The default grace period before an unreferenced NAR may go.
pub const DEFAULT_GRACE: u64 = 3600;

/// Whether `name` is one of these commands.
pub fn is_command(name: &str) -> bool {
    matches!(name, "init" | "verify" | "gc")
}

/// The help text of a command.
pub fn help_text(name: &str) -> &'static str {
    match name {
        "init" => INIT_HELP,
        "verify" => VERIFY_HELP,
        _ => GC_HELP,
    }
}

/// Parse `D` as a duration in seconds, as every narpush duration is parsed
/// ([`crate::duration::parse`]: `30d`, `12h`, `2w`, `1d12h`), except that a bare
/// number is refused here: an age without a unit is too easy to misread.
pub fn parse_duration(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{t}' needs a unit: s, m, h, d or w (e.g. 30d)"));
    }
    crate::duration::parse(t).map(|d| d.as_secs())
}

/// Whether `cmd` takes the setting `id` on its command line.
fn takes(cmd: &str, id: Id) -> bool {
    match id {
        Id::To | Id::CredentialsFile | Id::Config | Id::Quiet | Id::Verbose => true,
        Id::KeyFile => cmd == "init",
        Id::UpstreamKey => cmd == "verify",
        Id::Jobs => cmd != "init",
        _ => false,
    }
}

/// Parse the arguments after `init`, `verify` or `gc` into raw [`Args`].
pub fn parse_args(cmd: &str, args: Vec<OsString>) -> Result<Args> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut a = Args::new(RawCommand::Version);
    let mut init = InitArgs {
        priority: DEFAULT_PRIORITY,
        ..InitArgs::default()
    };
    let mut verify = VerifyArgs::default();
    let mut gc = GcArgs {
        grace: DEFAULT_GRACE,
        ..GcArgs::default()
    };
    let mut older_than = None;
    let le = |e: lexopt::Error| usage(cmd, e);
    let string = |p: &mut lexopt::Parser, opt: &str| string_value(p, cmd, opt);
    let path = |p: &mut lexopt::Parser, opt: &str| path_value(p, cmd, opt);
    let duration = |p: &mut lexopt::Parser, opt: &str| -> Result<u64> {
        let s = string(p, opt)?;
        parse_duration(&s).map_err(|e| usage(cmd, format!("{opt} {e}")))
    };
    while let Some(arg) = parser.next().map_err(le)? {
        match arg {
            Short('h') | Long("help") => {
                return Ok(Args::new(RawCommand::LifeHelp(help_text(cmd))));
            }
            Long("priority") if cmd == "init" => {
                let s = string(&mut parser, "--priority")?;
                init.priority = s
                    .parse()
                    .map_err(|_| usage(cmd, format!("--priority {s}: not a whole number")))?;
            }
            Long("force") if cmd == "init" => init.force = true,
            Long("create-bucket") if cmd == "init" => init.create_bucket = true,
            Long("public-read") if cmd == "init" => init.public_read = true,
            Long("print-policy") if cmd == "init" => init.print_policy = true,
            Long("expire-days") if cmd == "init" => {
                return Err(usage(
                    cmd,
                    "--expire-days does not exist: object expiry breaks a Nix cache \
                     (see the README); run 'narpush gc --older-than 30d' from a timer instead",
                ))
            }
            Long("trusted-key") if cmd == "verify" => verify
                .trusted_keys
                .push(string(&mut parser, "--trusted-key")?),
            Long("all") if cmd == "verify" => verify.all = true,
            Value(v) if cmd == "verify" => verify.paths.push(PathBuf::from(v)),
            Long("older-than") if cmd == "gc" => {
                older_than = Some(duration(&mut parser, "--older-than")?)
            }
            Long("grace") if cmd == "gc" => gc.grace = duration(&mut parser, "--grace")?,
            Long("keep") if cmd == "gc" => gc.keep.push(path(&mut parser, "--keep")?),
            Long("keep-file") if cmd == "gc" => {
                gc.keep_files.push(path(&mut parser, "--keep-file")?)
            }
            Long("dry-run") if cmd == "gc" => gc.dry_run = true,
            Value(v) => {
                return Err(usage(
                    cmd,
                    format!("unexpected argument '{}'", v.to_string_lossy()),
                ))
            }
            // The settings shared with push, by the names the table gives them.
            Long(name) => {
                let name = name.to_string();
                let Some(s) = settings::by_long(&name).filter(|s| takes(cmd, s.id)) else {
                    return Err(usage(cmd, Long(&name).unexpected()));
                };
                crate::cli::set(&mut a, s, &mut parser, cmd)?;
            }
            Short(c) => {
                let Some(s) = settings::by_short(c).filter(|s| takes(cmd, s.id)) else {
                    return Err(usage(cmd, Short(c).unexpected()));
                };
                crate::cli::set(&mut a, s, &mut parser, cmd)?;
            }
        }
    }
    if a.quiet && a.verbose {
        return Err(usage(cmd, "--quiet and --verbose conflict: choose one"));
    }
    let life = match cmd {
        "init" => LifeCommand::Init(init),
        "verify" => {
            if verify.trusted_keys.is_empty() {
                return Err(usage(
                    cmd,
                    "verify needs at least one --trusted-key NAME:BASE64 (the cache's public key)",
                ));
            }
            match (verify.all, verify.paths.is_empty()) {
                (true, false) => return Err(usage(cmd, "give store paths or --all, not both")),
                (false, true) => {
                    return Err(usage(cmd, "nothing to verify: give store paths or --all"))
                }
                _ => {}
            }
            LifeCommand::Verify(verify)
        }
        _ => {
            let ot = older_than.ok_or_else(|| {
                usage(
                    cmd,
                    "gc needs --older-than DURATION (e.g. --older-than 30d)",
                )
            })?;
            if ot < MIN_OLDER_THAN {
                return Err(usage(
                    cmd,
                    format!(
                        "--older-than {} is shorter than the minimum of 1d: paths still being \
                         built and pushed would lose their dependencies; use 1d or more",
                        crate::duration::human_age(ot)
                    ),
                ));
            }
            gc.older_than = ot;
            LifeCommand::Gc(gc)
        }
    };
    a.command = RawCommand::Life(life);
    Ok(a)
}

const INIT_HELP: &str = "\
narpush init - set a bucket (or directory) up as a Nix binary cache

USAGE:
    narpush init --to URL [--key-file K] [OPTIONS]

Writes nix-cache-info (StoreDir, WantMassQuery: 1, Priority) when missing,
leaves a matching one alone and refuses one for another store directory.
On a bucket, adds a lifecycle rule that aborts multipart uploads left
incomplete for more than a day (the only safe lifecycle rule for a Nix
cache: no expiry, see 'narpush gc'). Ends by printing the nix.conf lines
and NixOS settings the machines that substitute need.

OPTIONS:
    --to URL                 the cache (s3://BUCKET?... or file:///DIR)
    --key-file FILE          the signing key: its public half is printed
    --credentials-file FILE  AWS credentials for s3:// caches
    --priority N             Priority in nix-cache-info (default 40; lower wins)
    --force                  rewrite nix-cache-info even for another StoreDir
    --create-bucket          create the bucket first (fine when it is ours)
    --public-read            let anyone download the cache's objects (a bucket
                             policy allowing s3:GetObject, as
                             'mc anonymous set download' does)
    --print-policy           print the minimal IAM/MinIO policy for the user
                             that pushes and runs gc, and exit
    --config FILE            config file (default /etc/narpush.toml)
    -q, --quiet / -v, --verbose
    -h, --help

The bucket operations of --create-bucket and --public-read and the lifecycle
rule need an administrator's credentials; the policy printed by
--print-policy is what the pushing user needs afterwards.

EXAMPLE:
    narpush init --to 's3://nix-cache?endpoint=s3.homelab.local' \\
        --create-bucket --public-read --key-file /etc/nix/cache-key.sec
";

const VERIFY_HELP: &str = "\
narpush verify - check a binary cache the way a client would

USAGE:
    narpush verify --to URL --trusted-key KEY... (PATH... | --all)

For each path (or every narinfo with --all): the narinfo parses; a signature
by a trusted key is valid; the NAR exists with the stated FileSize and
FileHash; decompressed, its NarHash and NarSize match; every reference is in
the cache or signed by an upstream key (--upstream-key, default
cache.nixos.org-1, as the local Nix records it). Prints a summary per kind
of problem; exits 1 when there is any.

OPTIONS:
    --to URL                 the cache
    --trusted-key KEY        NAME:BASE64 public key, or a file holding one;
                             repeatable
    --all                    every narinfo in the cache
    --upstream-key NAME      references signed by this key may be elsewhere
    --jobs N                 paths checked in parallel
    --credentials-file FILE, --config FILE, -q, -v, -h
";

const GC_HELP: &str = "\
narpush gc - delete what was not pushed recently, keeping closures whole

USAGE:
    narpush gc --to URL --older-than DURATION [--keep PATH...] [--dry-run]

Mark and sweep over the bucket, no database. The roots are the narinfos
pushed (or renewed by a push) within DURATION, and the --keep paths; every
path in a root's closure stays however old. Other narinfos go first, then
NARs no remaining narinfo points to (once older than --grace), then build
logs of derivations no remaining narinfo names (once older than DURATION),
then multipart uploads incomplete for more than a day. Interrupted at any
point, the cache stays consistent.

DURATION is a number with a unit: s, m, h, d or w (30d, 720h). The
shortest --older-than is 1d.

OPTIONS:
    --to URL                 the cache
    --older-than DURATION    keep what was pushed within DURATION
    --keep PATH              keep this store path (or ./result symlink) and
                             its closure; repeatable
    --keep-file FILE         keep the store paths listed in FILE, one a line
    --grace DURATION         never delete a NAR younger than this (default 1h)
    --dry-run                print what would go and the bytes freed
    --jobs N                 narinfos read in parallel
    --credentials-file FILE, --config FILE, -q, -v, -h

EXAMPLE:
    narpush gc --to 's3://nix-cache?endpoint=s3.homelab.local' --older-than 30d
";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(cmd: &str, args: &[&str]) -> Result<Args> {
        parse_args(cmd, args.iter().map(OsString::from).collect())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration("720h"), Ok(720 * 3600));
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("2w"), Ok(14 * 86_400));
        assert!(parse_duration("30").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("30y")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_duration("d").is_err());
    }

    #[test]
    fn gc_refuses_less_than_a_day() {
        let e = parse("gc", &["--older-than", "12h"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("shorter than the minimum of 1d"), "{e}");
        let e = parse("gc", &[]).unwrap_err().to_string();
        assert!(e.contains("gc needs --older-than"), "{e}");
        let a = parse(
            "gc",
            &["--older-than", "1d", "--keep", "./result", "--dry-run"],
        )
        .unwrap();
        match a.command {
            RawCommand::Life(LifeCommand::Gc(g)) => {
                assert_eq!(g.older_than, 86_400);
                assert_eq!(g.grace, DEFAULT_GRACE);
                assert!(g.dry_run);
                assert_eq!(g.keep, [PathBuf::from("./result")]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verify_and_init_options() {
        let e = parse("verify", &["--all"]).unwrap_err().to_string();
        assert!(e.contains("--trusted-key"), "{e}");
        let e = parse("verify", &["--trusted-key", "k:x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing to verify"), "{e}");
        assert!(parse("verify", &["--trusted-key", "k:x", "--all"]).is_ok());
        let e = parse("init", &["--expire-days", "7"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("narpush gc"), "{e}");
        let e = parse("init", &["--all"]).unwrap_err().to_string();
        assert!(
            e.contains("'--all'") && e.contains("narpush init --help"),
            "{e}"
        );
        let a = parse("init", &["--priority", "30", "--public-read"]).unwrap();
        match a.command {
            RawCommand::Life(LifeCommand::Init(i)) => {
                assert_eq!(i.priority, 30);
                assert!(i.public_read && !i.force);
            }
            other => panic!("{other:?}"),
        }
    }
}
