//! Compiles in the protobuf descriptors of Envoy's rate limit service
//! (`envoy/service/ratelimit/v3/rls.proto` and what it imports) for gRPC
//! server reflection, taken from the descriptor set the `envoy-types`
//! crate ships. Without it (a source layout where the set cannot be found)
//! the server runs without reflection, and the build says so.
//!
//! Also names the commit built, for `floodgate_build_info`:
//! `FLOODGATE_COMMIT` from the environment when set (a build from a source
//! archive), else `git rev-parse --short HEAD`, else `unknown`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

const ROOT: &str = "envoy/service/ratelimit/v3/rls.proto";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-env=FLOODGATE_COMMIT={}", commit());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("rls_descriptors.bin");
    let bytes = match descriptors() {
        Ok(bytes) => bytes,
        Err(why) => {
            println!("cargo::warning=gRPC server reflection left out: {why}");
            Vec::new()
        }
    };
    std::fs::write(&out, bytes).expect("OUT_DIR is writable");
}

/// The commit this build is of; `unknown` outside a git checkout or
/// without git. Never fails the build.
fn commit() -> String {
    println!("cargo::rerun-if-env-changed=FLOODGATE_COMMIT");
    if let Some(commit) = std::env::var("FLOODGATE_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
    {
        return commit.trim().to_owned();
    }
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .args(args)
            .current_dir(std::env::var_os("CARGO_MANIFEST_DIR")?)
            .output()
            .ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // Built again when HEAD moves: a checkout or a commit changes HEAD or
    // the branch it names. Only files that exist are named, as cargo
    // rebuilds every time for one that does not.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = PathBuf::from(dir);
        let mut watched = vec![dir.join("HEAD"), dir.join("packed-refs")];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(dir.join(branch));
        }
        for path in watched.iter().filter(|p| p.exists()) {
            println!("cargo::rerun-if-changed={}", path.display());
        }
    }
    commit
}

/// The rate limit service's file and every file it imports, encoded.
fn descriptors() -> Result<Vec<u8>, String> {
    let set_path = envoy_types_dir()?.join("src/generated/types.bin");
    println!("cargo::rerun-if-changed={}", set_path.display());
    // The tests speak to the service with classes built from this set.
    println!(
        "cargo::rustc-env=FLOODGATE_ENVOY_DESCRIPTOR_SET={}",
        set_path.display()
    );
    let bytes =
        std::fs::read(&set_path).map_err(|e| format!("cannot read {}: {e}", set_path.display()))?;
    let set = FileDescriptorSet::decode(bytes.as_slice())
        .map_err(|e| format!("{} is not a descriptor set: {e}", set_path.display()))?;
    let by_name: HashMap<&str, &FileDescriptorProto> =
        set.file.iter().map(|f| (f.name(), f)).collect();
    let mut wanted = BTreeSet::new();
    let mut next = vec![ROOT];
    while let Some(name) = next.pop() {
        if !wanted.insert(name) {
            continue;
        }
        let file = by_name
            .get(name)
            .ok_or_else(|| format!("{name} is not in {}", set_path.display()))?;
        next.extend(file.dependency.iter().map(String::as_str));
    }
    let kept = FileDescriptorSet {
        file: set
            .file
            .iter()
            .filter(|f| wanted.contains(f.name()))
            .cloned()
            .collect(),
    };
    Ok(kept.encode_to_vec())
}

/// Where cargo keeps the `envoy-types` crate this build uses.
fn envoy_types_dir() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").ok_or("no CARGO_MANIFEST_DIR")?)
            .join("Cargo.toml");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("cargo metadata printed no JSON: {e}"))?;
    let manifest_path = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("cargo metadata does not list envoy-types")?;
    Path::new(manifest_path)
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{manifest_path} has no directory"))
}
