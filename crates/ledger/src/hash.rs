//! Content addressing of states.
//!
//! A state is an immutable token sequence on one model. Its id is
//!
//! ```text
//! StateHash = SHA-256( "state-pack/state/v1" || 0x00
//!                      || model fingerprint (32 bytes)
//!                      || token count (u64, big-endian)
//!                      || each token id (u32, big-endian) )
//! ```
//!
//! so the same model and the same tokens give the same hash on any machine, and no other
//! object hashed by state-pack (deltas, receipts) can collide with a state by construction.
//! This module is the one place that layout is written down; `tests` below pin it with
//! known answers.

use sha2::{Digest, Sha256};

/// Domain tag that starts every state hash pre-image.
pub const STATE_DOMAIN_TAG: &[u8] = b"state-pack/state/v1\0";
/// Domain tag that starts every delta hash pre-image.
pub const DELTA_DOMAIN_TAG: &[u8] = b"state-pack/delta/v1\0";
/// Domain tag that starts every prefix chain ([`PrefixHash`]).
pub const PREFIX_DOMAIN_TAG: &[u8] = b"state-pack/prefix/v1\0";

/// Error parsing a 64-hex-character digest (a [`StateHash`] or [`ModelFingerprint`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed hash {input:?}: expected 64 hexadecimal characters")]
pub struct ParseHashError {
    /// The text that failed to parse (truncated to 80 characters).
    pub input: String,
}

pub(crate) fn parse_digest(s: &str) -> Result<[u8; 32], ParseHashError> {
    let err = || ParseHashError {
        input: s.chars().take(80).collect(),
    };
    if s.len() != 64 {
        return Err(err());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| err())?;
    Ok(out)
}

macro_rules! digest_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps raw digest bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
            /// The raw digest bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 12 hex characters, for people reading logs.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::hash::ParseHashError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $crate::hash::parse_digest(s).map(Self)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use digest_type;

digest_type!(
    /// SHA-256 of a model's weights file: which model a state's tokens belong to.
    ModelFingerprint
);

digest_type!(
    /// The content address of a state: see the module docs for the exact pre-image.
    ///
    /// ```
    /// use state_pack_ledger::hash::{ModelFingerprint, StateHash};
    /// let model = ModelFingerprint::from_bytes([7; 32]);
    /// let a = StateHash::of(&model, &[1, 2, 3]);
    /// assert_eq!(a, StateHash::of(&model, &[1, 2, 3]));
    /// assert_ne!(a, StateHash::of(&model, &[1, 2, 3, 4]));
    /// let parsed: StateHash = a.to_hex().parse().unwrap();
    /// assert_eq!(parsed, a);
    /// ```
    StateHash
);

digest_type!(
    /// SHA-256 over a delta's token ids, domain-separated from states.
    DeltaHash
);

fn hash_tokens(tag: &[u8], model: &ModelFingerprint, tokens: &[u32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tag);
    h.update(model.as_bytes());
    h.update((tokens.len() as u64).to_be_bytes());
    // One update per token is slow for long states; encode in one buffer.
    let mut buf = Vec::with_capacity(tokens.len() * 4);
    for t in tokens {
        buf.extend_from_slice(&t.to_be_bytes());
    }
    h.update(&buf);
    h.finalize().into()
}

impl StateHash {
    /// The hash of `tokens` on `model`.
    pub fn of(model: &ModelFingerprint, tokens: &[u32]) -> Self {
        Self(hash_tokens(STATE_DOMAIN_TAG, model, tokens))
    }
}

impl DeltaHash {
    /// The hash of the delta `tokens` appended on `model`.
    pub fn of(model: &ModelFingerprint, tokens: &[u32]) -> Self {
        Self(hash_tokens(DELTA_DOMAIN_TAG, model, tokens))
    }
}

digest_type!(
    /// A key of the prefix index: the chain hash of a token sequence on a model, computable
    /// for every prefix of a sequence in one pass. `h0 = SHA-256("state-pack/prefix/v1\0" ||
    /// model)`, `h(i) = SHA-256(h(i-1) || id(i) as u32 big-endian)`. It names no state (a
    /// [`StateHash`] does); it lets a request find, by index lookups, the stored states its
    /// tokens begin with.
    PrefixHash
);

