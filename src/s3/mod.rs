//! The S3 layer: everything narpush knows of S3 and nothing of Nix. A [`Client`] for
//! one bucket (pooled connections, retries, S3's errors kept whole), the
//! [`StreamingUpload`] of one object of unknown length, SigV4 in its published steps
//! (pure, time as an argument), the TLS trust store, the wire formats, and the plain
//! [`Credentials`] and [`Endpoint`] a client is configured with. It imports nothing
//! from the modules above it (only the leaf `encoding`); turning a Nix `s3://` URL
//! into an [`S3Config`] happens above, in `store_url`.
//!
//! Bottom to top: `credentials`, `endpoint`, `xml`, `sigv4`, `tls`, `error`,
//! `client`, `upload`.

mod client;
mod credentials;
mod endpoint;
mod error;
pub(crate) mod sigv4;
pub(crate) mod tls;
mod upload;
mod xml;

pub use client::{Client, ObjectEntry, RetryPolicy, S3Config};
pub use credentials::Credentials;
pub use endpoint::{validate_bucket, Endpoint, Scheme};
pub use error::{S3Error, S3ErrorKind, TransportKind};
pub use tls::TrustError;
pub use upload::{parts_in_flight, StreamingUpload, MAX_PART_SIZE, MIN_PART_SIZE};
