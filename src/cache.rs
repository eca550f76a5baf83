//! The binary cache as narpush sees it, whether a local directory (`file://`) or a
//! bucket (`s3://`): is a narinfo there, read/write small files, and a streaming sink
//! for a compressed NAR. Keys are relative to the cache root (`nix-cache-info`,
//! `<hash>.narinfo`, `nar/…`).
//!
//! NAR naming: in a `file://` cache the NAR is written to a temporary file and renamed
//! to `nar/<nix32 FileHash>.nar<ext>` once the hash is known, exactly as Nix names it.
//! In a bucket the name must be fixed before the first multipart part goes up, so a
//! NAR that fits in one part is put as `nar/<nix32 FileHash>.nar<ext>`, and a larger
//! one streams to `nar/<nix32 NarHash>-<random>.nar<ext>`: readers only follow the
//! narinfo's `URL`, and a per-upload name means two concurrent pushers of the same
//! path can never leave a narinfo whose FileHash/FileSize disagree with its object.

use crate::error::{Error, Result};
use crate::nix::nixbase32;
use crate::s3::{Client, StreamingUpload};
use crate::sys::{tmp_name, write_atomic};
use crate::uploads::{self, Journal};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub const NARINFO_TYPE: &str = "text/x-nix-narinfo";
pub const CACHE_INFO_TYPE: &str = "text/x-nix-cache-info";
pub const NAR_TYPE: &str = "application/x-nix-nar";

pub enum Cache {
    File {
        dir: PathBuf,
    },
    S3 {
        client: Client,
        part_size: usize,
        /// Where multipart uploads in flight are noted (see `uploads`).
        journal: Option<Journal>,
    },
}

