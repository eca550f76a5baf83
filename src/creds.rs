//! S3 credentials, found the way AWS tools find them: an explicit credentials file
//! (`--credentials-file`, for the post-build hook that runs as root with a minimal
//! environment; either an AWS INI file or a shell/systemd env file), then the
//! `AWS_*` environment variables, then the named profile in the shared credentials
//! file and the config file. Resolution is a pure function of an env-lookup closure,
//! the home directory and the files it reads; secrets never reach an error, `Debug`
//! or `Display`.

use crate::error::Error;
pub use crate::s3::Credentials;
use std::path::{Path, PathBuf};

/// The environment variables [`resolve`] consults, and only these: `config` hands
/// it a snapshot of them.
pub const VARIABLES: &[&str] = &[
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
];

/// What `resolve` is asked for.
#[derive(Clone, Debug, Default)]
pub struct Request<'a> {
    /// `--credentials-file`, if given.
    pub credentials_file: Option<&'a Path>,
    /// The `profile=` store URL parameter, if given.
    pub profile: Option<&'a str>,
}

/// Find credentials. `env` looks up an environment variable; `home` is the home
/// directory (`None` when unknown).
pub fn resolve(
    req: &Request<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<Credentials, Error> {
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    let mut looked: Vec<String> = Vec::new();

    // 1. An explicit file.
    match req.credentials_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::io("read credentials file", path, e))?;
            let profile = req
                .profile
                .map(str::to_string)
                .or_else(|| env("AWS_PROFILE"));
            let profile = profile.as_deref().unwrap_or("default");
            return parse_credentials_file(&text, path, profile)?.ok_or_else(|| {
                Error::Usage(format!(
                    "no S3 credentials in {}: expected AWS_ACCESS_KEY_ID=/AWS_SECRET_ACCESS_KEY= lines \
                     or an [{profile}] section with aws_access_key_id/aws_secret_access_key",
                    path.display()
                ))
            });
        }
        None => looked.push("--credentials-file (not given)".into()),
    }

    // 2. The environment (like Nix, not when a profile was named in the URL).
    if req.profile.is_none() {
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                return Ok(Credentials {
                    access_key_id: id,
                    secret_access_key: secret,
                    session_token: env("AWS_SESSION_TOKEN"),
                })
            }
            (Some(_), None) => {
                looked.push("AWS_ACCESS_KEY_ID (set, but AWS_SECRET_ACCESS_KEY unset)".into())
            }
            (None, _) => looked.push("AWS_ACCESS_KEY_ID (unset)".into()),
        }
    } else if env("AWS_ACCESS_KEY_ID").is_some() {
        looked.push("AWS_ACCESS_KEY_ID (set, but not used: the store URL names a profile)".into());
    } else {
        looked.push("AWS_ACCESS_KEY_ID (unset)".into());
    }

    // 3. The profile in the shared files.
    let profile = req
        .profile
        .map(str::to_string)
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".to_string());
    let files: [(Option<PathBuf>, bool); 2] = [
        (
            env("AWS_SHARED_CREDENTIALS_FILE")
                .map(PathBuf::from)
                .or_else(|| home.map(|h| h.join(".aws/credentials"))),
            false,
        ),
        (
            env("AWS_CONFIG_FILE")
                .map(PathBuf::from)
                .or_else(|| home.map(|h| h.join(".aws/config"))),
            true,
        ),
    ];
    for (path, is_config) in files {
        let Some(path) = path else {
            looked.push(format!(
                "~/.aws/{} (no home directory)",
                if is_config { "config" } else { "credentials" }
            ));
            continue;
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                looked.push(format!("{} (no such file)", path.display()));
                continue;
            }
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let sections = parse_ini(&text, &path)?;
        let wanted = if is_config && profile != "default" {
            format!("profile {profile}")
        } else {
            profile.clone()
        };
        let found = sections
            .iter()
            .find(|s| s.name == wanted || (is_config && s.name == profile));
        match found.map(|s| s.credentials(&path)) {
            Some(Ok(Some(c))) => return Ok(c),
            Some(Err(e)) => return Err(e),
            Some(Ok(None)) => looked.push(format!(
                "{} (profile '{profile}' has no aws_access_key_id/aws_secret_access_key)",
                path.display()
            )),
            None => looked.push(format!("{} (no profile '{profile}')", path.display())),
        }
    }
    Err(Error::Usage(format!(
        "no S3 credentials for profile '{profile}': looked in {}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY \
         or pass --credentials-file",
        looked.join(", ")
    )))
}

