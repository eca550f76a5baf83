//! `narpush verify`: check a cache the way a client would, path by path, with
//! memory bounded by one listing page and one read range per job: the narinfo parses
//! as Nix parses it, a trusted signature is valid, the NAR exists with its FileSize
//! and FileHash, decompressed it has its NarHash and NarSize, and every reference is
//! in the cache or signed by an upstream key. Owns the problem kinds and the summary.

use super::{narinfo_hash, open_cache, VerifyArgs};
use crate::cache::Cache;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::hashing::HashingWriter;
use crate::nix::local::LocalNix;
use crate::nix::narinfo::NarInfo;
use crate::nix::signing::{sig_key_name, PublicKey};
use crate::nix::store_path::StorePath;
use crate::push::parallel_map;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::sync::Mutex;

/// NARs are read in ranges of this size.
const RANGE: u64 = 8 << 20;

/// What can be wrong with a path in a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    NarinfoMissing,
    NarinfoInvalid,
    Untrusted,
    BadSignature,
    NarMissing,
    NarFileMismatch,
    NarContentMismatch,
    MissingReference,
}

impl Problem {
    pub fn label(self) -> &'static str {
        match self {
            Problem::NarinfoMissing => "narinfo missing",
            Problem::NarinfoInvalid => "narinfo does not parse",
            Problem::Untrusted => "no signature by a trusted key",
            Problem::BadSignature => "bad signature by a trusted key",
            Problem::NarMissing => "NAR missing",
            Problem::NarFileMismatch => "NAR file differs from FileSize/FileHash",
            Problem::NarContentMismatch => "NAR contents differ from NarHash/NarSize",
            Problem::MissingReference => {
                "reference neither in the cache nor upstream (broken closure)"
            }
        }
    }
}

/// The trusted keys: `name:base64`, or a file holding one.
fn trusted_keys(args: &[String]) -> Result<Vec<PublicKey>> {
    args.iter()
        .map(|k| {
            let p = std::path::Path::new(k);
            let text = if !k.contains(':') && p.is_file() {
                std::fs::read_to_string(p).map_err(|e| Error::io("read", p, e))?
            } else {
                k.clone()
            };
            PublicKey::parse(text.trim()).map_err(|e| {
                Error::Usage(format!(
                    "--trusted-key: {e}; pass NAME:BASE64 or a file with one"
                ))
            })
        })
        .collect()
}

/// Whether a signature by a trusted key is valid: `Ok` when one is, else the problem.
pub fn check_signatures(info: &NarInfo, keys: &[PublicKey]) -> std::result::Result<(), Problem> {
    let fp = info.fingerprint();
    let mut by_trusted = false;
    for sig in &info.sigs {
        for k in keys.iter().filter(|k| k.name == sig_key_name(sig)) {
            by_trusted = true;
            if k.verify(fp.as_bytes(), sig) {
                return Ok(());
            }
        }
    }
    Err(if by_trusted {
        Problem::BadSignature
    } else {
        Problem::Untrusted
    })
}

/// Reads an object in ranges, hashing and counting what it reads.
struct RangeReader<'a> {
    cache: &'a Cache,
    key: &'a str,
    pos: u64,
    buf: Vec<u8>,
    off: usize,
    eof: bool,
    hasher: Sha256,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.off == self.buf.len() {
            if self.eof {
                return Ok(0);
            }
            let got = self
                .cache
                .read_range(self.key, self.pos, RANGE)
                .map_err(io::Error::other)?;
            let Some(data) = got else {
                return Err(io::Error::new(io::ErrorKind::NotFound, "object is gone"));
            };
            self.eof = (data.len() as u64) < RANGE;
            self.pos += data.len() as u64;
            self.hasher.update(&data);
            self.buf = data;
            self.off = 0;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.off);
        out[..n].copy_from_slice(&self.buf[self.off..self.off + n]);
        self.off += n;
        Ok(n)
    }
}