/// Unix seconds of a file time (0 when unknown).
pub fn unix_secs(t: Option<std::time::SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// Now, in Unix seconds.
pub fn now_secs() -> i64 {
    unix_secs(Some(std::time::SystemTime::now()))
}

/// 8 random nix32 characters (40 bits from the OS's random source).
fn random_suffix() -> Result<String> {
    let mut b = [0u8; 5];
    getrandom::fill(&mut b).map_err(|e| {
        Error::Other(format!(
            "cannot read random bytes from the operating system for an upload name: {e}"
        ))
    })?;
    Ok(nixbase32::encode(&b))
}

impl Cache {
    /// "file:///dir" or the bucket and endpoint.
    pub fn describe(&self) -> String {
        match self {
            Cache::File { dir } => format!("file://{}", dir.display()),
            Cache::S3 { client, .. } => client.describe(),
        }
    }

    /// Make sure the cache can be written to: a `file://` directory is created.
    pub fn prepare(&self) -> Result<()> {
        if let Cache::File { dir } = self {
            fs::create_dir_all(dir.join("nar"))
                .map_err(|e| Error::io("create cache directory", dir, e))?;
        }
        Ok(())
    }

    /// Abort the multipart uploads that narpush processes which died left in this
    /// bucket (see `uploads`); returns how many were cleared. Best effort.
    pub fn abort_stale_uploads(&self) -> usize {
        let Cache::S3 {
            client,
            journal: Some(j),
            ..
        } = self
        else {
            return 0;
        };
        let mut cleared = 0;
        for s in j.stale() {
            match client.abort_multipart_upload(&s.key, &s.upload_id) {
                Ok(()) => {}
                Err(e) if e.status() == Some(404) => {}
                Err(e) if e.is_transient() => {
                    eprintln!(
                        "narpush: warning: could not abort an upload left by an earlier run \
                         (will try again next run): {e}"
                    );
                    continue;
                }
                // Refused for good (gone, or not ours to abort): asking again each run
                // would not help; a lifecycle rule on the bucket removes such uploads.
                Err(e) => eprintln!(
                    "narpush: warning: could not abort an upload left by an earlier run, \
                     forgetting it: {e}"
                ),
            }
            uploads::forget(&s.entry);
            cleared += 1;
        }
        cleared
    }

    /// Read a small file; `None` when it does not exist.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Cache::File { dir } => match fs::read(dir.join(key)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io("read", &dir.join(key), e)),
            },
            Cache::S3 { client, .. } => Ok(client.get_object(key)?),
        }
    }

    /// Whether `key` exists (one HEAD request for a bucket).
    pub fn exists(&self, key: &str) -> Result<bool> {
        match self {
            Cache::File { dir } => Ok(dir.join(key).exists()),
            Cache::S3 { client, .. } => Ok(client.head_object(key)?.is_some()),
        }
    }

    /// Whether `key` exists and, if it does, its last modification in Unix seconds
    /// (Last-Modified of a bucket object, the mtime of a file) when known.
    pub fn modified(&self, key: &str) -> Result<Option<Option<i64>>> {
        match self {
            Cache::File { dir } => match fs::metadata(dir.join(key)) {
                Ok(m) => Ok(Some(m.modified().ok().map(|t| unix_secs(Some(t))))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io("stat", &dir.join(key), e)),
            },
            Cache::S3 { client, .. } => Ok(client
                .head_object_modified(key)?
                .map(|(_, modified)| modified)),
        }
    }

    /// Whether `key` (a narinfo) exists; one older than `renew_after` seconds is
    /// written again with the same bytes, so its modification time says it was
    /// pushed now (`gc` keeps what was pushed recently). A failed renewal is only
    /// a warning: the narinfo is there.
    pub fn exists_renewing(&self, key: &str, renew_after: i64, now: i64) -> Result<bool> {
        let Some(modified) = self.modified(key)? else {
            return Ok(false);
        };
        // A server that does not say when is not asked to renew.
        if modified.is_some_and(|m| now - m > renew_after) {
            let renewed = self.get(key).and_then(|b| match b {
                Some(bytes) => self.put(key, &bytes, NARINFO_TYPE),
                None => Ok(()),
            });
            if let Err(e) = renewed {
                eprintln!("narpush: warning: could not renew {key} for gc: {e}");
            }
        }
        Ok(true)
    }

    /// Bytes `start..start+len` of `key` (fewer at its end); `None` if it does not exist.
    pub fn read_range(&self, key: &str, start: u64, len: u64) -> Result<Option<Vec<u8>>> {
        match self {
            Cache::File { dir } => {
                use std::io::{Read, Seek, SeekFrom};
                let path = dir.join(key);
                let mut f = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io("open", &path, e)),
                };
                let mut buf = Vec::new();
                f.seek(SeekFrom::Start(start))
                    .and_then(|_| f.take(len).read_to_end(&mut buf))
                    .map_err(|e| Error::io("read", &path, e))?;
                Ok(Some(buf))
            }
            Cache::S3 { client, .. } => Ok(client.get_object_range(key, start, len)?),
        }
    }

    /// Every object (key, size, modification time) whose key starts with `prefix`, a
    /// page at a time. In a `file://` cache the directory is walked (its top level and
    /// one level of subdirectories, as a cache is laid out); temporary files are skipped.
    pub fn list(
        &self,
        prefix: &str,
        page: &mut dyn FnMut(Vec<crate::s3::ObjectEntry>) -> Result<()>,
    ) -> Result<()> {
        match self {
            Cache::S3 { client, .. } => client.list_objects_pages(prefix, page),
            Cache::File { dir } => {
                let mut batch = Vec::new();
                let mut dirs = vec![(dir.clone(), String::new())];
                while let Some((d, rel)) = dirs.pop() {
                    let rd = match fs::read_dir(&d) {
                        Ok(rd) => rd,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(Error::io("list", &d, e)),
                    };
                    for entry in rd {
                        let entry = entry.map_err(|e| Error::io("list", &d, e))?;
                        let name = entry.file_name();
                        let Some(name) = name.to_str() else { continue };
                        if name.starts_with('.') {
                            continue;
                        }
                        let key = format!("{rel}{name}");
                        let meta = entry
                            .metadata()
                            .map_err(|e| Error::io("stat", &entry.path(), e))?;
                        if meta.is_dir() {
                            if rel.is_empty() {
                                dirs.push((entry.path(), format!("{key}/")));
                            }
                            continue;
                        }
                        if !key.starts_with(prefix) {
                            continue;
                        }
                        batch.push(crate::s3::ObjectEntry {
                            key,
                            size: meta.len(),
                            last_modified: unix_secs(meta.modified().ok()),
                        });
                        if batch.len() == 1000 {
                            page(std::mem::take(&mut batch))?;
                        }
                    }
                }
                page(batch)
            }
        }
    }

    /// Delete keys (1000 per request in a bucket); missing ones are fine.
    pub fn delete(&self, keys: &[String]) -> Result<()> {
        match self {
            Cache::S3 { client, .. } => Ok(client.delete_objects(keys)?),
            Cache::File { dir } => {
                for k in keys {
                    match fs::remove_file(dir.join(k)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io("delete", &dir.join(k), e)),
                    }
                }
                Ok(())
            }
        }
    }

    /// Write a small file whole (atomically for `file://`).
    pub fn put(&self, key: &str, bytes: &[u8], content_type: &str) -> Result<()> {
        match self {
            Cache::File { dir } => write_atomic(&dir.join(key), bytes),
            Cache::S3 { client, .. } => Ok(client.put_object(key, bytes, content_type)?),
        }
    }

    /// A sink for one compressed NAR. `nar_hash` and `ext` name it where the name must
    /// be chosen up front; `expected_len` bounds its size (for multipart part sizes).
    pub fn nar_sink(&self, nar_hash: &[u8; 32], ext: &str, expected_len: u64) -> Result<NarSink> {
        match self {
            Cache::File { dir } => {
                let nar_dir = dir.join("nar");
                let path = tmp_name(&nar_dir, "upload");
                let f = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
                let tmp = TempFile::new(path, f);
                Ok(NarSink::File {
                    dir: nar_dir,
                    tmp,
                    ext: ext.into(),
                })
            }
            Cache::S3 {
                client,
                part_size,
                journal,
            } => {
                let big_key = format!(
                    "nar/{}-{}.nar{ext}",
                    nixbase32::encode(nar_hash),
                    random_suffix()?
                );
                let mut upload =
                    StreamingUpload::new(client, big_key, NAR_TYPE, *part_size, expected_len);
                let entry: std::sync::Arc<std::sync::Mutex<Option<PathBuf>>> = Default::default();
                if let Some(j) = journal.clone() {
                    let slot = entry.clone();
                    upload.on_create(Box::new(move |key, id| {
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = j.record(key, id);
                    }));
                }
                Ok(NarSink::S3 {
                    upload: Box::new(upload),
                    entry,
                    ext: ext.into(),
                })
            }
        }
    }
}

