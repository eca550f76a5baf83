//! `StreamingUpload`: one object of unknown length streamed with bounded memory, as
//! a single PutObject when it fits in one part, else a multipart upload whose parts
//! go up several at a time ([`parts_in_flight`]). It takes the [`Client`] it uploads
//! with; the client knows nothing of it.

use super::client::Client;
use super::error::{S3Error, S3ErrorInfo, S3ErrorKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The smallest S3 multipart part (except the last): 5 MiB.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Most parts a multipart upload may have.
pub const MAX_PARTS: u64 = 10_000;
/// Largest part S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// The part size for a stream of about `expected_len` bytes: at least `min_part`
/// (and S3's 5 MiB), grown in whole MiB so the stream fits in 10,000 parts.
pub fn part_size_for(expected_len: u64, min_part: usize) -> usize {
    const MIB: u64 = 1024 * 1024;
    let min = (min_part as u64).max(MIN_PART_SIZE);
    let needed = expected_len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    needed.max(min).min(MAX_PART_SIZE) as usize
}

/// What [`StreamingUpload::on_create`] calls: `f(key, upload_id)`.
pub type OnCreate = Box<dyn FnMut(&str, &str) + Send>;

/// Streams one object of unknown length with bounded memory: buffers up to part_size;
/// if the stream ends before the buffer fills, a single PutObject; otherwise a multipart
/// upload whose parts are all exactly part_size except the last (Cloudflare R2 needs that),
/// growing part_size up front from `expected_len` so there are never more than 10,000 parts.
/// Any error, or dropping it unfinished, aborts the multipart upload (no orphans).
/// The key should be this upload's own (narpush adds a random part): a completion
/// whose answer was lost is recognised by an object of exactly the streamed size.
pub struct StreamingUpload {
    client: Client,
    key: String,
    content_type: &'static str,
    part_size: usize,
    buf: Vec<u8>,
    upload_id: Option<String>,
    parts: Vec<(u32, String)>,
    /// The number of the last part handed to the sender.
    next_part: u32,
    total: u64,
    failed: Option<S3Error>,
    finished: bool,
    /// Called with the key and upload id right after CreateMultipartUpload.
    on_create: Option<OnCreate>,
    /// The threads that upload full parts while the next one fills, so compressing
    /// and sending overlap (memory: the parts in flight and the one filling).
    sender: Option<PartSender>,
    /// How many parts may be in flight at once ([`parts_in_flight`]).
    in_flight: usize,
}

/// Memory for one upload's parts (those in flight and the one filling): with the at
/// most four large NARs a push sends at once, 64 MiB in all.
const PART_MEMORY: usize = 16 << 20;

/// Parts in flight at once for `part_size`: as many as fit in [`PART_MEMORY`] beside
/// the one filling, at least one. Over a slow link they go up side by side; when the
/// compressor is the slower side, there is only ever one to send anyway.
pub fn parts_in_flight(part_size: usize) -> usize {
    (PART_MEMORY / part_size.max(1)).saturating_sub(1).max(1)
}

type PartResult = Result<Vec<(u32, String)>, S3Error>;

/// Threads taking full parts from a rendezvous channel (a part is handed over only
/// when a thread is free) and uploading them; after a failure the others stop taking
/// parts, so the writer learns of it at its next part.
struct PartSender {
    tx: std::sync::mpsc::SyncSender<(u32, Vec<u8>)>,
    handles: Vec<std::thread::JoinHandle<PartResult>>,
}

impl PartSender {
    fn start(client: Client, key: String, upload_id: String, threads: usize) -> PartSender {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u32, Vec<u8>)>(0);
        let rx = Arc::new(Mutex::new(rx));
        let failed = Arc::new(AtomicBool::new(false));
        let handles = (0..threads.max(1))
            .map(|_| {
                let (client, key, id) = (client.clone(), key.clone(), upload_id.clone());
                let (rx, failed) = (rx.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut parts = Vec::new();
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((n, body)) = next else { break };
                        if failed.load(Ordering::SeqCst) {
                            break;
                        }
                        match client.upload_part(&key, &id, n, &body) {
                            Ok(etag) => parts.push((n, etag)),
                            Err(e) => {
                                failed.store(true, Ordering::SeqCst);
                                return Err(e);
                            }
                        }
                    }
                    Ok(parts)
                })
            })
            .collect();
        PartSender { tx, handles }
    }

    /// Wait for the parts sent so far; their numbers and ETags in order, or the first
    /// error.
    fn join(self) -> PartResult {
        drop(self.tx);
        let mut parts = Vec::new();
        let mut first_error = None;
        for h in self.handles {
            match h
                .join()
                .unwrap_or_else(|_| panic!("part upload thread panicked"))
            {
                Ok(p) => parts.extend(p),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                parts.sort_by_key(|(n, _)| *n);
                Ok(parts)
            }
        }
    }
}

