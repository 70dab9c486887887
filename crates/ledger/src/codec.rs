//! The token codec of the `states.tokens` column: token ids as u32 little-endian, 4 bytes
//! each. The store writes it; `verify` reads it back and rehashes every state from it.

/// The stored form of `tokens`.
pub fn tokens_to_blob(tokens: &[u32]) -> Vec<u8> {
    tokens.iter().flat_map(|t| t.to_le_bytes()).collect()
}

/// Token ids from a stored blob, `None` if its length is not a multiple of 4.
pub fn blob_to_tokens(b: &[u8]) -> Option<Vec<u32>> {
    if !b.len().is_multiple_of(4) {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_a_torn_blob() {
        let tokens = [0, 1, 70_000, u32::MAX];
        let blob = tokens_to_blob(&tokens);
        assert_eq!(blob.len(), 16);
        assert_eq!(&blob[8..12], &70_000u32.to_le_bytes());
        assert_eq!(blob_to_tokens(&blob).as_deref(), Some(&tokens[..]));
        assert_eq!(blob_to_tokens(&blob[..15]), None);
        assert_eq!(blob_to_tokens(&[]), Some(vec![]));
    }
}