/// Check the NAR a narinfo points to; `Ok` or the problem and what was found.
fn check_nar(cache: &Cache, info: &NarInfo) -> std::result::Result<(), (Problem, String)> {
    let mut r = RangeReader {
        cache,
        key: &info.url,
        pos: 0,
        buf: Vec::new(),
        off: 0,
        eof: false,
        hasher: Sha256::new(),
    };
    // Existence first, so a missing NAR is named as such.
    match cache.read_range(&info.url, 0, 0) {
        Ok(Some(_)) => {}
        Ok(None) => return Err((Problem::NarMissing, info.url.clone())),
        Err(e) => return Err((Problem::NarMissing, format!("{}: {e}", info.url))),
    }
    let mut out = HashingWriter::new(io::sink());
    let decoded = match info.compression.as_str() {
        "none" => io::copy(&mut r, &mut out).map(drop),
        "xz" => io::copy(&mut lzma_rust2::XzReader::new(&mut r, true), &mut out).map(drop),
        "zstd" => zstd::stream::read::Decoder::new(&mut r)
            .and_then(|mut d| io::copy(&mut d, &mut out))
            .map(drop),
        other => {
            return Err((
                Problem::NarContentMismatch,
                format!("compression '{other}' cannot be checked by narpush"),
            ))
        }
    };
    if let Err(e) = &decoded {
        if e.kind() == io::ErrorKind::NotFound {
            return Err((Problem::NarMissing, info.url.clone()));
        }
    }
    // Whatever the decoder left unread still counts for FileHash/FileSize.
    let _ = io::copy(&mut r, &mut io::sink());
    let file_hash: [u8; 32] = r.hasher.finalize().into();
    let file_size = r.pos;
    let size_ok = info.file_size.is_none_or(|s| s == file_size);
    let hash_ok = info.file_hash.is_none_or(|h| h == file_hash);
    if !size_ok || !hash_ok {
        return Err((
            Problem::NarFileMismatch,
            format!(
                "{} is {file_size} bytes with sha256:{}",
                info.url,
                crate::nix::nixbase32::encode(&file_hash)
            ),
        ));
    }
    if let Err(e) = decoded {
        return Err((Problem::NarContentMismatch, format!("{}: {e}", info.url)));
    }
    let (_, nar_hash, nar_size) = out.finish();
    if nar_hash != info.nar_hash || nar_size != info.nar_size {
        return Err((
            Problem::NarContentMismatch,
            format!(
                "decompressed: {nar_size} bytes with sha256:{}",
                crate::nix::nixbase32::encode(&nar_hash)
            ),
        ));
    }
    Ok(())
}

/// One path's findings: problems, and references the cache lacks.
#[derive(Default)]
struct Finding {
    path: String,
    problems: Vec<(Problem, String)>,
    absent_refs: Vec<String>,
}

struct Checker<'a> {
    cache: &'a Cache,
    keys: Vec<PublicKey>,
    /// Every narinfo hash of the cache (`--all`), else asked per reference.
    listed: Option<HashSet<String>>,
    asked: Mutex<HashMap<String, bool>>,
}

impl Checker<'_> {
    fn has(&self, hash: &str) -> Result<bool> {
        if let Some(l) = &self.listed {
            return Ok(l.contains(hash));
        }
        if let Some(&b) = self
            .asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
        {
            return Ok(b);
        }
        let b = self.cache.exists(&format!("{hash}.narinfo"))?;
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash.to_string(), b);
        Ok(b)
    }

    fn check(&self, hash: &str) -> Finding {
        let mut f = Finding {
            path: hash.to_string(),
            ..Finding::default()
        };
        let key = format!("{hash}.narinfo");
        let text = match self.cache.get(&key) {
            Ok(Some(b)) => b,
            Ok(None) => {
                f.problems.push((Problem::NarinfoMissing, key));
                return f;
            }
            Err(e) => {
                f.problems.push((Problem::NarinfoMissing, e.to_string()));
                return f;
            }
        };
        let info = match std::str::from_utf8(&text)
            .map_err(|_| "not UTF-8".to_string())
            .and_then(NarInfo::parse)
        {
            Ok(i) => i,
            Err(e) => {
                f.problems
                    .push((Problem::NarinfoInvalid, format!("{key}: {e}")));
                return f;
            }
        };
        f.path = info.store_path.clone();
        if super::hash_of(&info.store_path) != hash {
            f.problems.push((
                Problem::NarinfoInvalid,
                format!("{key} describes {}", info.store_path),
            ));
            return f;
        }
        if let Err(p) = check_signatures(&info, &self.keys) {
            f.problems.push((p, String::new()));
        }
        if let Err(p) = check_nar(self.cache, &info) {
            f.problems.push(p);
        }
        for r in &info.references {
            let h = super::hash_of(r);
            if h == hash {
                continue;
            }
            match self.has(h) {
                Ok(true) => {}
                Ok(false) => f.absent_refs.push(r.clone()),
                Err(e) => f
                    .problems
                    .push((Problem::MissingReference, format!("{r}: {e}"))),
            }
        }
        f
    }
}

