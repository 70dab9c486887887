//! Our checkpoints, tiles and proofs, checked by someone else's code: Cloudflare's
//! `signed_note` and `tlog_tiles` crates (crates.io; ports of Go's sumdb/note and
//! sumdb/tlog), not by this crate. A log of 700 receipts is exported as a static tlog-tiles
//! directory; the independent implementation verifies the checkpoint note's signature with
//! the log's vkey, authenticates every tile it reads against the note's root, recomputes the
//! root, checks that every entry hashes to its level-0 tile hash, and checks our inclusion
//! and consistency proofs. Then a tile is edited on disk, and a proof is presented for the
//! wrong size: both are refused.

mod common;

use std::path::{Path, PathBuf};

use common::write_log;
use signed_note::{StandardVerifier, VerifierList};
use state_pack_ledger::note::{CheckpointText, Note};
use state_pack_ledger::receipt::ReceiptHash;
use state_pack_ledger::{stored, LedgerDb, Signer};
use tlog_tiles::{Hash, Tile, TileHashReader, TileReader};

/// Tiles from an exported directory, addressed as c2sp.org/tlog-tiles says.
struct DirTiles(PathBuf);

impl DirTiles {
    /// The C2SP path of one of `tlog_tiles`'s tiles (height 8; C2SP paths carry no height).
    fn path(tile: &Tile) -> String {
        let go_style = tile.path(); // tile/8/L/NNN[.p/W]
        go_style.replacen("tile/8/", "tile/", 1)
    }
}

impl TileReader for DirTiles {
    fn height(&self) -> u8 {
        8
    }

    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        tiles
            .iter()
            .map(|t| {
                std::fs::read(self.0.join(Self::path(t)))
                    .map_err(|_| tlog_tiles::Error::InvalidTile)
            })
            .collect()
    }

    fn save_tiles(&self, _: &[Tile], _: &[Vec<u8>]) {}
}

struct Log {
    _dir: tempfile::TempDir,
    db: PathBuf,
    tiles: PathBuf,
    vkey: String,
}

fn log_of(n: usize) -> Log {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let signer = Signer::from_seed([11; 32]);
    write_log(&db, signer.clone(), n);
    let mut store = LedgerDb::open(&db, signer.clone()).unwrap();
    store.checkpoint().unwrap();
    let log = state_pack_ledger::log::log_id(store.conn())
        .unwrap()
        .unwrap();
    let vkey = state_pack_ledger::note::NoteVerifier::new(
        &CheckpointText::origin_of(&log),
        state_pack_ledger::note::ED25519,
        signer.public_key(),
    )
    .unwrap()
    .vkey();
    let tiles = dir.path().join("tiles");
    stored::export_tiles(store.conn(), &tiles).unwrap();
    Log {
        _dir: dir,
        db,
        tiles,
        vkey,
    }
}

/// The checkpoint, read and verified by `signed_note` and `tlog_tiles`.
fn their_checkpoint(dir: &Path, vkey: &str) -> tlog_tiles::Checkpoint {
    let text = std::fs::read(dir.join("checkpoint")).unwrap();
    let note = signed_note::Note::from_bytes(&text).expect("signed_note parses our note");
    let verifier = StandardVerifier::new(vkey).expect("signed_note parses our vkey");
    let (verified, _) = note
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .expect("signed_note verifies our signature");
    assert_eq!(verified.len(), 1);
    tlog_tiles::Checkpoint::from_bytes(note.text()).expect("tlog_tiles parses our checkpoint")
}