/// Where compressed NAR bytes go while they are produced.
pub enum NarSink {
    File {
        dir: PathBuf,
        tmp: TempFile,
        ext: String,
    },
    /// One part is buffered; a stream that ends within it is put whole under its
    /// FileHash name, a longer one goes up as a multipart upload under the up-front
    /// name (see the module docs).
    S3 {
        upload: Box<StreamingUpload>,
        /// The journal entry of the multipart upload, once it exists.
        entry: std::sync::Arc<std::sync::Mutex<Option<PathBuf>>>,
        ext: String,
    },
}

impl NarSink {
    /// Complete the object now that its SHA-256 is known; returns its key.
    pub fn finish(self, file_hash: &[u8; 32]) -> Result<String> {
        match self {
            NarSink::File { dir, mut tmp, ext } => {
                let key_name = format!("{}.nar{ext}", nixbase32::encode(file_hash));
                let dest = dir.join(&key_name);
                tmp.persist(&dest)
                    .map_err(|e| Error::io("write", &dest, e))?;
                Ok(format!("nar/{key_name}"))
            }
            NarSink::S3 { upload, entry, ext } => {
                let single = format!("nar/{}.nar{ext}", nixbase32::encode(file_hash));
                // A failed upload keeps its journal entry: the next run makes sure it
                // is aborted.
                let key = upload.finish_as(&single)?;
                if let Some(e) = entry.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    uploads::forget(&e);
                }
                Ok(key)
            }
        }
    }

    /// Drop what was written: the temporary file, or the multipart upload.
    pub fn abort(self) {
        match self {
            NarSink::File { tmp, .. } => drop(tmp),
            NarSink::S3 { upload, .. } => upload.abort(),
        }
    }
}