/// Which of `refs` (store base names) the local Nix has with a signature by an
/// upstream key; an empty set when there is no local Nix.
fn upstream_signed(refs: &[String], upstream: &[String]) -> HashSet<String> {
    let Ok(nix) = LocalNix::detect() else {
        return HashSet::new();
    };
    let paths: Vec<StorePath> = refs
        .iter()
        .filter_map(|r| StorePath::from_base_name(r).ok())
        .collect();
    let Ok(valid) = nix.valid_paths(&paths) else {
        return HashSet::new();
    };
    let Ok(infos) = nix.query(&valid, false) else {
        return HashSet::new();
    };
    infos
        .iter()
        .filter(|i| {
            i.sigs
                .iter()
                .any(|s| upstream.iter().any(|u| u == sig_key_name(s)))
        })
        .map(|i| i.path.base_name().to_string())
        .collect()
}

pub fn run(a: &VerifyArgs, config: &Config) -> Result<i32> {
    let (cache, _) = open_cache(config)?;
    let keys = trusted_keys(&a.trusted_keys)?;
    let mut hashes: Vec<String> = Vec::new();
    let listed = if a.all {
        let mut set = HashSet::new();
        cache.list("", &mut |page| {
            for o in page {
                if let Some(h) = narinfo_hash(&o.key) {
                    set.insert(h.to_string());
                }
            }
            Ok(())
        })?;
        hashes = set.iter().cloned().collect();
        hashes.sort();
        Some(set)
    } else {
        let store_dir = super::store_dir();
        for p in super::resolve_store_paths(&a.paths, &store_dir)? {
            hashes.push(super::hash_of(&p).to_string());
        }
        None
    };
    let checker = Checker {
        cache: &cache,
        keys,
        listed,
        asked: Mutex::new(HashMap::new()),
    };
    let total = hashes.len();
    let tty = !config.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let done = std::sync::atomic::AtomicUsize::new(0);
    let mut findings: Vec<Finding> = Vec::new();
    // A chunk at a time: results of good paths are dropped as they come.
    for chunk in hashes.chunks(256) {
        let got = parallel_map(chunk, config.jobs, |h| {
            let f = checker.check(h);
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if tty {
                eprint!("\r\x1b[Kverify: {n}/{total} checked");
            }
            f
        });
        findings.extend(
            got.into_iter()
                .filter(|f| !f.problems.is_empty() || !f.absent_refs.is_empty()),
        );
    }
    if tty {
        eprint!("\r\x1b[K");
    }
    let mut absent: Vec<String> = findings
        .iter()
        .flat_map(|f| f.absent_refs.iter().cloned())
        .collect();
    absent.sort();
    absent.dedup();
    let upstream = if absent.is_empty() {
        HashSet::new()
    } else {
        upstream_signed(&absent, &config.upstream_keys)
    };
    let mut by_kind: BTreeMap<Problem, Vec<String>> = BTreeMap::new();
    let mut bad_paths = 0;
    for f in &findings {
        let mut problems = f.problems.clone();
        for r in &f.absent_refs {
            if !upstream.contains(r) {
                problems.push((Problem::MissingReference, r.clone()));
            }
        }
        if !problems.is_empty() {
            bad_paths += 1;
        }
        for (p, detail) in problems {
            let line = if detail.is_empty() {
                f.path.clone()
            } else {
                format!("{} ({detail})", f.path)
            };
            by_kind.entry(p).or_default().push(line);
        }
    }
    println!(
        "verify: {total} checked, {} good, {bad_paths} with problems in {}",
        total - bad_paths,
        cache.describe()
    );
    for (p, lines) in &by_kind {
        println!("{} ({}):", p.label(), lines.len());
        for l in lines {
            println!("  {l}");
        }
    }
    Ok(if bad_paths > 0 { 1 } else { 0 })
}