impl StreamingUpload {
    pub fn new(
        client: &Client,
        key: String,
        content_type: &'static str,
        part_size: usize,
        expected_len: u64,
    ) -> StreamingUpload {
        let part_size = part_size_for(expected_len, part_size);
        StreamingUpload {
            client: client.clone(),
            key,
            content_type,
            part_size,
            buf: Vec::new(),
            upload_id: None,
            parts: Vec::new(),
            next_part: 0,
            total: 0,
            failed: None,
            finished: false,
            on_create: None,
            sender: None,
            in_flight: parts_in_flight(part_size),
        }
    }

    /// Call `f(key, upload_id)` once the multipart upload is created (to journal it).
    pub fn on_create(&mut self, f: OnCreate) {
        self.on_create = Some(f);
    }

    /// The part size in use.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// Upload what is buffered and complete; returns the object's size.
    pub fn finish(self) -> Result<u64, S3Error> {
        let (total, key) = (self.total, self.key.clone());
        self.finish_as(&key).map(|_| total)
    }

    /// Like [`finish`](Self::finish), but a stream that fit in one part is put under
    /// `single_key` (a name that could only be known at the end, such as the hash of
    /// the content); returns the key the object has.
    pub fn finish_as(mut self, single_key: &str) -> Result<String, S3Error> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let key = if self.upload_id.is_some() {
            self.key.clone()
        } else {
            single_key.to_string()
        };
        let result = match self.upload_id.clone() {
            None => self.client.put_object(&key, &self.buf, self.content_type),
            Some(id) => {
                let r = if self.buf.is_empty() {
                    Ok(())
                } else {
                    self.upload_buffered()
                };
                r.and_then(|()| self.wait_for_parts()).and_then(|()| {
                    let done = self.client.complete_multipart_upload_of(
                        &self.key,
                        &id,
                        &self.parts,
                        self.total,
                    );
                    match done {
                        // An attempt whose answer was lost (a timeout while the server
                        // assembled the object) may have completed it: a retry then
                        // finds no such upload. The key is this upload's own, so an
                        // object of exactly our size under it is ours.
                        Err(_)
                            if self.client.head_object(&self.key).ok().flatten()
                                == Some(self.total) =>
                        {
                            Ok(())
                        }
                        other => other,
                    }
                })
            }
        };
        match result {
            Ok(()) => {
                self.finished = true;
                Ok(key)
            }
            Err(e) => {
                self.abort_quietly();
                Err(e)
            }
        }
    }

    /// Give up, aborting any multipart upload.
    pub fn abort(mut self) {
        self.abort_quietly();
    }

    fn abort_quietly(&mut self) {
        self.finished = true;
        if let Some(sender) = self.sender.take() {
            // Let a part in flight end before the abort, or it could outlive it.
            let _ = sender.join();
        }
        if let Some(id) = self.upload_id.take() {
            // Best effort: the upload failed already; its error is the one to report.
            let _ = self.client.abort_multipart_upload(&self.key, &id);
        }
    }

    /// Wait until every part handed over so far is uploaded (their ETags are then in
    /// `parts`); the first failure among them is the error.
    fn wait_for_parts(&mut self) -> Result<(), S3Error> {
        if let Some(sender) = self.sender.take() {
            let done = sender.join()?;
            self.parts.extend(done);
        }
        Ok(())
    }

    fn upload_buffered(&mut self) -> Result<(), S3Error> {
        let id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self
                    .client
                    .create_multipart_upload(&self.key, self.content_type)?;
                self.upload_id = Some(id.clone());
                if let Some(f) = &mut self.on_create {
                    f(&self.key, &id);
                }
                id
            }
        };
        self.next_part += 1;
        let n = self.next_part;
        if u64::from(n) > MAX_PARTS {
            return Err(S3ErrorInfo {
                kind: S3ErrorKind::Local(format!(
                    "the stream needs more than {MAX_PARTS} parts of {} bytes; the expected length given was too small",
                    self.part_size
                )),
                ..self.client.error_for("UploadPart", Some(&self.key))
            }
            .into());
        }
        let threads = self.in_flight;
        let sender = self.sender.get_or_insert_with(|| {
            PartSender::start(self.client.clone(), self.key.clone(), id.clone(), threads)
        });
        let body = std::mem::take(&mut self.buf);
        if sender.tx.send((n, body)).is_err() {
            // The thread stopped at a failed part: that failure is the error.
            let failed = self.sender.take().map(PartSender::join);
            return Err(match failed {
                Some(Err(e)) => e,
                _ => S3ErrorInfo {
                    kind: S3ErrorKind::Local("the part upload thread stopped".into()),
                    ..self.client.error_for("UploadPart", Some(&self.key))
                }
                .into(),
            });
        }
        Ok(())
    }
}

