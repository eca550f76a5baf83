//! Compression of NARs: the methods narpush writes (`zstd`, the default; `xz`;
//! `none`), their names and file extensions exactly as Nix spells them in narinfo
//! `Compression:` and `URL:`, and streaming encoders over any `Write`.

use crate::error::{Error, Result};
use std::io::{self, Write};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
}

/// zstd's level when none is given (zstd's own default, and Nix's).
pub const ZSTD_DEFAULT_LEVEL: i32 = 3;
/// xz's preset when none is given (liblzma's default, what Nix writes).
pub const XZ_DEFAULT_LEVEL: i32 = 6;

impl Compression {
    pub fn parse(name: &str) -> Result<Compression> {
        match name {
            "zstd" => Ok(Compression::Zstd),
            "xz" => Ok(Compression::Xz),
            "none" => Ok(Compression::None),
            other => Err(Error::Usage(format!(
                "compression '{other}' is not supported; use zstd (default), xz or none"
            ))),
        }
    }

    /// The `Compression:` value.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }

    /// The suffix after `.nar` in the NAR's file name.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Xz => ".xz",
            Compression::Zstd => ".zst",
        }
    }

    /// Check a level for this method; `None` means the default.
    pub fn check_level(self, level: Option<i32>) -> Result<Option<i32>> {
        let range = match self {
            Compression::None => return Ok(None),
            Compression::Xz => 0..=9,
            Compression::Zstd => 1..=22,
        };
        match level {
            Some(-1) => Ok(None),
            Some(l) if !range.contains(&l) => Err(Error::Usage(format!(
                "compression level {l} is out of range for {}: use {}..={}",
                self.name(),
                range.start(),
                range.end()
            ))),
            other => Ok(other),
        }
    }
}

/// A streaming compressor; `finish` flushes the trailer and returns the inner writer.
pub enum Encoder<W: Write> {
    None(W),
    Xz(Box<lzma_rust2::XzWriter<W>>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// `threads` > 1 enables zstd's multithreaded mode (used for large NARs).
    pub fn new(
        method: Compression,
        level: Option<i32>,
        threads: u32,
        w: W,
    ) -> io::Result<Encoder<W>> {
        Ok(match method {
            Compression::None => Encoder::None(w),
            Compression::Xz => {
                let preset = level.unwrap_or(XZ_DEFAULT_LEVEL) as u32;
                let opts = lzma_rust2::XzOptions::with_preset(preset);
                Encoder::Xz(Box::new(lzma_rust2::XzWriter::new(w, opts)?))
            }
            Compression::Zstd => {
                let mut enc =
                    zstd::stream::write::Encoder::new(w, level.unwrap_or(ZSTD_DEFAULT_LEVEL))?;
                if threads > 1 {
                    enc.multithread(threads)?;
                }
                enc.include_checksum(true)?;
                Encoder::Zstd(enc)
            }
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Xz(x) => x.finish(),
            Encoder::Zstd(z) => z.finish(),
        }
    }

    /// The inner writer (to reach an adapter between us and the sink).
    pub fn get_mut(&mut self) -> &mut W {
        match self {
            Encoder::None(w) => w,
            Encoder::Xz(x) => x.inner_mut(),
            Encoder::Zstd(z) => z.get_mut(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Xz(x) => x.write(buf),
            Encoder::Zstd(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Xz(x) => x.flush(),
            Encoder::Zstd(z) => z.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> Vec<u8> {
        (0..20_000u32)
            .flat_map(|i| format!("line {} of a compressible text\n", i % 977).into_bytes())
            .collect()
    }

    #[test]
    fn names_and_extensions_as_nix_writes_them() {
        assert_eq!(
            (Compression::Zstd.name(), Compression::Zstd.extension()),
            ("zstd", ".zst")
        );
        assert_eq!(
            (Compression::Xz.name(), Compression::Xz.extension()),
            ("xz", ".xz")
        );
        assert_eq!(
            (Compression::None.name(), Compression::None.extension()),
            ("none", "")
        );
        assert!(Compression::parse("gzip")
            .unwrap_err()
            .to_string()
            .contains("zstd"));
        assert!(Compression::Zstd.check_level(Some(23)).is_err());
        assert!(Compression::Xz.check_level(Some(9)).is_ok());
    }

    #[test]
    fn zstd_roundtrips_and_compresses() {
        let data = sample();
        for threads in [1, 2] {
            let mut enc = Encoder::new(Compression::Zstd, None, threads, Vec::new()).unwrap();
            enc.write_all(&data).unwrap();
            let out = enc.finish().unwrap();
            assert!(out.len() * 10 < data.len());
            assert_eq!(zstd::decode_all(&out[..]).unwrap(), data);
        }
    }

    #[test]
    fn xz_really_compresses() {
        let data = sample();
        let mut enc = Encoder::new(Compression::Xz, None, 1, Vec::new()).unwrap();
        enc.write_all(&data).unwrap();
        let out = enc.finish().unwrap();
        assert!(
            out.len() * 10 < data.len(),
            "xz output {} of {}",
            out.len(),
            data.len()
        );
        let mut back = Vec::new();
        lzma_rust2::XzReader::new(&out[..], false)
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }
}
