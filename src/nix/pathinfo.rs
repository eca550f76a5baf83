//! What the local Nix knows about a store path (NAR hash and size, references,
//! deriver, signatures, content address), read from `nix path-info --json` as
//! printed by every Nix version so far: 2.8's array, 2.19's object keyed by path,
//! 2.23's nulls, and 2.33/2.35's `--json-format 1|2|3`. Pure: the text comes in, the
//! [`PathInfo`]s go out; running `nix` is [`local`](super::local)'s job.
//! `tests/fixtures/path-info/` holds one file per shape (hand-written and real
//! Nix 2.26 output) and the unit tests below parse each of them.

use crate::error::{Error, Result};
use crate::nix::hash::{algo_size, decode_digest, parse_hash_any, parse_typed_hash};
use crate::nix::nixbase32;
use crate::nix::store_path::StorePath;
use serde_json::{Map, Value};
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::hex_decode;

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
}
