//! Compiles in the protobuf descriptors of Envoy's rate limit service
//! (`envoy/service/ratelimit/v3/rls.proto` and what it imports) for gRPC
//! server reflection, taken from the descriptor set the `envoy-types`
//! crate ships. Without it (a source layout where the set cannot be found)
//! the server runs without reflection, and the build says so.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

const ROOT: &str = "envoy/service/ratelimit/v3/rls.proto";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
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
