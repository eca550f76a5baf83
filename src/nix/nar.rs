//! The NAR (Nix ARchive) encoder: the token grammar of `nix-store --dump` over any
//! `Write`, with no filesystem access (see `dump.rs` for the walk).
//!
//! Every token is a string: u64 little-endian length, the bytes, zero padding to a
//! multiple of 8. The grammar (nix-formats.md §1.2):
//! ```text
//! nar  = "nix-archive-1" node
//! node = "(" "type" ( "regular" ["executable" ""] "contents" <bytes>
//!                   | "symlink" "target" <target>
//!                   | "directory" { "entry" "(" "name" <name> "node" node ")" } ) ")"
//! ```
//! Directory entries must be given in byte order of their names; the encoder checks it.

use std::io::{self, Read, Write};

pub const MAGIC: &[u8] = b"nix-archive-1";

/// Streams a NAR into `W`. Calls must follow the grammar: one root node; inside a
/// directory, `entry` … node … `end_entry` pairs in byte order of the names.
pub struct NarEncoder<W: Write> {
    w: W,
    /// For each open directory, the name of its last entry (for the order check).
    dirs: Vec<Option<Vec<u8>>>,
}

fn padding(len: u64) -> usize {
    ((8 - (len % 8)) % 8) as usize
}

impl<W: Write> NarEncoder<W> {
    /// Start a NAR: writes the magic.
    pub fn new(w: W) -> io::Result<Self> {
        let mut enc = NarEncoder {
            w,
            dirs: Vec::new(),
        };
        enc.token(MAGIC)?;
        Ok(enc)
    }

    /// The sink (e.g. to ask it whether it was the side that failed).
    pub fn get_ref(&self) -> &W {
        &self.w
    }

    fn token(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(&(bytes.len() as u64).to_le_bytes())?;
        self.w.write_all(bytes)?;
        self.w.write_all(&[0u8; 8][..padding(bytes.len() as u64)])
    }

    fn tokens(&mut self, toks: &[&[u8]]) -> io::Result<()> {
        toks.iter().try_for_each(|t| self.token(t))
    }

    /// A regular file of exactly `size` bytes read from `contents`. Fails (without
    /// writing a short NAR silently) if the reader yields a different length, as when
    /// a file changes while it is read.
    pub fn regular(
        &mut self,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        self.tokens(&[b"(", b"type", b"regular"])?;
        if executable {
            self.tokens(&[b"executable", b""])?;
        }
        self.token(b"contents")?;
        self.w.write_all(&size.to_le_bytes())?;
        let copied = io::copy(&mut contents.take(size), &mut self.w)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file shrank while reading: expected {size} bytes, got {copied}"),
            ));
        }
        let mut probe = [0u8; 1];
        if contents.read(&mut probe)? != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file grew while reading: more than {size} bytes"),
            ));
        }
        self.w.write_all(&[0u8; 8][..padding(size)])?;
        self.token(b")")
    }

    /// A symlink; the target is stored as-is (absolute, relative or dangling).
    pub fn symlink(&mut self, target: &[u8]) -> io::Result<()> {
        self.tokens(&[b"(", b"type", b"symlink", b"target", target, b")"])
    }

    /// Open a directory node.
    pub fn start_directory(&mut self) -> io::Result<()> {
        self.dirs.push(None);
        self.tokens(&[b"(", b"type", b"directory"])
    }

    /// Open an entry of the current directory; its node follows.
    pub fn entry(&mut self, name: &[u8]) -> io::Result<()> {
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid file name in NAR",
            ));
        }
        let last = self.dirs.last_mut().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "NAR entry outside a directory")
        })?;
        if last.as_deref().is_some_and(|prev| prev >= name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NAR entries not in byte order",
            ));
        }
        *last = Some(name.to_vec());
        self.tokens(&[b"entry", b"(", b"name", name, b"node"])
    }

    /// Close the current entry.
    pub fn end_entry(&mut self) -> io::Result<()> {
        self.token(b")")
    }

    /// Close the current directory node.
    pub fn end_directory(&mut self) -> io::Result<()> {
        self.dirs.pop();
        self.token(b")")
    }

    /// The inner writer, once the root node is complete.
    pub fn finish(self) -> W {
        self.w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_file_hello() {
        // nix-formats.md §11.1: `nix-store --dump` of a file containing "hello".
        let mut enc = NarEncoder::new(Vec::new()).unwrap();
        enc.regular(false, 5, &mut &b"hello"[..]).unwrap();
        let nar = enc.finish();
        let mut expect = Vec::new();
        for tok in [
            &b"nix-archive-1"[..],
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"hello",
            b")",
        ] {
            expect.extend_from_slice(&(tok.len() as u64).to_le_bytes());
            expect.extend_from_slice(tok);
            expect.resize(expect.len().div_ceil(8) * 8, 0);
        }
        assert_eq!(nar, expect);
        assert_eq!(nar.len(), 120);
        use sha2::Digest;
        assert_eq!(
            crate::encoding::hex_encode(&sha2::Sha256::digest(&nar)),
            "0a430879c266f8b57f4092a0f935cf3facd48bbccde5760d4748ca405171e969"
        );
    }

    #[test]
    fn directory_example_512_bytes() {
        // nix-formats.md §11.2: x (mode 755, "a") and symlink l -> x.
        let mut enc = NarEncoder::new(Vec::new()).unwrap();
        enc.start_directory().unwrap();
        enc.entry(b"l").unwrap();
        enc.symlink(b"x").unwrap();
        enc.end_entry().unwrap();
        enc.entry(b"x").unwrap();
        enc.regular(true, 1, &mut &b"a"[..]).unwrap();
        enc.end_entry().unwrap();
        enc.end_directory().unwrap();
        let nar = enc.finish();
        assert_eq!(nar.len(), 512);
        use sha2::Digest;
        assert_eq!(
            crate::nix::nixbase32::encode(&sha2::Sha256::digest(&nar)),
            "1gw0iwy5wi98nyr8h9s6mhah2h41c2jzn77ggraz28dxy6gn3sxf"
        );
    }

    #[test]
    fn smallest_nar_is_112_bytes() {
        let mut enc = NarEncoder::new(Vec::new()).unwrap();
        enc.regular(false, 0, &mut &b""[..]).unwrap();
        assert_eq!(enc.finish().len(), 112);
    }

    #[test]
    fn rejects_unsorted_and_bad_names_and_length_changes() {
        let mut enc = NarEncoder::new(Vec::new()).unwrap();
        enc.start_directory().unwrap();
        enc.entry(b"b").unwrap();
        enc.symlink(b"x").unwrap();
        enc.end_entry().unwrap();
        assert!(enc.entry(b"a").is_err());
        assert!(enc.entry(b"b").is_err());
        assert!(enc.entry(b"a/b").is_err());
        assert!(enc.entry(b"..").is_err());
        let mut enc = NarEncoder::new(Vec::new()).unwrap();
        assert!(enc.regular(false, 10, &mut &b"short"[..]).is_err());
        let mut enc = NarEncoder::new(Vec::new()).unwrap();
        assert!(enc.regular(false, 2, &mut &b"long"[..]).is_err());
    }
}
