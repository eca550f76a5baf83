//! placeholder: the S3 operations (written by the S3 transport work).
use std::fmt;

#[derive(Debug)]
pub struct S3Error;

impl S3Error {
    pub fn is_transient(&self) -> bool {
        false
    }
}

impl fmt::Display for S3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("s3 error")
    }
}
