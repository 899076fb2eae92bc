//! Runs the `vidkv` binary Cargo built for the integration tests. (Each test crate takes
//! what it needs, hence no dead-code warnings for the rest.)
#![allow(dead_code)]

use std::process::{Command, Output};

/// `vidkv args…`, whatever its exit status.
pub fn vidkv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vidkv"))
        .args(args)
        .output()
        .unwrap()
}

/// `vidkv args…`, which must succeed (its stderr is the failure message).
pub fn vidkv_ok(args: &[&str]) -> Output {
    let out = vidkv(args);
    assert!(
        out.status.success(),
        "vidkv {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
