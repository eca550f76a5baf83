//! Serialises a path on disk as a NAR: walks it in byte order of the entry names,
//! keeps only what NAR keeps (contents, the owner-execute bit, symlink targets) and
//! streams file contents through `nar.rs` without reading any file whole. Every I/O
//! error names the path it happened to.

use crate::error::{Error, Result};
use crate::nar::NarEncoder;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

/// Write the NAR of `path` to `w`; returns `w`.
pub fn dump_path<W: Write>(path: &Path, w: W) -> Result<W> {
    let mut enc = NarEncoder::new(w).map_err(|e| Error::io("write NAR of", path, e))?;
    dump_node(path, &mut enc)?;
    Ok(enc.finish())
}

fn dump_node<W: Write>(path: &Path, enc: &mut NarEncoder<W>) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
    let ft = meta.file_type();
    let werr = |e| Error::io("write NAR of", path, e);
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(|e| Error::io("read symlink", path, e))?;
        enc.symlink(target.as_os_str().as_bytes()).map_err(werr)
    } else if ft.is_file() {
        let mut f = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let executable = meta.permissions().mode() & 0o100 != 0;
        enc.regular(executable, meta.len(), &mut f)
            .map_err(|e| Error::io("read", path, e))
    } else if ft.is_dir() {
        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(|e| Error::io("read directory", path, e))? {
            let entry = entry.map_err(|e| Error::io("read directory", path, e))?;
            names.push(entry.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        enc.start_directory().map_err(werr)?;
        for name in names {
            enc.entry(name.as_bytes()).map_err(werr)?;
            dump_node(&path.join(&name), enc)?;
            enc.end_entry().map_err(werr)?;
        }
        enc.end_directory().map_err(werr)
    } else {
        let kind = if ft.is_socket() {
            "a socket"
        } else if ft.is_fifo() {
            "a FIFO"
        } else {
            "a device node"
        };
        Err(Error::Other(format!(
            "file '{}' has an unsupported type ({kind}); a NAR holds only files, directories and symlinks",
            path.display()
        )))
    }
}
