//! The receipt tree, stored: RFC 6962 Merkle tree hashes kept as they are computed, so that
//! the root, an inclusion proof or a consistency proof at any size reads O(log n) hashes.
//!
//! The layout is the one the Go checksum database and every tlog-tiles log use (Crosby and
//! Wallach, "Efficient Data Structures for Tamper-Evident Logging", §3.3): the hash of the
//! complete subtree at `level` covering leaves `n·2^level .. (n+1)·2^level` is stored at
//! index [`stored_hash_index`]`(level, n)`, and appending leaf `n` stores the leaf hash and
//! the hash of every subtree the leaf completes ([`stored_hashes`]). Proofs are RFC 6962's
//! audit paths (§2.1.1) and consistency proofs (§2.1.2), built from those stored hashes.
//!
//! ```text
//! leaf hash  = SHA-256( 0x00 || leaf data )        leaf data = ReceiptHash of receipt i
//! node hash  = SHA-256( 0x01 || left || right )
//! ```

use sha2::{Digest, Sha256};

/// A tree hash.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of nothing (RFC 6962 §2.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Why a tree operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// Sizes or indexes that name no proof (a leaf past the tree, an empty tree).
    #[error("no such proof: {0}")]
    BadRange(String),
    /// The stored hashes the computation needs could not be read.
    #[error("cannot read stored tree hashes: {0}")]
    Read(String),
    /// The proof does not prove the claim.
    #[error("the proof does not verify")]
    Invalid,
}

/// Reads stored hashes by index (see [`stored_hash_index`]).
pub trait HashReader {
    /// The hashes at `indexes`, in the same order.
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TreeError>;
}

/// Stored hashes in memory, index order: what a verifier that holds every leaf builds.
impl HashReader for Vec<Hash> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TreeError> {
        indexes
            .iter()
            .map(|&i| {
                self.get(i as usize)
                    .copied()
                    .ok_or_else(|| TreeError::Read(format!("no stored hash {i}")))
            })
            .collect()
    }
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0x00])
        .chain_update(data)
        .finalize()
        .into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([0x01])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The largest power of two below `n` (for `n > 1`), and its log₂: where RFC 6962 splits a
/// tree of `n` leaves.
fn split(n: u64) -> (u64, u32) {
    debug_assert!(n > 1);
    let level = 63 - (n - 1).leading_zeros();
    (1 << level, level)
}

/// Where the hash of the subtree at `level` number `n` is stored.
pub fn stored_hash_index(level: u32, n: u64) -> u64 {
    // The subtree's rightmost leaf was the last to be appended before it completed; the
    // leaf n of level 0 is stored after n + n/2 + n/4 + ... hashes of earlier leaves'
    // subtrees, and its completed subtrees follow it, lowest first.
    let mut leaf = n;
    for _ in 0..level {
        leaf = 2 * leaf + 1;
    }
    let mut index = 0;
    let mut m = leaf;
    while m > 0 {
        index += m;
        m >>= 1;
    }
    index + u64::from(level)
}

/// The inverse of [`stored_hash_index`]: `(level, n)`.
pub fn split_stored_hash_index(index: u64) -> (u32, u64) {
    // Leaf n's own hash is stored below 2n, so the leaf whose appending stored `index` is at
    // least index/2; walk forward over the hashes each leaf adds (1 + its completed subtrees).
    let mut n = index / 2;
    let mut at = stored_hash_index(0, n);
    loop {
        let next = at + 1 + u64::from((n + 1).trailing_zeros());
        if next > index {
            break;
        }
        n += 1;
        at = next;
    }
    let level = (index - at) as u32;
    (level, n >> level)
}

/// How many hashes a tree of `n` leaves stores.
pub fn stored_hash_count(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    stored_hash_index(0, n - 1) + 1 + u64::from(n.trailing_zeros())
}

