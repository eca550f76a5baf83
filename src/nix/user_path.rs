//! What a user typed (`./result`, `result/`, a path inside an output) turned into the
//! store path it names: symlinks followed by hand, up to Linux's own limit, and the
//! result checked to lie directly in the store directory.

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::nix::store_path::StorePath;

/// Most symlinks [`resolve_user_path`] follows (Linux's own limit).
const MAX_SYMLINK_HOPS: usize = 40;

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
    let named = |s: &str, e: crate::nix::store_path::ParseError| {
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

    #[test]
    fn lexical_paths() {
        assert_eq!(lexical(Path::new("/nix/store/x/")).unwrap(), "/nix/store/x");
        assert_eq!(lexical(Path::new("/a/./b//c")).unwrap(), "/a/b/c");
        assert_eq!(lexical(Path::new("/a/../b")), None);
        assert_eq!(lexical(Path::new("/")).unwrap(), "/");
    }
}