/// One `[section]` of an INI file, keys lowercased, with line numbers.
#[derive(Debug)]
struct Section {
    name: String,
    entries: Vec<(String, String, usize)>,
}

impl Section {
    fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v.as_str())
    }

    fn credentials(&self, path: &Path) -> Result<Option<Credentials>, Error> {
        match (
            self.get("aws_access_key_id"),
            self.get("aws_secret_access_key"),
        ) {
            (Some(id), Some(secret)) => Ok(Some(Credentials {
                access_key_id: id.to_string(),
                secret_access_key: secret.to_string(),
                session_token: self.get("aws_session_token").map(str::to_string),
            })),
            (Some(_), None) | (None, Some(_)) => Err(Error::Usage(format!(
                "{}: profile [{}] has only one of aws_access_key_id and aws_secret_access_key",
                path.display(),
                self.name
            ))),
            (None, None) => Ok(None),
        }
    }
}

/// Parse an AWS INI file (`[name]` sections, `key = value` lines, `#`/`;` comments).
/// Indented lines (nested settings such as `s3 =` blocks) are skipped. Errors name
/// the file and line, never the line's content (it may be a secret).
fn parse_ini(text: &str, path: &Path) -> Result<Vec<Section>, Error> {
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        if raw.starts_with([' ', '\t']) {
            continue;
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.strip_suffix(']').ok_or_else(|| {
                Error::Usage(format!(
                    "{} line {lineno}: a section header must look like [name]",
                    path.display()
                ))
            })?;
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            sections.push(Section {
                name,
                entries: Vec::new(),
            });
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(Error::Usage(format!(
                "{} line {lineno}: expected 'key = value' or '[section]'",
                path.display()
            )));
        };
        let Some(section) = sections.last_mut() else {
            return Err(Error::Usage(format!(
                "{} line {lineno}: a setting before any [section]",
                path.display()
            )));
        };
        section
            .entries
            .push((k.trim().to_ascii_lowercase(), v.trim().to_string(), lineno));
    }
    Ok(sections)
}

/// Parse an explicit credentials file: an AWS INI file (the `profile` section, else
/// the only one) or a shell/systemd env file. `Ok(None)` when it holds no keys.
pub fn parse_credentials_file(
    text: &str,
    path: &Path,
    profile: &str,
) -> Result<Option<Credentials>, Error> {
    let is_ini = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .is_some_and(|l| l.starts_with('['));
    if is_ini {
        let sections = parse_ini(text, path)?;
        let section = sections
            .iter()
            .find(|s| s.name == profile || s.name == format!("profile {profile}"))
            .or(if sections.len() == 1 {
                sections.first()
            } else {
                None
            });
        return match section {
            Some(s) => s.credentials(path),
            None => Ok(None),
        };
    }
    let vars = parse_env_file(text, path)?;
    let get = |k: &str| {
        vars.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok(Some(Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: get("AWS_SESSION_TOKEN"),
        })),
        (Some(_), None) | (None, Some(_)) => Err(Error::Usage(format!(
            "{}: has only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            path.display()
        ))),
        (None, None) => Ok(None),
    }
}

