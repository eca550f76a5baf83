//! The settings narpush takes, each named once: its config-file key (also its long
//! option, `--key`), its short option, its `NARPUSH_*` environment variable and the
//! kind of value it holds. `cli` finds options here, `config` finds environment
//! variables and config-file keys here (and lists the known keys from here), so a new
//! setting is one line in [`SETTINGS`] plus where its value is used. The help texts
//! stay hand-written in `cli`; a test there checks that they name every setting.

/// Which setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Id {
    To,
    KeyFile,
    CredentialsFile,
    Compression,
    CompressionLevel,
    Jobs,
    CompressionThreads,
    UpstreamKey,
    Deps,
    NoDeps,
    Closure,
    Strict,
    Quiet,
    Verbose,
    StateDir,
    Wait,
    Exclude,
    GiveUpAfter,
    SpawnPusher,
    UploadLog,
    Config,
}

/// What a setting's value is, and so how each source spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A non-empty string.
    Text,
    /// A non-empty path; relative paths in the config file are relative to the file.
    Path,
    /// Strings: the option repeated, or a config-file list (or one string).
    Texts,
    /// Paths: the option repeated, a config-file list (or one path), or a
    /// colon-separated list in the environment.
    Paths,
    /// A whole number.
    Number,
    /// A switch on the command line; true or false elsewhere.
    Switch,
    /// A duration (`15min`, `2h`); the config file also takes whole seconds.
    Duration,
    /// `deps = "missing" | "none" | "closure"`.
    Deps,
}

/// One setting.
#[derive(Debug)]
pub(crate) struct Setting {
    pub(crate) id: Id,
    /// The config-file key, and the long option `--NAME` when `long`.
    pub(crate) name: &'static str,
    /// A long option on the command line.
    pub(crate) long: bool,
    /// A short option (`-q`).
    pub(crate) short: Option<char>,
    /// The environment variable.
    pub(crate) env: Option<&'static str>,
    /// A config-file key (`false`: only the command line and the environment).
    pub(crate) in_file: bool,
    /// Another config-file key for the same setting.
    pub(crate) alias: Option<&'static str>,
    pub(crate) kind: Kind,
}

const fn setting(id: Id, name: &'static str, env: Option<&'static str>, kind: Kind) -> Setting {
    Setting {
        id,
        name,
        long: true,
        short: None,
        env,
        in_file: true,
        alias: None,
        kind,
    }
}

/// Every setting, in the order the config file's known keys are listed.
pub(crate) const SETTINGS: &[Setting] = &[
    setting(Id::To, "to", Some("NARPUSH_TO"), Kind::Text),
    setting(
        Id::KeyFile,
        "key-file",
        Some("NARPUSH_KEY_FILE"),
        Kind::Paths,
    ),
    setting(
        Id::CredentialsFile,
        "credentials-file",
        Some("NARPUSH_CREDENTIALS_FILE"),
        Kind::Path,
    ),
    setting(
        Id::Compression,
        "compression",
        Some("NARPUSH_COMPRESSION"),
        Kind::Text,
    ),
    setting(
        Id::CompressionLevel,
        "compression-level",
        Some("NARPUSH_COMPRESSION_LEVEL"),
        Kind::Number,
    ),
    setting(Id::Jobs, "jobs", Some("NARPUSH_JOBS"), Kind::Number),
    setting(
        Id::CompressionThreads,
        "compression-threads",
        Some("NARPUSH_COMPRESSION_THREADS"),
        Kind::Number,
    ),
    Setting {
        alias: Some("upstream-keys"),
        ..setting(Id::UpstreamKey, "upstream-key", None, Kind::Texts)
    },
    Setting {
        long: false,
        ..setting(Id::Deps, "deps", None, Kind::Deps)
    },
    setting(Id::NoDeps, "no-deps", None, Kind::Switch),
    setting(Id::Closure, "closure", None, Kind::Switch),
    setting(Id::Strict, "strict", Some("NARPUSH_STRICT"), Kind::Switch),
    Setting {
        short: Some('q'),
        ..setting(Id::Quiet, "quiet", None, Kind::Switch)
    },
    Setting {
        short: Some('v'),
        ..setting(Id::Verbose, "verbose", None, Kind::Switch)
    },
    setting(
        Id::StateDir,
        "state-dir",
        Some("NARPUSH_STATE_DIR"),
        Kind::Path,
    ),
    setting(Id::Wait, "wait", Some("NARPUSH_WAIT"), Kind::Switch),
    setting(Id::Exclude, "exclude", None, Kind::Texts),
    setting(
        Id::GiveUpAfter,
        "give-up-after",
        Some("NARPUSH_GIVE_UP_AFTER"),
        Kind::Duration,
    ),
    Setting {
        long: false,
        ..setting(
            Id::SpawnPusher,
            "spawn-pusher",
            Some("NARPUSH_SPAWN_PUSHER"),
            Kind::Switch,
        )
    },
    setting(Id::UploadLog, "upload-log", None, Kind::Switch),
    Setting {
        in_file: false,
        ..setting(Id::Config, "config", Some("NARPUSH_CONFIG"), Kind::Path)
    },
];

