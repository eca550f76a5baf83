//! Compression of NARs: the methods narpush writes (`zstd`, the default; `xz`;
//! `none`), their names and file extensions exactly as Nix spells them in narinfo
//! `Compression:` and `URL:`, and streaming encoders over any `Write`.

use std::io::{self, Write};
use std::num::NonZeroU64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
}

/// zstd's level when none is given (zstd's own default, and Nix's).
pub const ZSTD_DEFAULT_LEVEL: i32 = 3;
/// Input per zstd worker job in multithreaded mode.
const ZSTD_JOB_SIZE: u32 = 2 << 20;
/// xz's preset when none is given (liblzma's default, what Nix writes).
pub const XZ_DEFAULT_LEVEL: i32 = 6;
/// The xz block size range in multithreaded mode, in dictionaries. Each block
/// starts with an empty dictionary, so a block only a little larger than the
/// dictionary costs ratio (liblzma too: 10 MiB blocks at preset 6 made text 1.1%
/// larger than one block, 16 MiB 0.9%); the largest is `xz -T`'s default block
/// (3 × 8 MiB at preset 6). Larger blocks compress a little better, smaller ones
/// spread a NAR over more threads.
const XZ_MIN_BLOCK_DICTS: u64 = 2;
const XZ_MAX_BLOCK_DICTS: u64 = 3;

