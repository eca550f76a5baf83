//! `narpush gc`: closure-aware mark and sweep over the bucket alone, no database.
//!
//! Roots are the narinfos modified within `--older-than` (a push writes a narinfo,
//! and pushing a path again renews one older than a day) plus the `--keep` paths;
//! every path in a root's closure (narinfo `References`) stays. The sweep deletes,
//! in this order, so that the cache is consistent whenever it is interrupted:
//! 1. the other narinfos (and their `.ls`), dependents before their dependencies,
//!    so no remaining narinfo ever names a reference that is gone;
//! 2. NARs no remaining narinfo points to, once older than the grace period (each
//!    asked again just before, so one a push has just rewritten stays);
//! 3. build logs of derivations no remaining narinfo names as `Deriver`, once older
//!    than `--older-than`;
//! 4. multipart uploads incomplete for more than a day.
//!
//! Memory: the listing is read a page at a time and what is kept per object is its
//! key, size and time (plus, per narinfo, its references as indices), so 100,000
//! objects need a few MiB; narinfos are read in parallel chunks.

use super::{hash_of, narinfo_hash, open_cache, GcArgs};
use crate::cache::{now_secs, Cache};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::push::{human_bytes, parallel_map};
use std::collections::HashSet;

/// Incomplete multipart uploads older than this are aborted.
const STALE_UPLOAD_SECS: i64 = 86_400;

/// One object of the listing.
struct Obj {
    key: Box<str>,
    size: u64,
    modified: i64,
}

/// What gc learns of one narinfo.
struct Narinfo {
    hash: Box<str>,
    size: u64,
    modified: i64,
    /// The store path's base name, kept only to be printed (`--dry-run`, `-v`).
    name: Box<str>,
    /// Indices of referenced narinfos (self excluded).
    refs: Box<[u32]>,
    /// Index of its NAR in the NAR list.
    nar: Option<u32>,
    /// Index of `log/<Deriver>` in the log list.
    log: Option<u32>,
    /// Whether it has a `<hash>.ls` listing.
    ls: bool,
}

/// What gc needs of a narinfo: its `StorePath`, `URL`, `References` and `Deriver`
/// lines, read without judging the rest.
#[derive(Debug, Default, PartialEq, Eq)]
struct Links {
    store_path: String,
    url: String,
    references: Vec<String>,
    deriver: Option<String>,
}

impl Links {
    fn read(text: &str) -> Links {
        let mut l = Links::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k {
                "StorePath" => l.store_path = v.to_string(),
                "URL" => l.url = v.to_string(),
                "References" => l.references = v.split_whitespace().map(String::from).collect(),
                "Deriver" if !v.is_empty() && v != "unknown-deriver" => {
                    l.deriver = Some(v.to_string())
                }
                _ => {}
            }
        }
        l
    }
}

fn find(objs: &[Obj], key: &str) -> Option<u32> {
    objs.binary_search_by(|o| (*o.key).cmp(key))
        .ok()
        .map(|i| i as u32)
}

/// The store paths named by `--keep` and `--keep-file`.
fn keep_hashes(a: &GcArgs, store_dir: &str) -> Result<Vec<String>> {
    let mut args = a.keep.clone();
    for f in &a.keep_files {
        let text = std::fs::read_to_string(f).map_err(|e| Error::io("read keep file", f, e))?;
        args.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(std::path::PathBuf::from),
        );
    }
    super::resolve_store_paths(&args, store_dir)
}

