//! narpush: turn a machine's Nix builds into a signed binary cache on any
//! S3-compatible store. A pure core (formats, signing, SigV4) inside a thin shell
//! (filesystem walk, the `nix` child process, the network, `main`).
#![forbid(unsafe_code)]

pub mod app;
pub(crate) mod cache;
pub mod cli;
pub(crate) mod compress;
pub mod config;
pub mod creds;
pub(crate) mod duration;
pub mod encoding;
pub mod error;
pub(crate) mod glob;
pub(crate) mod hashing;
pub(crate) mod life;
pub mod nix;
pub(crate) mod pending;
pub(crate) mod push;
pub(crate) mod pusher;
pub(crate) mod pushlog;
pub(crate) mod queue;
pub mod s3;
pub(crate) mod session;
pub(crate) mod settings;
pub mod store_url;
pub(crate) mod sys;
pub(crate) mod uploads;
