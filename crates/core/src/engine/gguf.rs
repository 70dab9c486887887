//! Just enough of the GGUF format to read a model's metadata before handing it to an engine:
//! a truncated or foreign file gets a clear error here instead of deep inside the engine.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

/// A scalar metadata value (arrays are skipped; none of the keys we read are arrays).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any integer type, widened.
    Int(i128),
    /// `f32` or `f64`, widened.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
}

/// The scalar key/value metadata of a GGUF file.
#[derive(Debug, Clone, Default)]
pub struct GgufMetadata {
    /// Format version.
    pub version: u32,
    /// Number of tensors in the file.
    pub tensor_count: u64,
    /// Scalar entries by key.
    pub entries: HashMap<String, MetaValue>,
}

impl GgufMetadata {
    /// Reads the header and metadata of the GGUF file at `path`.
    pub fn read(path: &Path) -> io::Result<Self> {
        let mut r = BufReader::new(File::open(path)?);
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic)?;
        if &magic != b"GGUF" {
            return Err(invalid("not a GGUF file (bad magic bytes)"));
        }
        let version = read_u32(&mut r)?;
        if !(2..=3).contains(&version) {
            return Err(invalid(&format!("unsupported GGUF version {version}")));
        }
        let tensor_count = read_u64(&mut r)?;
        let kv_count = read_u64(&mut r)?;
        if kv_count > 1_000_000 {
            return Err(invalid("implausible metadata entry count"));
        }
        let mut entries = HashMap::new();
        for _ in 0..kv_count {
            let key = read_string(&mut r)?;
            let ty = read_u32(&mut r)?;
            if let Some(v) = read_value(&mut r, ty)? {
                entries.insert(key, v);
            }
        }
        Ok(Self {
            version,
            tensor_count,
            entries,
        })
    }

    /// An integer entry.
    pub fn int(&self, key: &str) -> Option<i128> {
        match self.entries.get(key) {
            Some(MetaValue::Int(v)) => Some(*v),
            _ => None,
        }
    }

    /// A string entry.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.entries.get(key) {
            Some(MetaValue::Str(v)) => Some(v),
            _ => None,
        }
    }

    /// `{architecture}.{suffix}` as a non-negative integer.
    pub fn arch_usize(&self, suffix: &str) -> Option<usize> {
        let arch = self.str("general.architecture")?;
        self.int(&format!("{arch}.{suffix}"))
            .and_then(|v| usize::try_from(v).ok())
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> io::Result<String> {
    let len = read_u64(r)?;
    if len > 64 << 20 {
        return Err(invalid("implausible string length"));
    }
    let mut b = vec![0u8; len as usize];
    r.read_exact(&mut b)?;
    String::from_utf8(b).map_err(|_| invalid("metadata string is not UTF-8"))
}

fn skip(r: &mut impl Read, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied != n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn scalar_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

fn read_value(r: &mut impl Read, ty: u32) -> io::Result<Option<MetaValue>> {
    let mut b = [0u8; 8];
    Ok(Some(match ty {
        0 => {
            r.read_exact(&mut b[..1])?;
            MetaValue::Int(b[0].into())
        }
        1 => {
            r.read_exact(&mut b[..1])?;
            MetaValue::Int((b[0] as i8).into())
        }
        2 => {
            r.read_exact(&mut b[..2])?;
            MetaValue::Int(u16::from_le_bytes([b[0], b[1]]).into())
        }
        3 => {
            r.read_exact(&mut b[..2])?;
            MetaValue::Int(i16::from_le_bytes([b[0], b[1]]).into())
        }
        4 => MetaValue::Int(read_u32(r)?.into()),
        5 => MetaValue::Int((read_u32(r)? as i32).into()),
        6 => MetaValue::Float(f32::from_bits(read_u32(r)?).into()),
        7 => {
            r.read_exact(&mut b[..1])?;
            MetaValue::Bool(b[0] != 0)
        }
        8 => MetaValue::Str(read_string(r)?),
        9 => {
            let item = read_u32(r)?;
            let count = read_u64(r)?;
            if let Some(size) = scalar_size(item) {
                skip(r, size.saturating_mul(count))?;
            } else if item == 8 {
                for _ in 0..count {
                    let len = read_u64(r)?;
                    skip(r, len)?;
                }
            } else {
                return Err(invalid(&format!("unsupported array item type {item}")));
            }
            return Ok(None);
        }
        10 => MetaValue::Int(read_u64(r)?.into()),
        11 => MetaValue::Int((read_u64(r)? as i64).into()),
        12 => MetaValue::Float(f64::from_bits(read_u64(r)?)),
        other => return Err(invalid(&format!("unknown metadata value type {other}"))),
    }))
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// A model file as every engine opens it first: its metadata, the fingerprint receipts name
/// it by (SHA-256 of the file) and a display name.
pub(crate) struct ModelFile {
    /// The GGUF metadata.
    pub meta: GgufMetadata,
    /// SHA-256 of the whole file.
    pub fingerprint: crate::state::ModelFingerprint,
    /// `general.name`, else the file name.
    pub name: String,
}

impl ModelFile {
    /// The chat template: `explicit` if given, else the family of the file's own
    /// `tokenizer.chat_template`; neither is a load error saying why.
    pub(crate) fn chat_template(
        &self,
        path: &Path,
        explicit: Option<crate::template::ChatTemplate>,
    ) -> Result<crate::template::ChatTemplate, super::EngineError> {
        match explicit {
            Some(t) => Ok(t),
            None => {
                crate::template::ChatTemplate::recognise(self.meta.str("tokenizer.chat_template"))
                    .map_err(|e| super::load_err(path, e))
            }
        }
    }

    /// Reads the metadata and hashes the file; errors are [`super::EngineError::Load`].
    pub(crate) fn open(path: &Path) -> Result<Self, super::EngineError> {
        let meta = GgufMetadata::read(path).map_err(|e| {
            super::load_err(
                path,
                format!("{e} (is it a complete GGUF file? `state-pack model fetch` re-downloads the default model)"),
            )
        })?;
        let fingerprint = crate::state::ModelFingerprint::from_bytes(
            sha256_file(path).map_err(|e| super::load_err(path, e))?,
        );
        let name = meta
            .str("general.name")
            .map(str::to_string)
            .or_else(|| path.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        Ok(Self {
            meta,
            fingerprint,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn kv_str(out: &mut Vec<u8>, k: &str, v: &str) {
        out.extend((k.len() as u64).to_le_bytes());
        out.extend(k.as_bytes());
        out.extend(8u32.to_le_bytes());
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }

    #[test]
    fn reads_scalars_and_skips_arrays() {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(3u64.to_le_bytes());
        kv_str(&mut b, "general.architecture", "llama");
        // llama.block_count: u32 = 30
        let k = "llama.block_count";
        b.extend((k.len() as u64).to_le_bytes());
        b.extend(k.as_bytes());
        b.extend(4u32.to_le_bytes());
        b.extend(30u32.to_le_bytes());
        // an array of two strings
        let k = "tokenizer.ggml.tokens";
        b.extend((k.len() as u64).to_le_bytes());
        b.extend(k.as_bytes());
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        for s in ["a", "bc"] {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&b).unwrap();
        let m = GgufMetadata::read(f.path()).unwrap();
        assert_eq!(m.arch_usize("block_count"), Some(30));
        assert!(!m.entries.contains_key("tokenizer.ggml.tokens"));
    }

    #[test]
    fn rejects_truncated_and_foreign_files() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"GGUF\x03\x00\x00\x00\x00").unwrap();
        assert!(GgufMetadata::read(f.path()).is_err());
        let mut g = tempfile::NamedTempFile::new().unwrap();
        g.write_all(b"PK\x03\x04 not a model").unwrap();
        let e = GgufMetadata::read(g.path()).unwrap_err();
        assert!(e.to_string().contains("not a GGUF"), "{e}");
    }
}
