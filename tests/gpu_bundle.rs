//! `benches/gpu/bundle.sh`'s output, checked on a machine without a GPU: the files a GPU
//! host needs, each under the 64 MiB a call carries, the manifest's SHA-256s, and the model
//! parts joining back into the pinned model. (Fast compression and this build's binary: the
//! layout is what is checked, not the x86-64-v3 build, which takes half an hour.)

mod common;

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn the_bundle_holds_the_binary_the_sources_and_the_model_in_parts() {
    let model = common::model_path();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let engine_src = std::fs::read_dir(dirs_registry().expect("cargo's registry sources"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("llama-cpp-sys-2-0.1.161/llama.cpp"))
        .find(|p| p.is_dir())
        .expect("llama-cpp-sys-2's llama.cpp sources");
    let out = Command::new(root.join("benches/gpu/bundle.sh"))
        .env("BIN", env!("CARGO_BIN_EXE_state-pack"))
        .env("BUNDLE_DIR", &bundle)
        .env("XZ_LEVEL", "0")
        .env("LLAMA_SERVER_SRC", &engine_src)
        .env("MODEL", &model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let manifest = std::fs::read_to_string(bundle.join("MANIFEST")).unwrap();
    let mut parts = Vec::new();
    for line in manifest.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        if name == "model.gguf" {
            assert_eq!(sum, sha256(&std::fs::read(&model).unwrap()));
            continue;
        }
        let bytes = std::fs::read(bundle.join(name)).unwrap();
        assert_eq!(sum, sha256(&bytes), "{name}");
        assert!(bytes.len() <= 36 << 20, "{name} is {} bytes", bytes.len());
        if name.starts_with("model.xz.part-") {
            parts.push(name.to_string());
        }
    }
    for f in ["state-pack.xz", "llama.cpp.tar.xz"] {
        assert!(manifest.contains(f), "{f} in {manifest}");
    }
    assert!(
        parts.len() >= 2,
        "the model does not fit one call: {parts:?}"
    );
    parts.sort();
    let mut joined = Vec::new();
    for p in &parts {
        joined.extend(std::fs::read(bundle.join(p)).unwrap());
    }
    let joined_file = dir.path().join("model.xz");
    std::fs::write(&joined_file, joined).unwrap();
    let model_back = Command::new("xz")
        .arg("-dc")
        .arg(&joined_file)
        .output()
        .unwrap()
        .stdout;
    assert_eq!(sha256(&model_back), sha256(&std::fs::read(&model).unwrap()));
    // The sources carry both trees and the AMX fix the host's build includes.
    let list = Command::new("tar")
        .args(["-tJf"])
        .arg(bundle.join("llama.cpp.tar.xz"))
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for entry in [
        "./engine/CMakeLists.txt",
        "./server/CMakeLists.txt",
        "./ggml-amx-tilecfg.cmake",
    ] {
        assert!(
            list.lines().any(|l| l == entry),
            "{entry} not in the sources"
        );
    }
}

/// `$CARGO_HOME/registry/src`.
fn dirs_registry() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    Some(home.join("registry/src"))
}