pub fn run(a: &GcArgs, config: &Config) -> Result<i32> {
    let (cache, _) = open_cache(config)?;
    let store_dir = super::store_dir();
    let keeps = keep_hashes(a, &store_dir)?;
    let now = now_secs();
    let cutoff = now - a.older_than as i64;
    let grace_cut = now - a.grace as i64;
    let say = |m: String| {
        if !config.quiet {
            println!("{m}");
        }
    };

    // 1. The listing.
    let mut infos: Vec<Narinfo> = Vec::new();
    let mut nars: Vec<Obj> = Vec::new();
    let mut logs: Vec<Obj> = Vec::new();
    let mut ls: Vec<Box<str>> = Vec::new();
    cache.list("", &mut |page| {
        for o in page {
            if let Some(h) = narinfo_hash(&o.key) {
                infos.push(Narinfo {
                    hash: h.into(),
                    size: o.size,
                    modified: o.last_modified,
                    name: "".into(),
                    refs: Box::new([]),
                    nar: None,
                    log: None,
                    ls: false,
                });
            } else if o.key.starts_with("nar/") {
                nars.push(Obj {
                    key: o.key.into(),
                    size: o.size,
                    modified: o.last_modified,
                });
            } else if o.key.starts_with("log/") {
                logs.push(Obj {
                    key: o.key.into(),
                    size: o.size,
                    modified: o.last_modified,
                });
            } else if let Some(h) = o.key.strip_suffix(".ls") {
                ls.push(h.into());
            }
        }
        Ok(())
    })?;
    infos.sort_by(|x, y| x.hash.cmp(&y.hash));
    nars.sort_by(|x, y| x.key.cmp(&y.key));
    logs.sort_by(|x, y| x.key.cmp(&y.key));
    let index = |infos: &[Narinfo], h: &str| -> Option<usize> {
        infos.binary_search_by(|i| (*i.hash).cmp(h)).ok()
    };
    for h in &ls {
        if let Some(i) = index(&infos, h) {
            infos[i].ls = true;
        }
    }
    drop(ls);

    // 2. Every narinfo's references, NAR and deriver, read in parallel chunks.
    let printing = a.dry_run || config.verbose;
    let mut offset = 0;
    while offset < infos.len() {
        let end = (offset + 512).min(infos.len());
        let got = parallel_map(&infos[offset..end], config.jobs.max(4), |i| {
            cache.get(&format!("{}.narinfo", i.hash))
        });
        for (j, r) in got.into_iter().enumerate() {
            let i = offset + j;
            let Some(bytes) = r? else { continue };
            // Read leniently: a narinfo narpush's strict parser would refuse must
            // still protect its NAR and references when it is kept.
            let info = Links::read(&String::from_utf8_lossy(&bytes));
            let own = infos[i].hash.clone();
            let refs: Box<[u32]> = info
                .references
                .iter()
                .map(|r| hash_of(r))
                .filter(|h| **h != *own)
                .filter_map(|h| index(&infos, h).map(|x| x as u32))
                .collect();
            let rec = &mut infos[i];
            rec.refs = refs;
            rec.nar = find(&nars, &info.url);
            rec.log = info
                .deriver
                .as_deref()
                .and_then(|d| find(&logs, &format!("log/{d}")));
            if printing {
                rec.name = info.store_path.rsplit('/').next().unwrap_or("").into();
            }
        }
        offset = end;
    }

    // 3. Mark.
    let mut marked = vec![false; infos.len()];
    let mut stack: Vec<usize> = Vec::new();
    let mut roots = 0;
    for (i, info) in infos.iter().enumerate() {
        if info.modified >= cutoff {
            stack.push(i);
        }
    }
    for k in &keeps {
        match index(&infos, hash_of(k)) {
            Some(i) => stack.push(i),
            None => eprintln!("narpush: warning: --keep {k}: not in the cache"),
        }
    }
    for &i in &stack {
        if !marked[i] {
            roots += 1;
        }
        marked[i] = true;
    }
    while let Some(i) = stack.pop() {
        for &r in &infos[i].refs {
            if !marked[r as usize] {
                marked[r as usize] = true;
                stack.push(r as usize);
            }
        }
    }
    let kept = marked.iter().filter(|m| **m).count();

    // 4. The narinfos to delete, dependents first (waves of Kahn's algorithm).
    let mut referrers = vec![0u32; infos.len()];
    for (i, info) in infos.iter().enumerate() {
        if !marked[i] {
            for &r in &info.refs {
                referrers[r as usize] += 1;
            }
        }
    }
    let mut wave: Vec<usize> = (0..infos.len())
        .filter(|&i| !marked[i] && referrers[i] == 0)
        .collect();
    let mut waves: Vec<Vec<usize>> = Vec::new();
    while !wave.is_empty() {
        let mut next = Vec::new();
        for &i in &wave {
            for &r in &infos[i].refs {
                let r = r as usize;
                referrers[r] -= 1;
                if referrers[r] == 0 && !marked[r] {
                    next.push(r);
                }
            }
        }
        waves.push(std::mem::replace(&mut wave, next));
    }
    drop(referrers);

    let live_nars: HashSet<u32> = infos
        .iter()
        .zip(&marked)
        .filter(|(_, m)| **m)
        .filter_map(|(i, _)| i.nar)
        .collect();
    let live_logs: HashSet<u32> = infos
        .iter()
        .zip(&marked)
        .filter(|(_, m)| **m)
        .filter_map(|(i, _)| i.log)
        .collect();

    let verb = if a.dry_run { "would delete" } else { "deleted" };
    let mut freed = 0u64;
    let (mut n_narinfos, mut n_nars, mut n_logs) = (0usize, 0usize, 0usize);

    // 5. Sweep narinfos, wave by wave.
    for w in &waves {
        let mut keys = Vec::new();
        for &i in w {
            let info = &infos[i];
            keys.push(format!("{}.narinfo", info.hash));
            if info.ls {
                keys.push(format!("{}.ls", info.hash));
            }
            freed += info.size;
            n_narinfos += 1;
            if a.dry_run || config.verbose {
                let name = if info.name.is_empty() {
                    "(unreadable narinfo)"
                } else {
                    &info.name
                };
                println!("{verb} {store_dir}/{name} ({}.narinfo)", info.hash);
            }
        }
        if !a.dry_run {
            cache.delete(&keys)?;
        }
    }

    // 6. NARs nothing remaining points to, past the grace period.
    let candidates: Vec<u32> = (0..nars.len() as u32)
        .filter(|i| !live_nars.contains(i) && nars[*i as usize].modified < grace_cut)
        .collect();
    for chunk in candidates.chunks(1000) {
        // Asked again: a push may have rewritten one since the listing.
        let still: Vec<bool> = if a.dry_run {
            vec![true; chunk.len()]
        } else {
            parallel_map(chunk, config.jobs.max(4), |&i| {
                let o = &nars[i as usize];
                // Gone, or of unknown age now: left alone.
                cache
                    .modified(&o.key)
                    .map(|m| m.flatten().is_some_and(|m| m < grace_cut))
            })
            .into_iter()
            .collect::<Result<Vec<bool>>>()?
        };
        let mut keys = Vec::new();
        for (&i, ok) in chunk.iter().zip(still) {
            let o = &nars[i as usize];
            if !ok {
                continue;
            }
            freed += o.size;
            n_nars += 1;
            if a.dry_run || config.verbose {
                println!("{verb} {} ({})", o.key, human_bytes(o.size));
            }
            keys.push(o.key.to_string());
        }
        if !a.dry_run && !keys.is_empty() {
            cache.delete(&keys)?;
        }
    }

    // 7. Logs of derivations no remaining narinfo names.
    let mut keys = Vec::new();
    for (i, o) in logs.iter().enumerate() {
        if live_logs.contains(&(i as u32)) || o.modified >= cutoff {
            continue;
        }
        freed += o.size;
        n_logs += 1;
        if a.dry_run || config.verbose {
            println!("{verb} {} ({})", o.key, human_bytes(o.size));
        }
        keys.push(o.key.to_string());
        if keys.len() == 1000 {
            if !a.dry_run {
                cache.delete(&keys)?;
            }
            keys.clear();
        }
    }
    if !a.dry_run && !keys.is_empty() {
        cache.delete(&keys)?;
    }

    // 8. Incomplete multipart uploads.
    let mut aborted = 0;
    if let Cache::S3 { client, .. } = &cache {
        match client.list_multipart_uploads_since() {
            Ok(ups) => {
                for (key, id, initiated) in ups {
                    if initiated.is_some_and(|t| t < now - STALE_UPLOAD_SECS) {
                        aborted += 1;
                        if a.dry_run || config.verbose {
                            println!(
                                "{} incomplete upload {key} ({id})",
                                if a.dry_run { "would abort" } else { "aborted" }
                            );
                        }
                        if !a.dry_run {
                            client.abort_multipart_upload(&key, &id)?;
                        }
                    }
                }
            }
            Err(e) if matches!(e.status(), Some(501) | Some(405)) => say(
                "incomplete multipart uploads: listing them is not supported by this server; \
                 none aborted (a lifecycle rule or the server's own cleanup must do it)"
                    .into(),
            ),
            Err(e) => return Err(e.into()),
        }
    }

    say(format!(
        "gc: {kept} paths kept ({roots} roots: pushed within {} or kept); {verb} {n_narinfos} \
         narinfos, {n_nars} NARs, {n_logs} logs, {aborted} incomplete uploads; {} {} in {}",
        crate::duration::human_age(a.older_than),
        if a.dry_run { "would free" } else { "freed" },
        human_bytes(freed),
        cache.describe()
    ));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_read_from_any_narinfo() {
        let l = Links::read(
            "StorePath: /nix/store/aaaa-x\nURL: nar/h.nar.xz\nNarHash: md5:oops\n\
             References: bbbb-y aaaa-x\nDeriver: cccc-x.drv\nSig: junk\n",
        );
        assert_eq!(
            l,
            Links {
                store_path: "/nix/store/aaaa-x".into(),
                url: "nar/h.nar.xz".into(),
                references: vec!["bbbb-y".into(), "aaaa-x".into()],
                deriver: Some("cccc-x.drv".into()),
            }
        );
        assert_eq!(
            Links::read("References: \n").references,
            Vec::<String>::new()
        );
    }
}