/// The setting `id`.
pub(crate) fn get(id: Id) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.id == id)
        .expect("every setting is in SETTINGS")
}

/// The environment variable of `id`.
pub(crate) fn env_name(id: Id) -> &'static str {
    get(id)
        .env
        .expect("only settings with a variable are looked up")
}

/// The setting whose long option is `--name`.
pub(crate) fn by_long(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.long && s.name == name)
}

/// The setting whose short option is `-c`.
pub(crate) fn by_short(c: char) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.short == Some(c))
}

/// The setting the config-file key `key` sets.
pub(crate) fn by_key(key: &str) -> Option<&'static Setting> {
    SETTINGS
        .iter()
        .find(|s| s.in_file && (s.name == key || s.alias == Some(key)))
}

/// The config-file keys, for the unknown-key error: `to, key-file, …`.
pub(crate) fn known_keys() -> String {
    SETTINGS
        .iter()
        .filter(|s| s.in_file)
        .map(|s| match s.alias {
            Some(a) => format!("{} (or {a})", s.name),
            None => s.name.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Setting {
    /// `--name`, as messages spell the option.
    pub(crate) fn option(&self) -> String {
        format!("--{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `Id`, through a match the compiler checks is exhaustive.
    fn all_ids() -> Vec<Id> {
        let mut ids = Vec::new();
        let mut id = Some(Id::To);
        while let Some(i) = id {
            ids.push(i);
            id = match i {
                Id::To => Some(Id::KeyFile),
                Id::KeyFile => Some(Id::CredentialsFile),
                Id::CredentialsFile => Some(Id::Compression),
                Id::Compression => Some(Id::CompressionLevel),
                Id::CompressionLevel => Some(Id::Jobs),
                Id::Jobs => Some(Id::CompressionThreads),
                Id::CompressionThreads => Some(Id::UpstreamKey),
                Id::UpstreamKey => Some(Id::Deps),
                Id::Deps => Some(Id::NoDeps),
                Id::NoDeps => Some(Id::Closure),
                Id::Closure => Some(Id::Strict),
                Id::Strict => Some(Id::Quiet),
                Id::Quiet => Some(Id::Verbose),
                Id::Verbose => Some(Id::StateDir),
                Id::StateDir => Some(Id::Wait),
                Id::Wait => Some(Id::Exclude),
                Id::Exclude => Some(Id::GiveUpAfter),
                Id::GiveUpAfter => Some(Id::SpawnPusher),
                Id::SpawnPusher => Some(Id::UploadLog),
                Id::UploadLog => Some(Id::Config),
                Id::Config => None,
            };
        }
        ids
    }

    #[test]
    fn every_setting_once_with_unique_names() {
        let ids = all_ids();
        assert_eq!(SETTINGS.len(), ids.len());
        for id in ids {
            assert_eq!(SETTINGS.iter().filter(|s| s.id == id).count(), 1, "{id:?}");
        }
        for (i, a) in SETTINGS.iter().enumerate() {
            for b in &SETTINGS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert!(a.env.is_none() || a.env != b.env, "{}", a.name);
                assert!(a.short.is_none() || a.short != b.short, "{}", a.name);
                assert!(a.alias.is_none() || a.alias != Some(b.name), "{}", a.name);
            }
            if let Some(e) = a.env {
                assert!(e.starts_with("NARPUSH_"), "{e}");
                assert_eq!(
                    e,
                    format!("NARPUSH_{}", a.name.to_uppercase().replace('-', "_"))
                );
            }
        }
    }

    #[test]
    fn lookups_and_known_keys() {
        assert_eq!(by_long("jobs").unwrap().id, Id::Jobs);
        assert!(by_long("deps").is_none(), "deps is a config-file key only");
        assert!(by_long("spawn-pusher").is_none());
        assert_eq!(by_short('q').unwrap().id, Id::Quiet);
        assert_eq!(by_key("upstream-keys").unwrap().id, Id::UpstreamKey);
        assert!(
            by_key("config").is_none(),
            "the config file cannot name another"
        );
        assert_eq!(env_name(Id::GiveUpAfter), "NARPUSH_GIVE_UP_AFTER");
        assert_eq!(get(Id::StateDir).option(), "--state-dir");
        assert_eq!(
            known_keys(),
            "to, key-file, credentials-file, compression, compression-level, jobs, \
compression-threads, upstream-key (or upstream-keys), deps, no-deps, closure, strict, quiet, verbose, state-dir, \
wait, exclude, give-up-after, spawn-pusher, upload-log"
        );
    }
}