/// `NAME=value` lines with optional `export `, optional single or double quotes and
/// `#` comments (whole-line, or after an unquoted value and a space).
fn parse_env_file(text: &str, path: &Path) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let bad = || {
            Error::Usage(format!(
                "{} line {lineno}: expected NAME=value (optionally 'export NAME=value')",
                path.display()
            ))
        };
        let (name, value) = line.split_once('=').ok_or_else(bad)?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad());
        }
        let value = value.trim();
        let value = if let Some(rest) = value.strip_prefix('"') {
            rest.strip_suffix('"').ok_or_else(|| {
                Error::Usage(format!(
                    "{} line {lineno}: unterminated double quote",
                    path.display()
                ))
            })?
        } else if let Some(rest) = value.strip_prefix('\'') {
            rest.strip_suffix('\'').ok_or_else(|| {
                Error::Usage(format!(
                    "{} line {lineno}: unterminated single quote",
                    path.display()
                ))
            })?
        } else {
            value.split(" #").next().unwrap_or(value).trim_end()
        };
        out.push((name.to_string(), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn resolve_asks_for_no_variable_but_those_listed() {
        let asked = std::sync::Mutex::new(Vec::new());
        let env = |k: &str| {
            asked.lock().unwrap().push(k.to_string());
            None
        };
        let req = Request {
            credentials_file: None,
            profile: Some("p"),
        };
        let _ = resolve(&req, &env, Some(Path::new("/nonexistent-home")));
        let asked = asked.into_inner().unwrap();
        assert!(!asked.is_empty());
        for k in &asked {
            assert!(VARIABLES.contains(&k.as_str()), "{k} is not in VARIABLES");
        }
    }

    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Dir {
            let p =
                std::env::temp_dir().join(format!("narpush-creds-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(p.join(".aws")).unwrap();
            Dir(p)
        }
        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.0.join(rel);
            std::fs::write(&p, text).unwrap();
            p
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn msg(r: Result<Credentials, Error>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "SECRETSECRET".into(),
            session_token: Some("TOKENTOKEN".into()),
        };
        let d = format!("{c:?}");
        assert!(d.contains("AKID"));
        assert!(!d.contains("SECRETSECRET") && !d.contains("TOKENTOKEN"));
    }

    #[test]
    fn env_vars() {
        let d = Dir::new("env");
        let e = env(&[
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SECRET_ACCESS_KEY", "sk"),
            ("AWS_SESSION_TOKEN", "tok"),
        ]);
        let c = resolve(&Request::default(), &e, Some(&d.0)).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("id", "sk")
        );
        assert_eq!(c.session_token.as_deref(), Some("tok"));
    }

    #[test]
    fn missing_lists_where_it_looked() {
        let d = Dir::new("missing");
        let e = env(&[]);
        let req = Request {
            credentials_file: None,
            profile: Some("nixbuilder"),
        };
        let m = msg(resolve(&req, &e, Some(&d.0)));
        let home = d.0.display();
        assert_eq!(
            m,
            format!(
                "no S3 credentials for profile 'nixbuilder': looked in --credentials-file (not given), \
                 AWS_ACCESS_KEY_ID (unset), {home}/.aws/credentials (no such file), \
                 {home}/.aws/config (no such file); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or pass --credentials-file"
            )
        );
        let m = msg(resolve(&Request::default(), &e, Some(&d.0)));
        assert!(
            m.contains("profile 'default'") && m.contains("AWS_ACCESS_KEY_ID (unset)"),
            "{m}"
        );
    }

    #[test]
    fn profiles_from_shared_files() {
        let d = Dir::new("profiles");
        d.write(
            ".aws/credentials",
            "# comment\n[default]\naws_access_key_id = defid\naws_secret_access_key = defsk\n\n\
             [nixbuilder]\naws_access_key_id=nbid\naws_secret_access_key=nbsk\naws_session_token=nbtok\n",
        );
        d.write(
            ".aws/config",
            "[profile other]\nregion = x\naws_access_key_id = oid\naws_secret_access_key = osk\n",
        );
        let e = env(&[]);
        let get = |p: Option<&str>, e: &dyn Fn(&str) -> Option<String>| {
            resolve(
                &Request {
                    credentials_file: None,
                    profile: p,
                },
                e,
                Some(&d.0),
            )
            .unwrap()
        };
        assert_eq!(get(None, &e).access_key_id, "defid");
        let nb = get(Some("nixbuilder"), &e);
        assert_eq!(
            (nb.access_key_id.as_str(), nb.session_token.as_deref()),
            ("nbid", Some("nbtok"))
        );
        assert_eq!(get(Some("other"), &e).access_key_id, "oid");
        // AWS_PROFILE picks the profile when the URL does not.
        assert_eq!(
            get(None, &env(&[("AWS_PROFILE", "nixbuilder")])).access_key_id,
            "nbid"
        );
        // Env vars beat the default profile, but not an explicitly named one.
        let e2 = env(&[
            ("AWS_ACCESS_KEY_ID", "envid"),
            ("AWS_SECRET_ACCESS_KEY", "envsk"),
        ]);
        assert_eq!(get(None, &e2).access_key_id, "envid");
        assert_eq!(get(Some("nixbuilder"), &e2).access_key_id, "nbid");
        // AWS_SHARED_CREDENTIALS_FILE moves the file.
        let alt = d.write(
            "alt",
            "[default]\naws_access_key_id=altid\naws_secret_access_key=altsk\n",
        );
        let e3 = env(&[("AWS_SHARED_CREDENTIALS_FILE", alt.to_str().unwrap())]);
        assert_eq!(get(None, &e3).access_key_id, "altid");
        // A named profile that exists nowhere.
        let m = msg(resolve(
            &Request {
                credentials_file: None,
                profile: Some("nope"),
            },
            &e,
            Some(&d.0),
        ));
        assert!(m.contains("(no profile 'nope')"), "{m}");
    }

    #[test]
    fn explicit_file_env_and_ini_forms() {
        let d = Dir::new("explicit");
        let e = env(&[
            ("AWS_ACCESS_KEY_ID", "envid"),
            ("AWS_SECRET_ACCESS_KEY", "envsk"),
        ]);
        let envfile = d.write(
            "s3.env",
            "# systemd EnvironmentFile\nexport AWS_ACCESS_KEY_ID=\"fid\"\nAWS_SECRET_ACCESS_KEY='f sk'\nOTHER=1 # note\n",
        );
        let req = Request {
            credentials_file: Some(&envfile),
            profile: None,
        };
        let c = resolve(&req, &e, Some(&d.0)).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("fid", "f sk")
        );
        let ini = d.write(
            "creds.ini",
            "[nixbuilder]\naws_access_key_id = iid\naws_secret_access_key = isk\n",
        );
        let c = resolve(
            &Request {
                credentials_file: Some(&ini),
                profile: None,
            },
            &e,
            Some(&d.0),
        )
        .unwrap();
        assert_eq!(c.access_key_id, "iid", "the only section is used");
        let c = resolve(
            &Request {
                credentials_file: Some(&ini),
                profile: Some("nixbuilder"),
            },
            &e,
            Some(&d.0),
        )
        .unwrap();
        assert_eq!(c.access_key_id, "iid");
    }

    #[test]
    fn malformed_files_name_file_and_line_not_secret() {
        let d = Dir::new("malformed");
        let e = env(&[]);
        let bad = d.write("bad.env", "AWS_ACCESS_KEY_ID=x\nthis is not SECRETVALUE\n");
        let m = msg(resolve(
            &Request {
                credentials_file: Some(&bad),
                profile: None,
            },
            &e,
            Some(&d.0),
        ));
        assert!(m.contains("bad.env line 2"), "{m}");
        assert!(!m.contains("SECRETVALUE"), "{m}");
        let half = d.write("half.env", "AWS_SECRET_ACCESS_KEY=SECRETVALUE\n");
        let m = msg(resolve(
            &Request {
                credentials_file: Some(&half),
                profile: None,
            },
            &e,
            Some(&d.0),
        ));
        assert!(
            m.contains("only one of") && !m.contains("SECRETVALUE"),
            "{m}"
        );
        d.write(
            ".aws/credentials",
            "[default]\naws_access_key_id = a\nSECRETVALUE\n",
        );
        let m = msg(resolve(&Request::default(), &e, Some(&d.0)));
        assert!(
            m.contains("credentials line 3") && !m.contains("SECRETVALUE"),
            "{m}"
        );
        let missing = d.0.join("nope.env");
        let m = msg(resolve(
            &Request {
                credentials_file: Some(&missing),
                profile: None,
            },
            &e,
            Some(&d.0),
        ));
        assert!(m.contains("nope.env"), "{m}");
        let empty = d.write("empty.env", "# nothing\n");
        let m = msg(resolve(
            &Request {
                credentials_file: Some(&empty),
                profile: None,
            },
            &e,
            Some(&d.0),
        ));
        assert!(m.starts_with("no S3 credentials in"), "{m}");
    }
}
