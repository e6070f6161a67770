//! Builds `ic-resolver` (src/resolver/ic-resolver.rs: std only) as a static binary with the
//! same compiler, for `src/engine/names.rs` to push into its resolver containers.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "src/resolver/ic-resolver.rs";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("ic-resolver");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2024",
            "--crate-name",
            "ic_resolver",
            "-C",
            "opt-level=s",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=symbols",
            "-C",
            "panic=abort",
            src,
            "-o",
        ])
        .arg(&out)
        .status()
        .expect("running rustc for ic-resolver");
    assert!(status.success(), "building ic-resolver failed");
}