/// The hashes to store, from index `stored_hash_index(0, n)` on, when leaf `n` (whose leaf
/// hash is `leaf`) is appended: the leaf hash, then each subtree it completes.
pub fn stored_hashes(n: u64, leaf: Hash, r: &impl HashReader) -> Result<Vec<Hash>, TreeError> {
    let completes = (n + 1).trailing_zeros();
    // The left siblings of the subtrees the leaf completes, lowest level first.
    let siblings: Vec<u64> = (0..completes)
        .map(|level| stored_hash_index(level, (n >> level) - 1))
        .collect();
    let left = r.read_hashes(&siblings)?;
    let mut out = Vec::with_capacity(1 + siblings.len());
    let mut h = leaf;
    out.push(h);
    for l in &left {
        h = node_hash(l, &h);
        out.push(h);
    }
    Ok(out)
}

/// Stored indexes of the complete subtrees that make up leaves `lo..hi`, left to right.
fn subtree_indexes(mut lo: u64, hi: u64, need: &mut Vec<u64>) {
    while lo < hi {
        let (k, level) = largest_aligned(lo, hi);
        need.push(stored_hash_index(level, lo >> level));
        lo += k;
    }
}

/// The largest complete subtree starting at `lo` within `lo..hi`: its width and level.
fn largest_aligned(lo: u64, hi: u64) -> (u64, u32) {
    // The largest power of two not above hi - lo (for RFC 6962's left-heavy split, every
    // `lo` here is aligned to it).
    let width = hi - lo;
    let level = 63 - width.leading_zeros();
    (1 << level, level)
}

/// The hash of leaves `lo..hi` from the hashes [`subtree_indexes`] named, consumed from the
/// front of `hashes`.
fn subtree_hash(lo: u64, hi: u64, hashes: &mut &[Hash]) -> Result<Hash, TreeError> {
    let mut parts = 0;
    let mut at = lo;
    while at < hi {
        at += largest_aligned(at, hi).0;
        parts += 1;
    }
    if hashes.len() < parts {
        return Err(TreeError::Read("too few stored hashes".into()));
    }
    let (mine, rest) = hashes.split_at(parts);
    *hashes = rest;
    let mut h = mine[parts - 1];
    for left in mine[..parts - 1].iter().rev() {
        h = node_hash(left, &h);
    }
    Ok(h)
}

/// The root of the tree of the first `n` leaves.
pub fn tree_hash(n: u64, r: &impl HashReader) -> Result<Hash, TreeError> {
    if n == 0 {
        return Ok(EMPTY_ROOT);
    }
    let mut need = Vec::new();
    subtree_indexes(0, n, &mut need);
    let hashes = r.read_hashes(&need)?;
    subtree_hash(0, n, &mut hashes.as_slice())
}

fn inclusion_indexes(lo: u64, hi: u64, leaf: u64, need: &mut Vec<u64>) {
    if lo + 1 == hi {
        return;
    }
    let (k, _) = split(hi - lo);
    if leaf < lo + k {
        inclusion_indexes(lo, lo + k, leaf, need);
        subtree_indexes(lo + k, hi, need);
    } else {
        subtree_indexes(lo, lo + k, need);
        inclusion_indexes(lo + k, hi, leaf, need);
    }
}

fn inclusion_path(
    lo: u64,
    hi: u64,
    leaf: u64,
    hashes: &mut &[Hash],
) -> Result<Vec<Hash>, TreeError> {
    if lo + 1 == hi {
        return Ok(Vec::new());
    }
    let (k, _) = split(hi - lo);
    if leaf < lo + k {
        let mut path = inclusion_path(lo, lo + k, leaf, hashes)?;
        path.push(subtree_hash(lo + k, hi, hashes)?);
        Ok(path)
    } else {
        let sibling = subtree_hash(lo, lo + k, hashes)?;
        let mut path = inclusion_path(lo + k, hi, leaf, hashes)?;
        path.push(sibling);
        Ok(path)
    }
}

/// The audit path (RFC 6962 §2.1.1) of leaf `leaf` in the tree of `size` leaves, nearest
/// sibling first.
pub fn prove_inclusion(size: u64, leaf: u64, r: &impl HashReader) -> Result<Vec<Hash>, TreeError> {
    if leaf >= size {
        return Err(TreeError::BadRange(format!(
            "leaf {leaf} is not in a tree of {size}"
        )));
    }
    let mut need = Vec::new();
    inclusion_indexes(0, size, leaf, &mut need);
    let hashes = r.read_hashes(&need)?;
    inclusion_path(0, size, leaf, &mut hashes.as_slice())
}