impl PrefixHash {
    /// The seed of the chain on `model`: `h0`, the key of no sequence (only a start to
    /// [`extend`](Self::extend) from).
    pub fn start(model: &ModelFingerprint) -> Self {
        Self(
            Sha256::new()
                .chain_update(PREFIX_DOMAIN_TAG)
                .chain_update(model.as_bytes())
                .finalize()
                .into(),
        )
    }

    /// The chain hash of this hash's sequence followed by `tokens`.
    pub fn extend(self, tokens: &[u32]) -> Self {
        tokens.iter().fold(self, |h, t| h.next(*t))
    }

    fn next(self, token: u32) -> Self {
        Self(
            Sha256::new()
                .chain_update(self.0)
                .chain_update(token.to_be_bytes())
                .finalize()
                .into(),
        )
    }

    /// The chain hash of every prefix of `tokens`: element `i` is the hash of
    /// `tokens[..=i]`.
    pub fn chain(model: &ModelFingerprint, tokens: &[u32]) -> Vec<Self> {
        let mut h = Self::start(model);
        tokens
            .iter()
            .map(|t| {
                h = h.next(*t);
                h
            })
            .collect()
    }

    /// The chain hash of all of `tokens` (which must not be empty to name a prefix).
    pub fn of(model: &ModelFingerprint, tokens: &[u32]) -> Option<Self> {
        (!tokens.is_empty()).then(|| Self::start(model).extend(tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers computed independently with Python's hashlib:
    // sha256(b"state-pack/state/v1\0" + bytes(range(32)) + (3).to_bytes(8,"big")
    //        + b"".join(t.to_bytes(4,"big") for t in [1, 2, 70000]))
    const MODEL: [u8; 32] = {
        let mut m = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            m[i] = i as u8;
            i += 1;
        }
        m
    };

    #[test]
    fn state_hash_known_answer() {
        let model = ModelFingerprint::from_bytes(MODEL);
        assert_eq!(
            StateHash::of(&model, &[1, 2, 70000]).to_hex(),
            "72955cc8e11f6d1efd5d3d775e135d870076b35a0d5f48abb1e7868fb45575ca"
        );
        assert_eq!(
            StateHash::of(&model, &[]).to_hex(),
            "d54f6ea037ca9394f0d7659a27e2c7da502608d3dc008b6890fb42d2208f8b53"
        );
    }

    #[test]
    fn delta_hash_is_domain_separated() {
        let model = ModelFingerprint::from_bytes(MODEL);
        assert_eq!(
            DeltaHash::of(&model, &[1, 2, 70000]).to_hex(),
            "171ab0f1ad8b870ec7cb10ead5b881d1c03a4ceb1b12bee85df3952f187de228"
        );
        assert_ne!(
            DeltaHash::of(&model, &[5]).as_bytes(),
            StateHash::of(&model, &[5]).as_bytes()
        );
    }

    #[test]
    fn prefix_chain_known_answer_and_prefixes() {
        // sha256 chain as in the type's docs, computed with Python's hashlib.
        let model = ModelFingerprint::from_bytes(MODEL);
        let chain = PrefixHash::chain(&model, &[1, 2, 70000]);
        assert_eq!(chain.len(), 3);
        assert_eq!(
            chain[2].to_hex(),
            "32e8b149c57ed0866070785f08b047e29285c6134947bff524e4afd6358ea489"
        );
        assert_eq!(PrefixHash::of(&model, &[1, 2]), Some(chain[1]));
        assert_eq!(PrefixHash::of(&model, &[]), None);
        assert_eq!(
            PrefixHash::start(&model).extend(&[1, 2]).extend(&[70000]),
            chain[2]
        );
        let other = ModelFingerprint::from_bytes([9; 32]);
        assert_ne!(PrefixHash::chain(&other, &[1])[0], chain[0]);
    }

    #[test]
    fn parse_rejects_bad_input() {
        assert!("abc".parse::<StateHash>().is_err());
        assert!("zz".repeat(32).parse::<StateHash>().is_err());
        let ok = "ab".repeat(32);
        assert_eq!(ok.parse::<StateHash>().unwrap().to_hex(), ok);
        // Upper case is accepted and printed back in lower case.
        assert_eq!(ok.to_uppercase().parse::<StateHash>().unwrap().to_hex(), ok);
    }
}