impl Write for NarSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            NarSink::File { tmp, .. } => tmp.write(buf),
            NarSink::S3 { upload, .. } => upload.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            NarSink::File { tmp, .. } => tmp.flush(),
            NarSink::S3 { .. } => Ok(()),
        }
    }
}

/// A temporary file that is removed unless it is persisted (renamed into place), so
/// no failure path (a failed flush, fsync or rename included) leaves a half-written
/// NAR in the cache.
pub struct TempFile {
    path: PathBuf,
    /// Open until persisted or closed by a failed persist.
    file: Option<BufWriter<File>>,
    /// Renamed to its destination: nothing is left to remove.
    persisted: bool,
}

impl TempFile {
    fn new(path: PathBuf, file: File) -> TempFile {
        TempFile {
            path,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            persisted: false,
        }
    }

    fn persist(&mut self, dest: &Path) -> io::Result<()> {
        let f = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("temporary file closed"))?
            .into_inner()
            .map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&self.path, dest)?;
        self.persisted = true;
        Ok(())
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("temporary file closed"))?
            .write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("narpush-cache-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_failed_rename_leaves_no_temporary_file() {
        let dir = temp_dir("persist");
        let cache = Cache::File { dir: dir.clone() };
        cache.prepare().unwrap();
        let file_hash = [3u8; 32];
        // The destination is a non-empty directory: rename(2) must fail.
        let dest = format!("{}.nar.xz", nixbase32::encode(&file_hash));
        fs::create_dir_all(dir.join("nar").join(&dest).join("in-the-way")).unwrap();
        let mut sink = cache.nar_sink(&[1u8; 32], ".xz", 5).unwrap();
        sink.write_all(b"hello").unwrap();
        let e = sink.finish(&file_hash).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("write {}", dir.join("nar").join(&dest).display())),
            "{e}"
        );
        assert_eq!(names(&dir.join("nar")), [dest]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rename_into_a_missing_directory_leaves_no_temporary_file() {
        let dir = temp_dir("persist-missing");
        let path = dir.join("upload-tmp");
        let mut tmp = TempFile::new(path.clone(), File::create(&path).unwrap());
        tmp.write_all(b"half a NAR").unwrap();
        let e = tmp
            .persist(&dir.join("no-such-dir").join("x.nar"))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        drop(tmp);
        assert_eq!(names(&dir), Vec::<String>::new());
        // Persisted: the file is at its destination, and Drop leaves it there.
        let mut tmp = TempFile::new(path.clone(), File::create(&path).unwrap());
        tmp.write_all(b"a NAR").unwrap();
        tmp.persist(&dir.join("x.nar")).unwrap();
        drop(tmp);
        assert_eq!(names(&dir), ["x.nar"]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_persisted_file_is_kept_and_an_aborted_one_removed() {
        let dir = temp_dir("persist-ok");
        let cache = Cache::File { dir: dir.clone() };
        cache.prepare().unwrap();
        let mut sink = cache.nar_sink(&[1u8; 32], "", 5).unwrap();
        sink.write_all(b"hello").unwrap();
        let key = sink.finish(&[4u8; 32]).unwrap();
        assert_eq!(fs::read(dir.join(&key)).unwrap(), b"hello");
        let mut sink = cache.nar_sink(&[1u8; 32], "", 5).unwrap();
        sink.write_all(b"bye").unwrap();
        sink.abort();
        assert_eq!(names(&dir.join("nar")), [key.strip_prefix("nar/").unwrap()]);
        let _ = fs::remove_dir_all(&dir);
    }
}