/// Checks that `path` proves leaf `leaf` with hash `leaf_hash` is in the tree of `size`
/// leaves whose root is `root`.
pub fn check_inclusion(
    path: &[Hash],
    size: u64,
    root: &Hash,
    leaf: u64,
    leaf_hash: &Hash,
) -> Result<(), TreeError> {
    if leaf >= size {
        return Err(TreeError::BadRange(format!(
            "leaf {leaf} is not in a tree of {size}"
        )));
    }
    fn run(path: &[Hash], lo: u64, hi: u64, leaf: u64, h: &Hash) -> Result<Hash, TreeError> {
        if lo + 1 == hi {
            return if path.is_empty() {
                Ok(*h)
            } else {
                Err(TreeError::Invalid)
            };
        }
        let (last, rest) = path.split_last().ok_or(TreeError::Invalid)?;
        let (k, _) = split(hi - lo);
        Ok(if leaf < lo + k {
            node_hash(&run(rest, lo, lo + k, leaf, h)?, last)
        } else {
            node_hash(last, &run(rest, lo + k, hi, leaf, h)?)
        })
    }
    if run(path, 0, size, leaf, leaf_hash)? == *root {
        Ok(())
    } else {
        Err(TreeError::Invalid)
    }
}

fn consistency_indexes(lo: u64, hi: u64, old: u64, need: &mut Vec<u64>) {
    if old == hi {
        if lo != 0 {
            subtree_indexes(lo, hi, need);
        }
        return;
    }
    let (k, _) = split(hi - lo);
    if old <= lo + k {
        consistency_indexes(lo, lo + k, old, need);
        subtree_indexes(lo + k, hi, need);
    } else {
        subtree_indexes(lo, lo + k, need);
        consistency_indexes(lo + k, hi, old, need);
    }
}

fn consistency_path(
    lo: u64,
    hi: u64,
    old: u64,
    hashes: &mut &[Hash],
) -> Result<Vec<Hash>, TreeError> {
    if old == hi {
        return if lo == 0 {
            Ok(Vec::new())
        } else {
            Ok(vec![subtree_hash(lo, hi, hashes)?])
        };
    }
    let (k, _) = split(hi - lo);
    if old <= lo + k {
        let mut path = consistency_path(lo, lo + k, old, hashes)?;
        path.push(subtree_hash(lo + k, hi, hashes)?);
        Ok(path)
    } else {
        let left = subtree_hash(lo, lo + k, hashes)?;
        let mut path = consistency_path(lo + k, hi, old, hashes)?;
        path.push(left);
        Ok(path)
    }
}

/// The consistency proof (RFC 6962 §2.1.2) that the tree of `new` leaves extends the tree of
/// `old` leaves.
pub fn prove_consistency(old: u64, new: u64, r: &impl HashReader) -> Result<Vec<Hash>, TreeError> {
    if old == 0 || old > new {
        return Err(TreeError::BadRange(format!(
            "no consistency proof from {old} to {new} leaves"
        )));
    }
    let mut need = Vec::new();
    consistency_indexes(0, new, old, &mut need);
    let hashes = r.read_hashes(&need)?;
    consistency_path(0, new, old, &mut hashes.as_slice())
}

/// Checks that `path` proves the tree of `new` leaves with root `new_root` extends the tree
/// of `old` leaves with root `old_root`.
pub fn check_consistency(
    path: &[Hash],
    old: u64,
    old_root: &Hash,
    new: u64,
    new_root: &Hash,
) -> Result<(), TreeError> {
    if old == 0 || old > new {
        return Err(TreeError::BadRange(format!(
            "no consistency proof from {old} to {new} leaves"
        )));
    }
    // The old and new hashes of leaves lo..hi implied by the proof.
    fn run(
        path: &[Hash],
        lo: u64,
        hi: u64,
        old: u64,
        old_root: &Hash,
    ) -> Result<(Hash, Hash), TreeError> {
        if old == hi {
            return match (lo, path) {
                (0, []) => Ok((*old_root, *old_root)),
                (0, _) => Err(TreeError::Invalid),
                (_, [h]) => Ok((*h, *h)),
                _ => Err(TreeError::Invalid),
            };
        }
        let (last, rest) = path.split_last().ok_or(TreeError::Invalid)?;
        let (k, _) = split(hi - lo);
        if old <= lo + k {
            let (o, n) = run(rest, lo, lo + k, old, old_root)?;
            Ok((o, node_hash(&n, last)))
        } else {
            let (o, n) = run(rest, lo + k, hi, old, old_root)?;
            Ok((node_hash(last, &o), node_hash(last, &n)))
        }
    }
    let (o, n) = run(path, 0, new, old, old_root)?;
    if o == *old_root && n == *new_root {
        Ok(())
    } else {
        Err(TreeError::Invalid)
    }
}

