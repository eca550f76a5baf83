//! narpush: turn a machine's Nix builds into a signed binary cache on any
//! S3-compatible store. A pure core (formats, signing, SigV4) inside a thin shell
//! (filesystem walk, the `nix` child process, the network, `main`).
#![forbid(unsafe_code)]

pub mod app;
pub mod cache;
pub mod cli;
pub mod compress;
pub mod config;
pub mod creds;
pub mod dump;
pub mod encoding;
pub mod error;
pub mod glob;
pub mod hashing;
pub mod life;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod pathinfo;
pub mod pending;
pub mod push;
pub mod pusher;
pub mod pushlog;
pub mod queue;
pub mod s3;
pub mod signing;
pub mod sigv4;
pub mod store_path;
pub mod store_url;
pub mod tls;
pub mod uploads;