impl std::io::Write for StreamingUpload {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(std::io::Error::other(e.clone()));
        }
        if data.is_empty() {
            return Ok(0);
        }
        // A full buffer is sent only once more data arrives, so a stream of exactly
        // one part is a single PutObject.
        if self.buf.len() == self.part_size {
            if let Err(e) = self.upload_buffered() {
                self.abort_quietly();
                self.failed = Some(e.clone());
                return Err(std::io::Error::other(e));
            }
        }
        let n = data.len().min(self.part_size - self.buf.len());
        // Grow by doubling but never past one part, so memory stays at part_size.
        let need = self.buf.len() + n;
        if need > self.buf.capacity() {
            let target = (self.buf.capacity() * 2)
                .max(need)
                .max(64 * 1024)
                .min(self.part_size);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(&data[..n]);
        self.total += n as u64;
        Ok(n)
    }

    /// Waits for the parts already handed to the upload thread (the part still
    /// filling stays buffered: S3 parts are all one size).
    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(e) = &self.failed {
            return Err(std::io::Error::other(e.clone()));
        }
        if let Err(e) = self.wait_for_parts() {
            self.abort_quietly();
            self.failed = Some(e.clone());
            return Err(std::io::Error::other(e));
        }
        Ok(())
    }
}

impl Drop for StreamingUpload {
    fn drop(&mut self) {
        if !self.finished {
            self.abort_quietly();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes() {
        const MIB: usize = 1024 * 1024;
        assert_eq!(part_size_for(0, 0), 5 * MIB);
        assert_eq!(part_size_for(1 << 30, 8 * MIB), 8 * MIB);
        // 100 GiB / 10,000 = 10.24 MiB -> 11 MiB.
        assert_eq!(part_size_for(100 << 30, 5 * MIB), 11 * MIB);
        assert!(((100u64 << 30).div_ceil(part_size_for(100 << 30, 5 * MIB) as u64)) <= MAX_PARTS);
        assert_eq!(part_size_for(u64::MAX, 5 * MIB), 5 << 30);
    }
}
