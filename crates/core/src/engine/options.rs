//! How the mistral.rs engine is set up. These types exist in every build, so that an
//! [`EngineSpec`](super::EngineSpec) means the same whichever engines a build includes.

/// Where an engine runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "index")]
pub enum Device {
    /// The CPU.
    #[default]
    Cpu,
    /// CUDA GPU number `n` (`cuda:n`; `cuda` is `cuda:0`).
    Cuda(usize),
    /// Another process or machine: an inference server the engine sends requests to (where
    /// that server runs the model is its own business).
    Remote,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Remote => f.write_str("remote"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device {s:?} (expected cpu, cuda or cuda:N)")),
        }
    }
}

/// Activation and KV-cache precision on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationDType {
    /// 32-bit floats: no conversion in the quantized kernels' hot loop.
    #[default]
    F32,
    /// bfloat16: half the KV memory, slower on CPUs without native bf16 matmul.
    Bf16,
}

/// How the mistral.rs engine (`MistralRsEngine`, cargo feature `mistralrs`) is set up.
#[derive(Debug, Clone)]
pub struct MistralRsOptions {
    /// Prefix-cache entries (token sequences with their KV) kept; the oldest beyond this are
    /// dropped. `0` disables the prefix cache: every prompt is prefilled in full (the naive
    /// baseline of `state-pack bench`).
    pub prefix_cache_entries: usize,
    /// Activation / KV precision.
    pub dtype: ActivationDType,
    /// Requantize weight types that candle multiplies with a scalar loop on x86 (Q4_1,
    /// Q5_0, Q5_1: the default model is Q4_1) to Q8_0, which has an AVX2 kernel, when the
    /// model is loaded. On by default (the CLI's `--requantize-q8 false` turns it off): agent
    /// steps 1.44x and prefill 1.7x faster on the default model (`docs/PERFORMANCE.md`).
    /// The weights then hold the file's values to within Q8_0's rounding (a step of 1/127
    /// of each 32-weight block's largest magnitude), so outputs can differ from the exact
    /// weights'; the receipts' model fingerprint is still the file's.
    pub requantize_q8: bool,
    /// The chat template; `None` recognises it from the model file.
    pub chat_template: Option<crate::template::ChatTemplate>,
    /// Where to run: the CPU, or a CUDA GPU (a build with the cargo feature `cuda`).
    pub device: Device,
    /// Requests mistral.rs's scheduler runs at once (its `max_seqs`); at least 1 (the
    /// default; `load_engine` takes [`EngineSpec::mistralrs_sequences`](super::EngineSpec),
    /// the CLI `--mistralrs-sequences`). It batches sequences of equal
    /// length into one forward pass and takes turns between the others, copying each one's KV
    /// in and out of the batch at every switch. Each request gets the tokens it gets alone and
    /// its own reuse count (vendor patches, `vendor/README.md` rows 11-13: unequal KV
    /// capacities are padded, where 0.8.1 panicked; each sequence of a batched decode step
    /// gets its own attention output, where 0.8.1 gave all of them the last one's; a sequence
    /// set aside for a step is not re-run as a prompt), but agents of different lengths are
    /// slower together than one at a time: 8 serve agents ran 0.78-0.85x the steps a second
    /// at 8 that they ran at 1 on 2 CPU cores (`docs/PERFORMANCE.md`, section 9).
    pub max_sequences: usize,
    /// The most bytes of KV the prefix cache keeps, as allocated (each entry's tensors at
    /// their capacity, a tensor entries share counted once); the oldest entries beyond it are
    /// dropped after each request, as they are beyond
    /// [`prefix_cache_entries`](Self::prefix_cache_entries). `0` (the default) sets no byte
    /// limit. A running request's own KV is not counted: it joins the cache when it ends.
    pub kv_budget_bytes: u64,
}

impl Default for MistralRsOptions {
    fn default() -> Self {
        Self {
            prefix_cache_entries: 8,
            dtype: ActivationDType::F32,
            requantize_q8: true,
            chat_template: None,
            device: Device::Cpu,
            max_sequences: 1,
            kv_budget_bytes: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        for (text, d) in [
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
            ("CUDA:1", Device::Cuda(1)),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(d), "{text}");
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        for bad in ["gpu:1", "cuda:x", "tpu", ""] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }
}