impl Compression {
    /// The method named `name`; the error is the message, without saying where the
    /// name came from (the caller adds that).
    pub fn parse(name: &str) -> std::result::Result<Compression, String> {
        match name {
            "zstd" => Ok(Compression::Zstd),
            "xz" => Ok(Compression::Xz),
            "none" => Ok(Compression::None),
            other => Err(format!(
                "unknown compression '{other}'; use zstd, xz or none"
            )),
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

    /// The one rule for a level, wherever it was given (flag, environment, config file
    /// or store URL): `None` and `-1` (Nix's spelling of "the default") mean the
    /// method's default, `none` ignores any level, and anything else must be in the
    /// method's range (zstd 1..=22, xz 0..=9). The error is the message, without
    /// saying where the level came from (the caller adds that).
    pub fn check_level(self, level: Option<i32>) -> std::result::Result<Option<i32>, String> {
        let range = match self {
            Compression::None => return Ok(None),
            Compression::Xz => 0..=9,
            Compression::Zstd => 1..=22,
        };
        match level {
            Some(-1) => Ok(None),
            Some(l) if !range.contains(&l) => Err(format!(
                "level {l} is out of range for {} ({}..={})",
                self.name(),
                range.start(),
                range.end()
            )),
            other => Ok(other),
        }
    }
}

/// A streaming compressor; `finish` flushes the trailer and returns the inner writer.
pub enum Encoder<W: Write> {
    None(W),
    Xz(Box<lzma_rust2::XzWriter<W>>),
    /// One xz stream of independent blocks compressed on several threads; at most
    /// threads + 2 blocks are held at once (lzma-rust2 bounds its queue).
    XzMt(Box<lzma_rust2::XzWriterMt<W>>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

/// The block size that spreads `input_size` bytes evenly over `threads` workers in
/// as few rounds as blocks of at most [`XZ_MAX_BLOCK_DICTS`] dictionaries allow,
/// and never below [`XZ_MIN_BLOCK_DICTS`]; `None` when the input fits in one
/// block, which the single-threaded encoder writes better.
fn xz_block_size(input_size: u64, threads: u32, dict_size: u64) -> Option<u64> {
    let threads = u64::from(threads.max(1));
    let max_block = XZ_MAX_BLOCK_DICTS * dict_size;
    let rounds = input_size.div_ceil(threads * max_block).max(1);
    let block = input_size
        .div_ceil(threads * rounds)
        .max(XZ_MIN_BLOCK_DICTS * dict_size);
    (threads > 1 && block < input_size).then_some(block)
}

impl<W: Write> Encoder<W> {
    /// `threads` > 1 compresses on that many threads when `input_size` (the NAR's
    /// size, a hint for xz's block size) is large enough to split.
    pub fn new(
        method: Compression,
        level: Option<i32>,
        threads: u32,
        input_size: u64,
        w: W,
    ) -> io::Result<Encoder<W>> {
        Ok(match method {
            Compression::None => Encoder::None(w),
            Compression::Xz => {
                let preset = level.unwrap_or(XZ_DEFAULT_LEVEL) as u32;
                let mut opts = lzma_rust2::XzOptions::with_preset(preset);
                let dict = u64::from(opts.lzma_options.dict_size);
                match xz_block_size(input_size, threads, dict).and_then(NonZeroU64::new) {
                    Some(block) => {
                        opts.set_block_size(Some(block));
                        Encoder::XzMt(Box::new(lzma_rust2::XzWriterMt::new(w, opts, threads)?))
                    }
                    None => Encoder::Xz(Box::new(lzma_rust2::XzWriter::new(w, opts)?)),
                }
            }
            Compression::Zstd => {
                let mut enc =
                    zstd::stream::write::Encoder::new(w, level.unwrap_or(ZSTD_DEFAULT_LEVEL))?;
                if threads > 1 {
                    enc.multithread(threads)?;
                    // Smaller jobs than zstd's default (4 windows, 8 MiB at level 3)
                    // keep the workers' buffers inside narpush's memory budget.
                    enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
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
            Encoder::XzMt(x) => x.finish(),
            Encoder::Zstd(z) => z.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Xz(x) => x.write(buf),
            Encoder::XzMt(x) => x.write(buf),
            Encoder::Zstd(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Xz(x) => x.flush(),
            Encoder::XzMt(x) => x.flush(),
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
            let mut enc = Encoder::new(Compression::Zstd, None, threads, 0, Vec::new()).unwrap();
            enc.write_all(&data).unwrap();
            let out = enc.finish().unwrap();
            assert!(out.len() * 10 < data.len());
            assert_eq!(zstd::decode_all(&out[..]).unwrap(), data);
        }
    }

    #[test]
    fn xz_really_compresses() {
        let data = sample();
        let mut enc = Encoder::new(Compression::Xz, None, 1, 0, Vec::new()).unwrap();
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

    #[test]
    fn xz_blocks_spread_evenly_within_two_to_three_dictionaries() {
        const MIB: u64 = 1 << 20;
        let dict = 8 * MIB;
        // One thread, or input that fits one block: the single-threaded encoder.
        assert_eq!(xz_block_size(100 * MIB, 1, dict), None);
        assert_eq!(xz_block_size(16 * MIB, 2, dict), None);
        // 40 MiB on 2 threads: two 20 MiB blocks, one round.
        assert_eq!(xz_block_size(40 * MIB, 2, dict), Some(20 * MIB));
        // 118 MiB on 2 threads: 3 rounds of 2 blocks of at most 24 MiB.
        assert_eq!(
            xz_block_size(118 * MIB, 2, dict),
            Some((118 * MIB).div_ceil(6))
        );
        // Many threads, small input: blocks of two dictionaries.
        assert_eq!(xz_block_size(40 * MIB, 16, dict), Some(2 * dict));
        for (size, threads) in [(17 * MIB, 2), (1000 * MIB, 4), (6 << 30, 3)] {
            let b = xz_block_size(size, threads, dict).unwrap();
            assert!((2 * dict..=3 * dict).contains(&b), "{size} {threads}: {b}");
            let blocks = size.div_ceil(b);
            assert!(
                blocks >= u64::from(threads) || b == 2 * dict,
                "{size} {threads}: {b}"
            );
        }
    }

    /// A multithreaded xz stream (several blocks, preset 0 for a small dictionary)
    /// decodes to the input (liblzma, through real Nix: tests/nix_accepts.rs).
    #[test]
    fn xz_multithreaded_is_one_valid_stream_of_several_blocks() {
        let data: Vec<u8> = sample().repeat(3);
        let dict = u64::from(lzma_rust2::XzOptions::with_preset(0).lzma_options.dict_size);
        assert!(data.len() as u64 > 4 * dict, "{} bytes", data.len());
        let mut enc =
            Encoder::new(Compression::Xz, Some(0), 2, data.len() as u64, Vec::new()).unwrap();
        assert!(matches!(enc, Encoder::XzMt(_)));
        enc.write_all(&data).unwrap();
        let out = enc.finish().unwrap();
        let mut back = Vec::new();
        lzma_rust2::XzReader::new(&out[..], false)
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }
}
