//! The narpush binary: parse arguments, load configuration, run, print the error once.
#![forbid(unsafe_code)]

fn main() {}
