//! What the local Nix knows about a store path: NAR hash and size, references,
//! deriver, signatures, content address. The pure core is
//! [`parse_path_info_json`], which reads `nix path-info --json` as printed by every
//! Nix version so far (2.8's array, 2.19's object keyed by path, 2.23's nulls, and
//! 2.33/2.35's `--json-format 1|2|3`); `tests/fixtures/path-info/` holds one file per
//! shape and the unit tests below parse each of them. The thin shell is [`LocalNix`],
//! which runs `nix`/`nix-store` as child processes, and [`resolve_user_path`], which
//! turns what a user typed (`./result`, a trailing slash) into a store path.
//!
//! Why `nix path-info --json` and not `nix-store --query`: one call gives the hash,
//! size, references, deriver, signatures and CA of a whole closure, where
//! `nix-store -q` needs one call per field and has no way to print signatures or CA.

use std::collections::HashSet;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use crate::encoding::{base64_decode, hex_decode};
use crate::error::{Error, Result};
use crate::nixbase32;
use crate::store_path::{StorePath, DEFAULT_STORE_DIR};
use serde_json::{Map, Value};

/// Most paths passed to one child process, to stay well under `ARG_MAX`
/// (1000 store paths are about 80 KB of arguments).
const BATCH: usize = 1000;
/// Most symlinks [`resolve_user_path`] follows (Linux's own limit).
const MAX_SYMLINK_HOPS: usize = 40;
/// Newest `nix path-info --json-format` version understood here.
const MAX_JSON_VERSION: u64 = 3;

/// Metadata of one valid store path, as the local Nix store records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    /// SHA-256 of the NAR serialisation.
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    /// Sorted; may include the path itself.
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    /// `keyname:base64sig`, as Nix stores them.
    pub sigs: Vec<String>,
    /// The narinfo `CA:` form, e.g. `fixed:r:sha256:<nix32>` or `text:sha256:<nix32>`.
    pub ca: Option<String>,
    pub ultimate: bool,
}

/// Hash algorithms Nix knows, with their digest sizes.
fn algo_size(algo: &str) -> Option<usize> {
    match algo {
        "md5" => Some(16),
        "sha1" => Some(20),
        "sha256" => Some(32),
        "sha512" => Some(64),
        _ => None,
    }
}

/// Decode a digest of `size` bytes spelled in hex, nix32 or base64, chosen by
/// length as Nix does (`Hash::Hash(rest, type, isSRI)`).
fn decode_digest(s: &str, size: usize, sri: bool) -> Option<Vec<u8>> {
    let b64_len = size.div_ceil(3) * 4;
    let bytes = if sri {
        base64_decode(s)?
    } else if s.len() == size * 2 {
        hex_decode(s)?
    } else if s.len() == nixbase32::encoded_len(size) {
        nixbase32::decode(s, size)?
    } else if s.len() == b64_len {
        base64_decode(s)?
    } else {
        return None;
    };
    (bytes.len() == size).then_some(bytes)
}

/// Parse a hash of any algorithm with its algorithm named: `algo-<base64>` (SRI) or
/// `algo:<hex|nix32|base64>`.
fn parse_typed_hash(s: &str) -> Option<(&str, Vec<u8>)> {
    let (algo, rest, sri) = match (s.split_once(':'), s.split_once('-')) {
        (Some((a, r)), _) if algo_size(a).is_some() => (a, r, false),
        (_, Some((a, r))) if algo_size(a).is_some() => (a, r, true),
        _ => return None,
    };
    Some((algo, decode_digest(rest, algo_size(algo)?, sri)?))
}

/// A SHA-256 in any spelling of nix-formats.md §2.3: SRI `sha256-<base64>`,
/// `sha256:` followed by nix32, hex or base64, or a bare hex/nix32/base64 digest.
pub fn parse_hash_any(s: &str) -> Option<[u8; 32]> {
    let bytes = if s.contains(':') || s.contains('-') {
        match parse_typed_hash(s)? {
            ("sha256", b) => b,
            _ => return None,
        }
    } else {
        decode_digest(s, 32, false)?
    };
    bytes.try_into().ok()
}

/// The member `key` of an object, a `null` counting as absent (Nix 2.23+ writes
/// `null` for fields older versions leave out); `None` for a non-object too.
fn get_non_null<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|m| !m.is_null())
}

