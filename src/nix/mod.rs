//! The Nix side, knowing nothing of S3: the formats (base-32, store paths, NAR,
//! narinfo, signatures, hash spellings, `nix path-info --json`) as pure code over
//! bytes and strings, and the three places that touch the machine: [`dump`] walks a
//! path on disk into a NAR, [`local`] runs the `nix` tools, [`user_path`] resolves
//! what a user typed to a store path.
//!
//! Bottom to top: `nixbase32`, `store_path`, `hash`, `nar`, `narinfo`, `signing`,
//! `pathinfo`; then `dump`, `user_path`, `local`.

pub mod dump;
pub mod hash;
pub mod local;
pub(crate) mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod pathinfo;
pub mod signing;
pub mod store_path;
pub mod user_path;