/// Stored hashes of a whole tree built in memory from its leaf hashes (a verifier's view).
pub fn stored_from_leaves(leaves: impl IntoIterator<Item = Hash>) -> Vec<Hash> {
    let mut stored: Vec<Hash> = Vec::new();
    for (n, leaf) in leaves.into_iter().enumerate() {
        let more =
            stored_hashes(n as u64, leaf, &stored).expect("earlier hashes are all in memory");
        stored.extend(more);
    }
    stored
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ReceiptTree;
    use crate::receipt::ReceiptHash;

    fn leaves(n: u64) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| Sha256::digest(i.to_be_bytes()).into())
            .collect()
    }

    #[test]
    fn stored_indexes_invert_and_count() {
        for index in 0..5000 {
            let (level, n) = split_stored_hash_index(index);
            assert_eq!(stored_hash_index(level, n), index, "{index}");
        }
        // Leaves 0..4 store: h0, h1, (h0h1), h2, h3, (h2h3), (h0..h3).
        assert_eq!(stored_hash_count(4), 7);
        assert_eq!(stored_hash_index(2, 0), 6);
        assert_eq!(stored_hash_index(1, 1), 5);
        for n in 1..300u64 {
            let stored = stored_from_leaves(leaves(n).iter().map(|d| leaf_hash(d)));
            assert_eq!(stored.len() as u64, stored_hash_count(n));
        }
    }

    /// Roots and audit paths agree with ct-merkle's RFC 6962 tree (the crate the first
    /// checkpoints were computed with), at every size up to 130 and for every leaf.
    #[test]
    fn roots_and_inclusion_proofs_match_ct_merkle() {
        let data = leaves(130);
        let mut reference = ReceiptTree::new();
        let mut stored: Vec<Hash> = Vec::new();
        for (n, d) in data.iter().enumerate() {
            stored.extend(stored_hashes(n as u64, leaf_hash(d), &stored).unwrap());
            reference.push(ReceiptHash::from_bytes(*d));
            let size = n as u64 + 1;
            let root = *reference.root().as_bytes();
            assert_eq!(tree_hash(size, &stored).unwrap(), root, "size {size}");
            for leaf in 0..size {
                let path = prove_inclusion(size, leaf, &stored).unwrap();
                assert_eq!(
                    Some(path.clone()),
                    reference.prove(leaf),
                    "size {size} leaf {leaf}"
                );
                check_inclusion(&path, size, &root, leaf, &leaf_hash(&data[leaf as usize]))
                    .unwrap();
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_tampering_fails() {
        let data = leaves(70);
        let stored = stored_from_leaves(data.iter().map(|d| leaf_hash(d)));
        for new in 1..=70u64 {
            let new_root = tree_hash(new, &stored).unwrap();
            for old in 1..=new {
                let old_root = tree_hash(old, &stored).unwrap();
                let p = prove_consistency(old, new, &stored).unwrap();
                check_consistency(&p, old, &old_root, new, &new_root).unwrap();
                if old < new {
                    // Another old root, another size, or a changed hash: refused.
                    let other = tree_hash(old - 1, &stored).unwrap();
                    assert!(check_consistency(&p, old, &other, new, &new_root).is_err());
                    if !p.is_empty() {
                        let mut bad = p.clone();
                        bad[0][0] ^= 1;
                        assert!(check_consistency(&bad, old, &old_root, new, &new_root).is_err());
                    }
                }
            }
        }
        assert!(prove_consistency(0, 5, &stored).is_err());
        assert!(prove_consistency(6, 5, &stored).is_err());
        assert!(prove_inclusion(5, 5, &stored).is_err());
    }
}