/// A short name of the kind of a JSON value, for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A store path in path-info JSON: full (`/nix/store/…`, up to 2.33 v1) or a base
/// name (v2 and later).
fn parse_json_path(s: &str, store_dir: &str) -> Result<StorePath, String> {
    let r = if s.starts_with('/') {
        let dir = Path::new(s).parent().and_then(Path::to_str).unwrap_or(s);
        check_store_dir(dir, store_dir)?;
        StorePath::from_full_path(store_dir, s)
    } else {
        StorePath::from_base_name(s)
    };
    r.map_err(|e| e.to_string())
}

/// Structured CA (`--json-format 2`+) to the narinfo string form.
fn ca_from_object(v: &Value) -> Result<String, String> {
    let method = v
        .get("method")
        .and_then(Value::as_str)
        .ok_or("\"ca\" has no \"method\" string")?;
    let hash = v.get("hash").ok_or("\"ca\" has no \"hash\"")?;
    let (algo, bytes) =
        hash_value(hash).ok_or_else(|| "\"ca\" has an unreadable \"hash\"".to_string())?;
    let prefix = match method {
        "nar" => "fixed:r:",
        "flat" => "fixed:",
        "text" => "text:",
        "git" => "fixed:git:",
        other => return Err(format!("unknown content-address method \"{other}\"")),
    };
    Ok(format!("{prefix}{algo}:{}", nixbase32::encode(&bytes)))
}

/// A hash as a JSON value: a string in any prefixed spelling, or an object
/// `{"algorithm": …, "hash": …}` (with an optional "format") as some newer Nix
/// JSON writes them.
fn hash_value(v: &Value) -> Option<(String, Vec<u8>)> {
    match v {
        Value::String(s) => parse_typed_hash(s).map(|(a, b)| (a.to_string(), b)),
        Value::Object(_) => {
            let algo = v.get("algorithm")?.as_str()?;
            let h = v.get("hash")?.as_str()?;
            if let Some((a, b)) = parse_typed_hash(h) {
                return (a == algo).then(|| (algo.to_string(), b));
            }
            // Bare digest: hex, nix32 or base64, told apart by length.
            Some((algo.to_string(), decode_digest(h, algo_size(algo)?, false)?))
        }
        _ => None,
    }
}

/// One path-info object (any version) into a [`PathInfo`] for `path`.
fn info_from_object(path: StorePath, v: &Value, store_dir: &str) -> Result<PathInfo, String> {
    if !matches!(v, Value::Object(_)) {
        return Err(format!("expected an object, found {}", kind(v)));
    }
    if let Some(ver) = get_non_null(v, "version") {
        check_version(ver)?;
    }
    if let Some(sd) = get_non_null(v, "storeDir").and_then(Value::as_str) {
        check_store_dir(sd, store_dir)?;
    }
    let nar_hash = match get_non_null(v, "narHash").ok_or("no \"narHash\"")? {
        Value::String(s) => parse_hash_any(s),
        other => match hash_value(other) {
            Some((a, b)) if a == "sha256" => b.try_into().ok(),
            _ => None,
        },
    }
    .ok_or("\"narHash\" is not a SHA-256 hash")?;
    let nar_size = get_non_null(v, "narSize")
        .ok_or("no \"narSize\"")?
        .as_u64()
        .ok_or("\"narSize\" is not a non-negative integer")?;
    let mut references = Vec::new();
    if let Some(refs) = get_non_null(v, "references") {
        for r in refs.as_array().ok_or("\"references\" is not an array")? {
            let s = r.as_str().ok_or("a reference is not a string")?;
            references.push(parse_json_path(s, store_dir)?);
        }
    }
    references.sort();
    let deriver = match get_non_null(v, "deriver") {
        None => None,
        Some(d) => Some(parse_json_path(
            d.as_str().ok_or("\"deriver\" is not a string")?,
            store_dir,
        )?),
    };
    let mut sigs = Vec::new();
    if let Some(list) = get_non_null(v, "signatures") {
        for s in list.as_array().ok_or("\"signatures\" is not an array")? {
            match s {
                Value::String(s) => sigs.push(s.clone()),
                Value::Object(_) => {
                    let key = s.get("keyName").and_then(Value::as_str);
                    let sig = s.get("sig").and_then(Value::as_str);
                    match (key, sig) {
                        (Some(k), Some(g)) => sigs.push(format!("{k}:{g}")),
                        _ => return Err("a signature object lacks \"keyName\" or \"sig\"".into()),
                    }
                }
                other => return Err(format!("a signature is {}", kind(other))),
            }
        }
    }
    let ca = match get_non_null(v, "ca") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(o @ Value::Object(_)) => Some(ca_from_object(o)?),
        Some(other) => return Err(format!("\"ca\" is {}", kind(other))),
    };
    let ultimate = match get_non_null(v, "ultimate") {
        None => false,
        Some(u) => u.as_bool().ok_or("\"ultimate\" is not a boolean")?,
    };
    Ok(PathInfo {
        path,
        nar_hash,
        nar_size,
        references,
        deriver,
        sigs,
        ca,
        ultimate,
    })
}

