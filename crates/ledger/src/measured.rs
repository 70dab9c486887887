//! What one operation measured: token counts and times, in one shape.
//!
//! The pack makes a [`Measured`] once, from what the engine reported, and carries it: into
//! the operations row, into the signed receipt (whose `tokens` and `timings` objects are
//! its two halves, byte for byte), into the pack's report and onto the wire. Nothing copies
//! it field by field, so the row, the receipt and the answer cannot drift apart.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Token counts of one operation, as the engine counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    /// Tokens the caller added (the delta; for create, the base).
    pub delta: u64,
    /// Tokens in the output state.
    pub state: u64,
    /// Tokens the engine ran through the model.
    pub prefilled: u64,
    /// Tokens whose KV the engine already held.
    pub reused: u64,
    /// Tokens generated.
    pub generated: u64,
    /// Of `reused`, tokens whose KV was loaded from a KV blob on disk rather than held in
    /// memory. Omitted when none were (a signed `0` is refused: one meaning, one encoding).
    #[serde(default, skip_serializing_if = "is_zero", deserialize_with = "nonzero")]
    pub restored: u64,
    /// Prompt tokens whose fate the engine did not report: a remote server that gives no
    /// cached-token count. They are in neither `prefilled` nor `reused` (nothing is guessed).
    /// Omitted when none were.
    #[serde(default, skip_serializing_if = "is_zero", deserialize_with = "nonzero")]
    pub unreported: u64,
}

/// Times of one operation, in microseconds as measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Timings {
    /// Engine prefill time.
    pub prefill_us: u64,
    /// Engine decode time.
    pub decode_us: u64,
    /// Wall time of the operation up to its commit.
    pub total_us: u64,
    /// Time spent reading a KV blob and loading it into the engine (present exactly when
    /// tokens were restored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_us: Option<u64>,
}

/// An operation's token counts and times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct Measured {
    /// Token counts.
    pub tokens: Tokens,
    /// Times.
    pub timings: Timings,
}

impl Timings {
    /// Times from the engine's durations; `restore` is `Some` exactly when tokens were
    /// restored from a blob.
    pub fn new(
        prefill: Duration,
        decode: Duration,
        total: Duration,
        restore: Option<Duration>,
    ) -> Self {
        Self {
            prefill_us: micros(prefill),
            decode_us: micros(decode),
            total_us: micros(total),
            restore_us: restore.map(micros),
        }
    }

    /// Engine prefill time.
    pub fn prefill(&self) -> Duration {
        Duration::from_micros(self.prefill_us)
    }

    /// Engine decode time.
    pub fn decode(&self) -> Duration {
        Duration::from_micros(self.decode_us)
    }

    /// Blob restore time (zero when nothing was restored).
    pub fn restore(&self) -> Duration {
        Duration::from_micros(self.restore_us.unwrap_or(0))
    }

    /// Wall time up to the commit.
    pub fn total(&self) -> Duration {
        Duration::from_micros(self.total_us)
    }
}

/// Whole microseconds, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn nonzero<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(serde::de::Error::custom(
            "a count of 0 (`restored`, `unreported`) is written by leaving the field out",
        )),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_is_omitted_when_zero_and_refused_when_signed_as_zero() {
        let t = Tokens {
            delta: 3,
            state: 10,
            prefilled: 3,
            reused: 7,
            generated: 0,
            restored: 0,
            unreported: 0,
        };
        let json = serde_json::to_string(&t).unwrap();
        assert!(!json.contains("restored"), "{json}");
        assert_eq!(serde_json::from_str::<Tokens>(&json).unwrap(), t);
        let with = json.replace('}', r#","restored":0}"#);
        assert!(serde_json::from_str::<Tokens>(&with).is_err(), "{with}");
        let five = json.replace('}', r#","restored":5}"#);
        assert_eq!(serde_json::from_str::<Tokens>(&five).unwrap().restored, 5);
    }

    #[test]
    fn timings_round_trip_through_durations() {
        let t = Timings::new(
            Duration::from_micros(1500),
            Duration::from_millis(2),
            Duration::from_millis(9),
            None,
        );
        assert_eq!((t.prefill_us, t.decode_us, t.total_us), (1500, 2000, 9000));
        assert_eq!(t.restore(), Duration::ZERO);
        assert!(!serde_json::to_string(&t).unwrap().contains("restore_us"));
    }
}
