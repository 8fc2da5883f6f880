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

/// Where cargo keeps the `envoy-types` crate this build uses: as `cargo
/// metadata` names it (which also finds vendored and patched sources), or,
/// where that cannot answer offline (a first build, before the
/// dev-dependencies it also resolves are downloaded), the registry's copy
/// of the version Cargo.lock pins.
fn envoy_types_dir() -> Result<PathBuf, String> {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("no CARGO_MANIFEST_DIR")?);
    match metadata_dir(&manifest_dir) {
        Ok(dir) => Ok(dir),
        Err(why) => {
            registry_dir(&manifest_dir).map_err(|fallback| format!("{why}; and {fallback}"))
        }
    }
}

/// `envoy-types`' directory from `cargo metadata`, offline, for the
/// platform built for (so other platforms' crates, never downloaded for
/// this build, are not needed).
fn metadata_dir(manifest_dir: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["metadata", "--format-version", "1", "--offline"]);
    if let Ok(target) = std::env::var("TARGET") {
        command.args(["--filter-platform", &target]);
    }
    let output = command
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "cargo metadata failed: {}",
            stderr.lines().next().unwrap_or("").trim()
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

/// `envoy-types`' directory in cargo's registry sources, for the version
/// the nearest Cargo.lock (the workspace's, or a published package's own)
/// pins.
fn registry_dir(manifest_dir: &Path) -> Result<PathBuf, String> {
    let lock = manifest_dir
        .ancestors()
        .map(|dir| dir.join("Cargo.lock"))
        .find(|path| path.is_file())
        .ok_or("no Cargo.lock above the package")?;
    let text = std::fs::read_to_string(&lock)
        .map_err(|e| format!("cannot read {}: {e}", lock.display()))?;
    let version = locked_version(&text, "envoy-types")
        .ok_or_else(|| format!("{} pins no envoy-types", lock.display()))?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let sources = cargo_home.join("registry/src");
    let registries = std::fs::read_dir(&sources)
        .map_err(|e| format!("cannot list {}: {e}", sources.display()))?;
    registries
        .filter_map(Result::ok)
        .map(|registry| registry.path().join(format!("envoy-types-{version}")))
        .find(|dir| dir.join("Cargo.toml").is_file())
        .ok_or_else(|| format!("envoy-types {version} is not under {}", sources.display()))
}

/// The version a Cargo.lock pins for `name` (its first entry).
fn locked_version<'a>(lock: &'a str, name: &str) -> Option<&'a str> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let version = lines.next()?.trim().strip_prefix("version = \"")?;
            return version.strip_suffix('"');
        }
    }
    None
}