fn check_version(v: &Value) -> Result<(), String> {
    match v.as_u64() {
        Some(n) if (1..=MAX_JSON_VERSION).contains(&n) => Ok(()),
        _ => Err(format!(
            "JSON format version {} is newer than narpush understands (1 to {MAX_JSON_VERSION}); \
             upgrade narpush",
            match v {
                Value::Number(n) => n.to_string(),
                _ => "?".to_string(),
            }
        )),
    }
}

fn check_store_dir(reported: &str, ours: &str) -> Result<(), String> {
    if reported.trim_end_matches('/') == ours {
        Ok(())
    } else {
        Err(format!(
            "nix reports store directory {reported} but narpush uses {ours}; set NIX_STORE_DIR to match"
        ))
    }
}

/// Parse `nix path-info --json` output of any Nix version (2.8 through 2.35's
/// `--json-format 3`). Returns the valid paths' infos in output order, and the full
/// paths Nix reported as invalid (2.8 `{"valid": false}`, later `null`).
pub fn parse_path_info_json(
    text: &str,
    store_dir: &str,
) -> Result<(Vec<PathInfo>, Vec<String>), Error> {
    let fail = |m: String| Error::Nix(format!("cannot read `nix path-info --json` output: {m}"));
    // Nix writes objects with sorted keys (nlohmann::json's std::map), so serde_json's
    // sorted map keeps Nix's order.
    let doc: Value = serde_json::from_str(text).map_err(|e| fail(format!("invalid JSON: {e}")))?;
    let mut infos = Vec::new();
    let mut invalid = Vec::new();
    match &doc {
        // Nix 2.8 to 2.18: [{"path": …, …}, {"path": …, "valid": false}]
        Value::Array(items) => {
            for item in items {
                let p = item
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| fail("an array element has no \"path\" string".into()))?;
                let sp = parse_json_path(p, store_dir).map_err(&fail)?;
                if item.get("valid").and_then(Value::as_bool) == Some(false) {
                    invalid.push(sp.to_full(store_dir));
                } else {
                    infos.push(
                        info_from_object(sp, item, store_dir)
                            .map_err(|e| fail(format!("{p}: {e}")))?,
                    );
                }
            }
        }
        // 2.33+ --json-format 2/3: {"version": n, "storeDir": …, "info": {<base>: …}}
        Value::Object(_) if doc.get("info").is_some() => {
            if let Some(ver) = get_non_null(&doc, "version") {
                check_version(ver).map_err(fail)?;
            }
            if let Some(sd) = get_non_null(&doc, "storeDir").and_then(Value::as_str) {
                check_store_dir(sd, store_dir).map_err(fail)?;
            }
            let info = doc
                .get("info")
                .and_then(Value::as_object)
                .ok_or_else(|| fail("\"info\" is not an object".into()))?;
            keyed(info, store_dir, &mut infos, &mut invalid).map_err(fail)?;
        }
        // 2.19 to 2.33 --json-format 1: {"/nix/store/…": {…} | null}
        Value::Object(members) => {
            keyed(members, store_dir, &mut infos, &mut invalid).map_err(fail)?
        }
        other => {
            return Err(fail(format!(
                "expected an array or an object, found {}",
                kind(other)
            )))
        }
    }
    Ok((infos, invalid))
}

