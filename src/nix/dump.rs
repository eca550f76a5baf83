//! Serialises a path on disk as a NAR: walks it in byte order of the entry names,
//! keeps only what NAR keeps (contents, the owner-execute bit, symlink targets) and
//! streams file contents through `nar.rs` without reading any file whole. Every I/O
//! error names the path it happened to.

use crate::error::{Error, Result};
use crate::nix::nar::NarEncoder;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

/// Write the NAR of `path` to `w`; returns `w`.
pub fn dump_path<W: Write>(path: &Path, w: W) -> Result<W> {
    let sink = Sink { w, failed: false };
    let mut enc = NarEncoder::new(sink).map_err(|e| Error::io("write NAR of", path, e))?;
    dump_node(path, &mut enc)?;
    Ok(enc.finish().w)
}

/// The caller's writer, remembering whether a write failed: a file's contents are
/// copied from the file to the sink in one call, and its error must say which side
/// failed (a full disk is not a read error of the store path).
struct Sink<W> {
    w: W,
    failed: bool,
}

impl<W> Sink<W> {
    fn note<T>(&mut self, r: std::io::Result<T>) -> std::io::Result<T> {
        // `Interrupted` is retried by the copy, not a failure.
        self.failed |= matches!(&r, Err(e) if e.kind() != std::io::ErrorKind::Interrupted);
        r
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.w.write(buf);
        self.note(r)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.w.flush();
        self.note(r)
    }
}

fn dump_node<W: Write>(path: &Path, enc: &mut NarEncoder<Sink<W>>) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
    let ft = meta.file_type();
    let werr = |e| Error::io("write NAR of", path, e);
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(|e| Error::io("read symlink", path, e))?;
        enc.symlink(target.as_os_str().as_bytes()).map_err(werr)
    } else if ft.is_file() {
        let mut f = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let executable = meta.permissions().mode() & 0o100 != 0;
        enc.regular(executable, meta.len(), &mut f).map_err(|e| {
            let op = if enc.get_ref().failed {
                "write NAR of"
            } else {
                "read"
            };
            Error::io(op, path, e)
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// A sink that takes `room` bytes, then fails as a full disk does.
    struct Disk {
        room: usize,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_sink_is_a_write_error_not_a_read_error() {
        let dir = std::env::temp_dir().join(format!("narpush-dump-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("big");
        fs::write(&file, vec![7u8; 256 * 1024]).unwrap();
        // Room for the NAR's header tokens, not for the file's contents.
        let e = dump_path(&file, Disk { room: 1000 })
            .err()
            .unwrap()
            .to_string();
        let _ = fs::remove_dir_all(&dir);
        assert!(
            e.starts_with(&format!("write NAR of {}: ", file.display())),
            "{e}"
        );
        assert!(e.contains("No space left on device"), "{e}");
    }

    #[test]
    fn a_file_that_changes_while_read_is_a_read_error() {
        // procfs files report size 0 and then yield bytes: "grew while reading".
        let status = Path::new("/proc/self/status");
        let e = dump_path(status, Vec::new()).err().unwrap().to_string();
        assert!(
            e.starts_with("read /proc/self/status: file grew while reading"),
            "{e}"
        );
    }
}
