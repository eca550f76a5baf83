//! Store paths: `<store dir>/<32 nix32 chars>-<name>`, parsed and validated the way
//! Nix does (hash-part alphabet, name characters and length). The hash part names
//! the `.narinfo` in a binary cache.

use std::fmt;

/// The default store directory.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";
/// Length of the hash part in characters (20 bytes in nix32).
pub const HASH_LEN: usize = 32;
/// Longest name Nix allows.
pub const MAX_NAME_LEN: usize = 211;

/// A validated store path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct StorePath {
    /// The base name: `<hash>-<name>`.
    base: String,
}

/// Why a string is not a store path.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    NotInStore(String),
    InsideStorePath { given: String, store_path: String },
    BadHash(String),
    BadName(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotInStore(p) => write!(f, "'{p}' is not in the Nix store"),
            ParseError::InsideStorePath { given, store_path } => write!(
                f,
                "'{given}' is inside a store path; give the store path itself ({store_path})"
            ),
            ParseError::BadHash(p) => write!(
                f,
                "'{p}' is not a valid store path: expected <32 nix32 characters>-<name> after the store directory"
            ),
            ParseError::BadName(p) => write!(
                f,
                "'{p}' is not a valid store path: its name may only use A-Z a-z 0-9 +-._?= \
                 (1 to {MAX_NAME_LEN} characters)"
            ),
        }
    }
}

impl StorePath {
    /// Parse a base name `<hash>-<name>`.
    pub fn from_base_name(base: &str) -> Result<StorePath, ParseError> {
        let bytes = base.as_bytes();
        if bytes.len() < HASH_LEN + 2 || bytes[HASH_LEN] != b'-' {
            return Err(ParseError::BadHash(base.to_string()));
        }
        let (hash, name) = (&base[..HASH_LEN], &base[HASH_LEN + 1..]);
        if !crate::nix::nixbase32::is_nix32(hash) {
            return Err(ParseError::BadHash(base.to_string()));
        }
        if !valid_name(name) {
            return Err(ParseError::BadName(base.to_string()));
        }
        Ok(StorePath {
            base: base.to_string(),
        })
    }

    /// Parse a full path `<store_dir>/<hash>-<name>`.
    pub fn from_full_path(store_dir: &str, path: &str) -> Result<StorePath, ParseError> {
        let rest = path
            .strip_prefix(store_dir)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| ParseError::NotInStore(path.to_string()))?;
        let rest = rest.trim_end_matches('/');
        if let Some((first, _)) = rest.split_once('/') {
            return Err(ParseError::InsideStorePath {
                given: path.to_string(),
                store_path: format!("{store_dir}/{first}"),
            });
        }
        // Errors name what was given, not just its last component.
        StorePath::from_base_name(rest).map_err(|e| match e {
            ParseError::BadHash(_) => ParseError::BadHash(path.to_string()),
            ParseError::BadName(_) => ParseError::BadName(path.to_string()),
            other => other,
        })
    }

    pub fn base_name(&self) -> &str {
        &self.base
    }

    pub fn hash_part(&self) -> &str {
        &self.base[..HASH_LEN]
    }

    pub fn name(&self) -> &str {
        &self.base[HASH_LEN + 1..]
    }

    /// The full path in `store_dir`.
    pub fn to_full(&self, store_dir: &str) -> String {
        format!("{store_dir}/{}", self.base)
    }
}

/// Name rules: 1..=211 characters of `[A-Za-z0-9+-._?=]`, not `.`/`..` or starting
/// with `.-`/`..-` (the newer Nix rules; every 2.8 name also passes them).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c))
        && name != "."
        && name != ".."
        && !name.starts_with(".-")
        && !name.starts_with("..-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_path() {
        let p = StorePath::from_full_path(
            "/nix/store",
            "/nix/store/ril7ajyqqj2vcnc4kl7cch6rsc18h9ff-single.txt",
        )
        .unwrap();
        assert_eq!(p.hash_part(), "ril7ajyqqj2vcnc4kl7cch6rsc18h9ff");
        assert_eq!(p.name(), "single.txt");
        assert_eq!(
            p.to_full("/nix/store"),
            "/nix/store/ril7ajyqqj2vcnc4kl7cch6rsc18h9ff-single.txt"
        );
    }

    #[test]
    fn rejects() {
        let sd = "/nix/store";
        assert!(matches!(
            StorePath::from_full_path(sd, "/tmp/x"),
            Err(ParseError::NotInStore(_))
        ));
        assert!(matches!(
            StorePath::from_full_path(sd, "/nix/store/ril7ajyqqj2vcnc4kl7cch6rsc18h9ff-foo/bin"),
            Err(ParseError::InsideStorePath { .. })
        ));
        assert!(matches!(
            StorePath::from_full_path(sd, "/nix/store/ril7ajyqqj2vcnc4kl7cch6rsc18h9fe-foo"),
            Err(ParseError::BadHash(_))
        ));
        assert!(matches!(
            StorePath::from_full_path(sd, "/nix/store/ril7ajyqqj2vcnc4kl7cch6rsc18h9ff-f oo"),
            Err(ParseError::BadName(_))
        ));
        assert!(StorePath::from_base_name("short-x").is_err());
        // The message names what the user typed, not its last component.
        let e = StorePath::from_full_path(sd, "/nix/store/abc").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("'/nix/store/abc' is not a valid store path"),
            "{e}"
        );
        let e = StorePath::from_full_path(sd, "/nix/store/ril7ajyqqj2vcnc4kl7cch6rsc18h9ff-f oo")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("'/nix/store/ril7ajyqqj2vcnc4kl7cch6rsc18h9ff-f oo'"),
            "{e}"
        );
        assert!(!valid_name(&"a".repeat(212)));
        assert!(valid_name(&"a".repeat(211)));
        assert!(!valid_name(".."));
    }
}