fn keyed(
    members: &Map<String, Value>,
    store_dir: &str,
    infos: &mut Vec<PathInfo>,
    invalid: &mut Vec<String>,
) -> Result<(), String> {
    for (key, v) in members {
        let sp = parse_json_path(key, store_dir)?;
        if v.is_null() {
            invalid.push(sp.to_full(store_dir));
        } else {
            infos.push(info_from_object(sp, v, store_dir).map_err(|e| format!("{key}: {e}"))?);
        }
    }
    Ok(())
}

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

/// `path` without `.` components or trailing slashes, as a string; `None` if it
/// has `..` (which only the filesystem can resolve) or is not UTF-8.
fn lexical(path: &Path) -> Option<String> {
    let mut s = String::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::CurDir => continue,
            Component::Normal(n) => {
                s.push('/');
                s.push_str(n.to_str()?);
            }
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(if s.is_empty() { "/".into() } else { s })
}

/// Resolve what a user typed to a store path: follow symlinks one hop at a time
/// until the path is directly `<store_dir>/<hash>-<name>`; never canonicalize through
/// the store path itself (its contents may be symlinks). Errors name `arg`.
pub fn resolve_user_path(arg: &str, store_dir: &str) -> Result<StorePath> {
    let usage = |m: String| Error::Usage(m);
    let mut cur = if Path::new(arg).is_absolute() {
        PathBuf::from(arg)
    } else {
        let cwd = std::env::current_dir()
            .map_err(|e| Error::io("get current directory for", Path::new(arg), e))?;
        cwd.join(arg)
    };
    let named = |s: &str, e: crate::store_path::ParseError| {
        if s == arg.trim_end_matches('/') {
            usage(e.to_string())
        } else {
            usage(format!("'{arg}' leads to {e}"))
        }
    };
    let in_store = |s: &str| {
        s.strip_prefix(store_dir)
            .is_some_and(|r| r.starts_with('/'))
    };
    for _ in 0..=MAX_SYMLINK_HOPS {
        // Drop `.` and trailing slashes: `result/` would make the kernel follow the
        // symlink, and one hop at a time is the point here.
        cur = cur.components().collect();
        if let Some(s) = lexical(&cur).filter(|s| in_store(s)) {
            let sp = StorePath::from_full_path(store_dir, &s).map_err(|e| named(&s, e))?;
            return match Path::new(&sp.to_full(store_dir)).symlink_metadata() {
                Ok(_) => Ok(sp),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(usage(format!(
                    "'{arg}' does not exist ({} is not in the store)",
                    sp.to_full(store_dir)
                ))),
                Err(e) => Err(Error::io("inspect", &cur, e)),
            };
        }
        let meta = match cur.symlink_metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(usage(format!("'{arg}' does not exist")))
            }
            Err(e) => return Err(Error::io(&format!("resolve '{arg}': inspect"), &cur, e)),
        };
        if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(&cur).map_err(|e| Error::io("read symlink", &cur, e))?;
            cur = match cur.parent() {
                Some(dir) if target.is_relative() => dir.join(target),
                _ => target,
            };
            continue;
        }
        // Not a symlink and not spelled as a store path: resolve the directories
        // above it (e.g. `./result/bin`), then see whether that lands in the store.
        let resolved = match (cur.parent(), cur.file_name()) {
            (Some(dir), Some(name)) => std::fs::canonicalize(dir).map(|d| d.join(name)),
            _ => std::fs::canonicalize(&cur),
        }
        .map_err(|e| Error::io(&format!("resolve '{arg}': canonicalize"), &cur, e))?;
        let mut s = resolved.to_string_lossy().into_owned();
        if let Ok(real_store) = std::fs::canonicalize(store_dir) {
            if let Some(rest) = s.strip_prefix(&*real_store.to_string_lossy()) {
                s = format!("{store_dir}{rest}");
            }
        }
        if in_store(&s) {
            return StorePath::from_full_path(store_dir, &s).map_err(|e| named(&s, e));
        }
        return Err(usage(format!(
            "'{arg}' is not in the Nix store ({store_dir})"
        )));
    }
    Err(usage(format!(
        "'{arg}': too many levels of symbolic links (more than {MAX_SYMLINK_HOPS}); is there a symlink loop?"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "/nix/store";
    const A: &str = "qh502jr7pipskqcvr1m3l3kvsds5fslh-narpush-fixture.txt";
    const B: &str = "9q0x2f5q0p743nv80xr3h9z0pavj7rmb-narpush-fixture-refdemo";
    const D: &str = "6qnyw79z23giasq1vvnmfnqk93d3lsj4-narpush-fixture-dep.txt";
    const DRV: &str = "0hvvxrw9vpm4v89ys9l2f6kzxhjdi1ya-narpush-fixture-refdemo.drv";
    const INVALID: &str = "/nix/store/00000000000000000000000000000000-narpush-invalid";
    const SIG: &str = "narpush-fixture-1:VQcBZRPQnNIEMwEvLwU7J3ySijwj4bS/jq/k+td+YlqkMRP7BjCnaN4zGBi0w7wv7MVzZmqwy53zsuWNZJkKDA==";

    fn fixture(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/path-info")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    fn hex32(h: &str) -> [u8; 32] {
        hex_decode(h).unwrap().try_into().unwrap()
    }

    fn sp(base: &str) -> StorePath {
        StorePath::from_base_name(base).unwrap()
    }

    /// Every fixture describes the same three paths and one invalid path.
    fn check_fixture(name: &str) {
        let (infos, invalid) =
            parse_path_info_json(&fixture(name), S).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(invalid, [INVALID], "{name}");
        assert_eq!(infos.len(), 3, "{name}");
        let get = |b: &str| {
            infos
                .iter()
                .find(|i| i.path == sp(b))
                .unwrap_or_else(|| panic!("{name}: no {b}"))
        };

        let a = get(A);
        assert_eq!(
            a.nar_hash,
            hex32("6c2e60b3f50e5871c63cfe8521182e8c3a14f00d161d6edb85d4cd68d516cdd3"),
            "{name}"
        );
        assert_eq!(a.nar_size, 144);
        assert!(a.references.is_empty());
        assert_eq!(a.deriver, None);
        assert!(a.sigs.is_empty());
        assert_eq!(
            a.ca.as_deref(),
            Some("fixed:r:sha256:1lyd2vanikflhpdnw78n1pq18flc5qc231gy7k372n0fynrn0bkc"),
            "{name}"
        );
        assert!(!a.ultimate);

        let b = get(B);
        assert_eq!(
            b.nar_hash,
            hex32("2643cf93dc3e4ee67187951d17ec33d7eea1ca48e4f4c76b738cb94d304895ca")
        );
        assert_eq!(b.nar_size, 184);
        assert_eq!(b.references, [sp(D)]);
        assert_eq!(b.deriver, Some(sp(DRV)), "{name}");
        assert_eq!(b.sigs, [SIG], "{name}");
        assert_eq!(b.ca, None);
        assert!(b.ultimate);

        let d = get(D);
        assert_eq!(
            d.nar_hash,
            hex32("7bdbc9e6407d9d3ed40adc64d746be6366b5f58ee668c6b02866008bbef57202")
        );
        assert_eq!(d.nar_size, 120);
        assert_eq!(
            d.ca.as_deref(),
            Some("text:sha256:1hjv6mkyh0xap94dhzia5c25rrq5hk52r3qf9hg54szavcyym8x8"),
            "{name}"
        );
        assert!(!d.ultimate);
    }

    #[test]
    fn nix_2_8_real_output() {
        check_fixture("nix-2.8.json");
    }

    #[test]
    fn nix_2_19_keyed_by_path() {
        check_fixture("nix-2.19.json");
    }

    #[test]
    fn nix_2_23_nulls() {
        check_fixture("nix-2.23.json");
    }

    #[test]
    fn nix_2_33_json_format_1() {
        check_fixture("nix-2.33-json-1.json");
    }

    #[test]
    fn nix_2_33_json_format_2() {
        check_fixture("nix-2.33-json-2.json");
    }

    #[test]
    fn nix_2_35_json_format_3() {
        check_fixture("nix-2.35-json-3.json");
    }

    #[test]
    fn hash_spellings() {
        let want = hex32("6c2e60b3f50e5871c63cfe8521182e8c3a14f00d161d6edb85d4cd68d516cdd3");
        for s in [
            "sha256-bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzdM=",
            "sha256:bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzdM=",
            "sha256:1lyd2vanikflhpdnw78n1pq18flc5qc231gy7k372n0fynrn0bkc",
            "sha256:6c2e60b3f50e5871c63cfe8521182e8c3a14f00d161d6edb85d4cd68d516cdd3",
            "6c2e60b3f50e5871c63cfe8521182e8c3a14f00d161d6edb85d4cd68d516cdd3",
            "6C2E60B3F50E5871C63CFE8521182E8C3A14F00D161D6EDB85D4CD68D516CDD3",
            "1lyd2vanikflhpdnw78n1pq18flc5qc231gy7k372n0fynrn0bkc",
            "bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzdM=",
        ] {
            assert_eq!(parse_hash_any(s), Some(want), "{s}");
        }
        for s in [
            "",
            "sha256:",
            "sha256-",
            "sha1-bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzdM=",
            "md5:6c2e60b3f50e5871c63cfe8521182e8c",
            "sha256:6c2e60b3f50e5871c63cfe8521182e8c3a14f00d161d6edb85d4cd68d516cdd",
            "sha256-bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzd",
            "sha256:1lyd2vanikflhpdnw78n1pq18flc5qc231gy7k372n0fynrn0bke",
            "blake3:6c2e60b3f50e5871c63cfe8521182e8c3a14f00d161d6edb85d4cd68d516cdd3",
        ] {
            assert_eq!(parse_hash_any(s), None, "{s}");
        }
    }

    #[test]
    fn structured_ca_methods() {
        let doc = |method: &str, hash: &str| {
            format!(
                r#"{{"version":2,"storeDir":"/nix/store","info":{{"{A}":{{"ca":{{"method":"{method}","hash":"{hash}"}},
                "narHash":"sha256-bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzdM=","narSize":1,"references":[]}}}}}}"#
            )
        };
        let ca = |method: &str, hash: &str| {
            parse_path_info_json(&doc(method, hash), S).map(|(i, _)| i[0].ca.clone().unwrap())
        };
        let h = "sha256-bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzdM=";
        let n = "1lyd2vanikflhpdnw78n1pq18flc5qc231gy7k372n0fynrn0bkc";
        assert_eq!(ca("nar", h).unwrap(), format!("fixed:r:sha256:{n}"));
        assert_eq!(ca("flat", h).unwrap(), format!("fixed:sha256:{n}"));
        assert_eq!(ca("text", h).unwrap(), format!("text:sha256:{n}"));
        assert_eq!(ca("git", h).unwrap(), format!("fixed:git:sha256:{n}"));
        // sha1 (git hashes): 20 bytes, 32 nix32 characters.
        let sha1 = ca("git", "sha1-AAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        assert_eq!(sha1, format!("fixed:git:sha1:{}", "0".repeat(32)));
        let e = ca("magic", h).unwrap_err().to_string();
        assert!(
            e.contains("unknown content-address method \"magic\""),
            "{e}"
        );
    }

    #[test]
    fn other_shapes_and_errors() {
        // Empty outputs of every shape.
        assert_eq!(parse_path_info_json("[]", S).unwrap().0.len(), 0);
        assert_eq!(parse_path_info_json("{}", S).unwrap().0.len(), 0);
        let e = parse_path_info_json("[1,", S).unwrap_err().to_string();
        assert!(
            e.contains("invalid JSON: EOF while parsing a value at line 1 column 3"),
            "{e}"
        );
        let e = parse_path_info_json("\"x\"", S).unwrap_err().to_string();
        assert!(e.contains("expected an array or an object"), "{e}");
        let e = parse_path_info_json(r#"{"version":9,"storeDir":"/nix/store","info":{}}"#, S)
            .unwrap_err();
        assert!(e.to_string().contains("upgrade narpush"), "{e}");
        let e = parse_path_info_json(r#"{"version":2,"storeDir":"/gnu/store","info":{}}"#, S)
            .unwrap_err();
        assert!(e.to_string().contains("set NIX_STORE_DIR"), "{e}");
        // 2.8's shape names no store directory: a path elsewhere is refused the same way.
        let e = parse_path_info_json(&format!(r#"[{{"path":"/gnu/store/{A}","narSize":1}}]"#), S)
            .unwrap_err();
        assert!(
            e.to_string().contains("/gnu/store") && e.to_string().contains("set NIX_STORE_DIR"),
            "{e}"
        );
        let e =
            parse_path_info_json(&format!(r#"[{{"path":"{S}/{A}","narSize":1}}]"#), S).unwrap_err();
        assert!(e.to_string().contains("no \"narHash\""), "{e}");
        let e = parse_path_info_json(
            &format!(r#"[{{"path":"{S}/{A}","narHash":"sha256:zz","narSize":1}}]"#),
            S,
        );
        assert!(e.unwrap_err().to_string().contains("not a SHA-256"));
        let e = parse_path_info_json(
            &format!(
                r#"[{{"path":"{S}/{A}","narHash":"{}","narSize":-1}}]"#,
                "0".repeat(64)
            ),
            S,
        );
        assert!(e.unwrap_err().to_string().contains("narSize"));
        // Sizes beyond 2^53 stay exact; references come out sorted; a foreign
        // store dir in a full path is an error.
        let (i, _) = parse_path_info_json(
            &format!(
                r#"[{{"path":"{S}/{A}","narHash":"{}","narSize":9223372036854775809,"references":["{S}/{B}","{S}/{D}"]}}]"#,
                "0".repeat(64)
            ),
            S,
        )
        .unwrap();
        assert_eq!(i[0].nar_size, (1 << 63) + 1);
        let size = |n: &str| {
            parse_path_info_json(
                &format!(
                    r#"[{{"path":"{S}/{A}","narHash":"{}","narSize":{n}}}]"#,
                    "0".repeat(64)
                ),
                S,
            )
            .map(|(i, _)| i[0].nar_size)
            .map_err(|e| e.to_string())
        };
        assert_eq!(size("18446744073709551615"), Ok(u64::MAX));
        for bad in ["18446744073709551616", "1.0", "1e3"] {
            let e = size(bad).unwrap_err();
            assert!(
                e.contains("\"narSize\" is not a non-negative integer"),
                "{bad}: {e}"
            );
        }
        let e = parse_path_info_json("[] x", S).unwrap_err().to_string();
        assert!(e.contains("invalid JSON: trailing characters"), "{e}");
        assert_eq!(i[0].references, [sp(D), sp(B)]);
        let e = parse_path_info_json(&format!(r#"{{"/gnu/store/{A}":null}}"#), S).unwrap_err();
        assert!(
            e.to_string()
                .contains("/gnu/store but narpush uses /nix/store"),
            "{e}"
        );
    }

    #[test]
    fn structured_hash_objects() {
        let v = |h: &str| serde_json::from_str::<Value>(h).unwrap();
        let want = hex32("6c2e60b3f50e5871c63cfe8521182e8c3a14f00d161d6edb85d4cd68d516cdd3");
        for h in [
            r#"{"algorithm":"sha256","format":"base64","hash":"bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzdM="}"#,
            r#"{"algorithm":"sha256","format":"nix32","hash":"1lyd2vanikflhpdnw78n1pq18flc5qc231gy7k372n0fynrn0bkc"}"#,
            r#"{"algorithm":"sha256","hash":"6c2e60b3f50e5871c63cfe8521182e8c3a14f00d161d6edb85d4cd68d516cdd3"}"#,
            r#"{"algorithm":"sha256","format":"sri","hash":"sha256-bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzdM="}"#,
        ] {
            let (algo, bytes) = hash_value(&v(h)).unwrap_or_else(|| panic!("{h}"));
            assert_eq!(
                (algo.as_str(), bytes.as_slice()),
                ("sha256", &want[..]),
                "{h}"
            );
        }
        let mismatch =
            r#"{"algorithm":"sha1","hash":"sha256-bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzdM="}"#;
        assert_eq!(hash_value(&v(mismatch)), None);
    }

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

    #[test]
    fn lexical_paths() {
        assert_eq!(lexical(Path::new("/nix/store/x/")).unwrap(), "/nix/store/x");
        assert_eq!(lexical(Path::new("/a/./b//c")).unwrap(), "/a/b/c");
        assert_eq!(lexical(Path::new("/a/../b")), None);
        assert_eq!(lexical(Path::new("/")).unwrap(), "/");
    }
}