#[test]
fn notes_tiles_and_proofs_verify_under_an_independent_implementation() {
    let log = log_of(700);
    let cp = their_checkpoint(&log.tiles, &log.vkey);
    let size = cp.size();
    assert_eq!(size, 701, "open_log + 700 receipts");
    let root = *cp.hash();
    let tiles = DirTiles(log.tiles.clone());
    let reader = TileHashReader::new(size, root, &tiles);
    // Every tile they read is authenticated against the root the note signs.
    assert_eq!(tlog_tiles::tree_hash(size, &reader).unwrap(), root);

    let mut store = LedgerDb::open_for_reading(&log.db).unwrap();
    // Entry bundles: each entry is a receipt hash, and hashes to its level-0 tile hash; the
    // body bundles beside them hash (as receipts) to the entries.
    for n in 0..size.div_ceil(256) {
        let width = (size - n * 256).min(256) as u32;
        let t = Tile::new(8, 0, n, width, false);
        let hashes = tiles.read_tiles(&[t]).unwrap().remove(0);
        let suffix = DirTiles::path(&t).trim_start_matches("tile/0/").to_string();
        let entries = std::fs::read(log.tiles.join("tile/entries").join(&suffix)).unwrap();
        let bodies = std::fs::read(log.tiles.join("tile/bodies").join(&suffix)).unwrap();
        let entries = state_pack_ledger::tiles::unbundle(&entries).unwrap();
        let bodies = state_pack_ledger::tiles::unbundle(&bodies).unwrap();
        assert_eq!(entries.len() as u32, width);
        for (i, (e, b)) in entries.iter().zip(&bodies).enumerate() {
            assert_eq!(
                tlog_tiles::record_hash(e).0.as_slice(),
                &hashes[i * 32..i * 32 + 32]
            );
            assert_eq!(ReceiptHash::of(b).as_bytes().as_slice(), *e);
        }
    }

    // Our inclusion proofs check under their code, against their root, for a spread of
    // receipts; and agree with the proofs they build from our tiles.
    for seq in [0u64, 1, 255, 256, 511, 600, 700] {
        let ours = store.prove(seq).unwrap();
        let path: Vec<Hash> = ours
            .proof
            .iter()
            .map(|h| Hash(hex::decode(h).unwrap().try_into().unwrap()))
            .collect();
        let leaf = ReceiptHash::of(ours.body.as_bytes());
        let leaf_hash = tlog_tiles::record_hash(leaf.as_bytes());
        tlog_tiles::check_record(&path, size, root, seq, leaf_hash).expect("their check_record");
        let theirs = tlog_tiles::prove_record(size, seq, &reader).unwrap();
        assert_eq!(theirs, path, "receipt {seq}");
        // The same proof for another tree size is refused (a size whose tree has another
        // shape: RFC 6962 roots do not commit to the size, so one of the same shape would
        // yield the same root).
        assert!(tlog_tiles::check_record(&path, 400, root, seq, leaf_hash).is_err());
    }

    // Our consistency proofs check under their code.
    for old in [1u64, 100, 256, 257, 700] {
        let ours = stored::prove_consistency(store.conn(), old, size).unwrap();
        let path: Vec<Hash> = ours.hashes().unwrap().into_iter().map(Hash).collect();
        let old_root = tlog_tiles::tree_hash(old, &reader).unwrap();
        assert_eq!(hex::encode(old_root.0), ours.old_root);
        tlog_tiles::check_tree(&path, size, root, old, old_root).expect("their check_tree");
        if old > 1 {
            // For another old size it is refused.
            assert!(tlog_tiles::check_tree(&path, size, root, old - 1, old_root).is_err());
        }
    }
}

#[test]
fn an_edited_tile_fails_their_verification() {
    let log = log_of(300);
    let cp = their_checkpoint(&log.tiles, &log.vkey);
    let tile = log.tiles.join("tile/0/000");
    let mut bytes = std::fs::read(&tile).unwrap();
    bytes[5] ^= 1; // one bit of the first leaf's hash
    std::fs::write(&tile, bytes).unwrap();
    let tiles = DirTiles(log.tiles.clone());
    let reader = TileHashReader::new(cp.size(), *cp.hash(), &tiles);
    // Leaf 1's audit path holds leaf 0's hash, read from that tile: the path no longer
    // leads to the signed root. (TileHashReader hands the hash out: in tlog_tiles 0.2.0, as
    // in Go's sumdb/tlog, a child tile read alongside deduplicated tree-hash tiles is not
    // authenticated against its parent, so it is the proof check that refuses it.)
    let leaf1 = ReceiptHash::of(
        LedgerDb::open_for_reading(&log.db)
            .unwrap()
            .receipt(1)
            .unwrap()
            .body
            .as_slice(),
    );
    let h1 = tlog_tiles::record_hash(leaf1.as_bytes());
    let refused = tlog_tiles::prove_record(cp.size(), 1, &reader).map_or(true, |p| {
        tlog_tiles::check_record(&p, cp.size(), *cp.hash(), 1, h1).is_err()
    });
    assert!(
        refused,
        "a tile that does not hash to the signed root is not accepted"
    );
    // The tiles not edited still prove their leaves.
    let leaf290 = ReceiptHash::of(
        LedgerDb::open_for_reading(&log.db)
            .unwrap()
            .receipt(290)
            .unwrap()
            .body
            .as_slice(),
    );
    let p = tlog_tiles::prove_record(cp.size(), 290, &reader).unwrap();
    tlog_tiles::check_record(
        &p,
        cp.size(),
        *cp.hash(),
        290,
        tlog_tiles::record_hash(leaf290.as_bytes()),
    )
    .unwrap();
    // And an edited checkpoint note no longer verifies.
    let note = std::fs::read_to_string(log.tiles.join("checkpoint")).unwrap();
    let edited = note.replacen("\n301\n", "\n300\n", 1);
    let parsed = signed_note::Note::from_bytes(edited.as_bytes()).unwrap();
    let v = StandardVerifier::new(&log.vkey).unwrap();
    assert!(parsed
        .verify(&VerifierList::new(vec![Box::new(v)]))
        .is_err());
    // Our own parser reads what theirs does.
    let ours = Note::parse(&note).unwrap();
    assert_eq!(
        ours.text.as_bytes(),
        signed_note::Note::from_bytes(note.as_bytes())
            .unwrap()
            .text()
    );
}
