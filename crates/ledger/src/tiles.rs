//! The receipt tree as C2SP tlog-tiles (c2sp.org/tlog-tiles): what a log publishes so that
//! anyone can fetch its hashes and entries as static files.
//!
//! ```text
//! tile/<L>/<N>[.p/<W>]        hashes: the tree hashes at level 8·L, numbers N·256 .. N·256+W
//! tile/entries/<N>[.p/<W>]    entry bundle: each entry a big-endian u16 length, then its bytes
//! tile/bodies/<N>[.p/<W>]     receipt bodies, framed as entry bundles (a state-pack extension)
//! <N> = zero-padded three-digit path elements, all but the last prefixed "x" (1234067 =
//!       x001/x234/067); W < 256 only for the partial tile at the tree's right edge
//! ```
//!
//! The tree's leaves are receipt hashes ([`ReceiptHash`](crate::receipt::ReceiptHash), since
//! receipt 0 of every log), so an entry is the 32-byte receipt hash: it hashes (RFC 6962
//! `0x00 ||`) to its level-0 tile hash, as the specification requires. The canonical receipt
//! bodies, which hash to those entries, are served beside them under `tile/bodies/`, as the
//! specification allows for entries in another format ("at a different URL").

use crate::tlog::{stored_hash_index, Hash, HashReader, TreeError};

/// Tile height: 2^8 = 256 hashes or entries a full tile.
pub const HEIGHT: u32 = 8;
/// Hashes in a full tile.
pub const WIDTH: u64 = 1 << HEIGHT;

/// What a tile path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileKind {
    /// Tree hashes at level `8 · level`.
    Hashes {
        /// The tile level.
        level: u32,
    },
    /// Entries: the receipt hashes.
    Entries,
    /// Canonical receipt bodies.
    Bodies,
}

/// One tile: what it holds, its number in its level, its width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    /// What it holds.
    pub kind: TileKind,
    /// Its number.
    pub n: u64,
    /// How many hashes or entries (1..=256).
    pub width: u64,
}

impl Tile {
    /// Its path, `tile/...`.
    pub fn path(&self) -> String {
        let level = match self.kind {
            TileKind::Hashes { level } => level.to_string(),
            TileKind::Entries => "entries".into(),
            TileKind::Bodies => "bodies".into(),
        };
        let mut n = self.n;
        let mut digits = format!("{:03}", n % 1000);
        while n >= 1000 {
            n /= 1000;
            digits = format!("x{:03}/{digits}", n % 1000);
        }
        let partial = if self.width < WIDTH {
            format!(".p/{}", self.width)
        } else {
            String::new()
        };
        format!("tile/{level}/{digits}{partial}")
    }

    /// Parses a path (`tile/...`); `None` for anything that is not exactly a tile's path.
    pub fn parse(path: &str) -> Option<Self> {
        let rest = path.strip_prefix("tile/")?;
        let (level, rest) = rest.split_once('/')?;
        let kind = match level {
            "entries" => TileKind::Entries,
            "bodies" => TileKind::Bodies,
            l if !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_digit())
                && (l == "0" || !l.starts_with('0')) =>
            {
                let level: u32 = l.parse().ok()?;
                (level < 8).then_some(TileKind::Hashes { level })?
            }
            _ => return None,
        };
        let (digits, width) = match rest.split_once(".p/") {
            Some((d, w)) => {
                let w: u64 = (!w.starts_with('0')).then(|| w.parse().ok())??;
                ((1..WIDTH).contains(&w)).then_some((d, w))?
            }
            None => (rest, WIDTH),
        };
        let mut n: u64 = 0;
        let elements: Vec<&str> = digits.split('/').collect();
        for (i, e) in elements.iter().enumerate() {
            let e = if i + 1 < elements.len() {
                e.strip_prefix('x')?
            } else {
                e
            };
            if e.len() != 3 || !e.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            n = n.checked_mul(1000)?.checked_add(e.parse::<u64>().ok()?)?;
        }
        let tile = Self { kind, n, width };
        // One path per tile: "x000/123" and the like are refused.
        (tile.path() == path).then_some(tile)
    }

    /// The tiles of a tree of `size` leaves at every hash level, with the entry bundles
    /// (`with_data`: and the body bundles) at level 0.
    pub fn all(size: u64, with_data: bool) -> Vec<Self> {
        let mut out = Vec::new();
        let mut level = 0;
        while level < 8 && (size >> (HEIGHT * level)) > 0 {
            let count = size >> (HEIGHT * level);
            for n in 0..count.div_ceil(WIDTH) {
                let width = (count - n * WIDTH).min(WIDTH);
                out.push(Self {
                    kind: TileKind::Hashes { level },
                    n,
                    width,
                });
                if level == 0 && with_data {
                    for kind in [TileKind::Entries, TileKind::Bodies] {
                        out.push(Self { kind, n, width });
                    }
                }
            }
            level += 1;
        }
        out
    }

    /// Whether this tile exists in a tree of `size` leaves (a partial tile only at the
    /// tree's current right edge).
    pub fn exists_in(&self, size: u64) -> bool {
        let level = match self.kind {
            TileKind::Hashes { level } => level,
            _ => 0,
        };
        let count = size >> (HEIGHT * level);
        let full = count / WIDTH;
        if self.width == WIDTH {
            self.n < full
        } else {
            self.n == full && self.width == count % WIDTH
        }
    }

    /// The leaves this tile's entries or level-0 hashes cover.
    pub fn leaves(&self) -> std::ops::Range<u64> {
        self.n * WIDTH..self.n * WIDTH + self.width
    }
}

/// A hash tile's bytes: its `width` hashes read from the stored tree.
pub fn tile_hashes(tile: &Tile, r: &impl HashReader) -> Result<Vec<u8>, TreeError> {
    let TileKind::Hashes { level } = tile.kind else {
        return Err(TreeError::BadRange("not a hash tile".into()));
    };
    let indexes: Vec<u64> = (0..tile.width)
        .map(|i| stored_hash_index(HEIGHT * level, tile.n * WIDTH + i))
        .collect();
    Ok(r.read_hashes(&indexes)?.concat())
}

/// An entry bundle: each entry as a big-endian u16 length and its bytes.
pub fn bundle<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<u8>, TreeError> {
    let mut out = Vec::new();
    for e in entries {
        let len = u16::try_from(e.len())
            .map_err(|_| TreeError::BadRange(format!("an entry of {} bytes", e.len())))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// The entries of a bundle; `None` if it is not well framed.
pub fn unbundle(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_at_checked(2)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        let (entry, rest) = rest.split_at_checked(len)?;
        out.push(entry);
        bytes = rest;
    }
    Some(out)
}

/// The hashes of a hash tile's bytes.
pub fn split_hashes(bytes: &[u8]) -> Option<Vec<Hash>> {
    bytes.len().is_multiple_of(32).then(|| {
        bytes
            .chunks_exact(32)
            .filter_map(|c| c.try_into().ok())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_specification() {
        let t = |kind, n, width| Tile { kind, n, width };
        let h = |level| TileKind::Hashes { level };
        assert_eq!(t(h(0), 1234067, 256).path(), "tile/0/x001/x234/067");
        assert_eq!(t(h(2), 5, 17).path(), "tile/2/005.p/17");
        assert_eq!(t(TileKind::Entries, 0, 3).path(), "tile/entries/000.p/3");
        assert_eq!(
            t(TileKind::Bodies, 1000, 256).path(),
            "tile/bodies/x001/000"
        );
        for tile in [
            t(h(0), 1234067, 256),
            t(h(2), 5, 17),
            t(TileKind::Entries, 0, 3),
            t(h(7), 999, 255),
        ] {
            assert_eq!(Tile::parse(&tile.path()), Some(tile));
        }
        for bad in [
            "tile/0/1",
            "tile/0/0001",
            "tile/0/x000/001",
            "tile/0/001.p/0",
            "tile/0/001.p/256",
            "tile/01/001",
            "tile/8/001",
            "tile/data/001",
            "tile/0/001.p/07",
            "tile/0/001/",
            "tiles/0/001",
            "tile/0/x1/001",
        ] {
            assert_eq!(Tile::parse(bad), None, "{bad}");
        }
    }

    /// c2sp.org/tlog-tiles: "a tree of size 70,000 will be represented by 273 full level 0
    /// tiles, one partial level 0 tile of width 112, one full level 1 tile, one partial
    /// level 1 tile of width 17, and one partial level 2 tile of width 1".
    #[test]
    fn the_tiles_of_a_tree_of_70000_are_the_specification_s() {
        let tiles = Tile::all(70_000, false);
        let at = |level| -> Vec<u64> {
            tiles
                .iter()
                .filter(|t| t.kind == TileKind::Hashes { level })
                .map(|t| t.width)
                .collect()
        };
        let l0 = at(0);
        assert_eq!(l0.len(), 274);
        assert!(l0[..273].iter().all(|&w| w == 256));
        assert_eq!(l0[273], 112);
        assert_eq!(at(1), vec![256, 17]);
        assert_eq!(at(2), vec![1]);
        assert!(tiles.iter().all(|t| t.exists_in(70_000)));
        // "a tree of size 256 will be represented by a full level 0 tile and a partial
        // level 1 tile of width 1".
        let t256 = Tile::all(256, false);
        assert_eq!(t256.len(), 2);
        assert_eq!(
            t256[1],
            Tile {
                kind: TileKind::Hashes { level: 1 },
                n: 0,
                width: 1
            }
        );
        assert!(!Tile {
            kind: TileKind::Hashes { level: 0 },
            n: 273,
            width: 111
        }
        .exists_in(70_000));
    }

    #[test]
    fn bundles_frame_entries() {
        let b = bundle([b"ab".as_slice(), b"", b"xyz"]).unwrap();
        assert_eq!(b, [0, 2, b'a', b'b', 0, 0, 0, 3, b'x', b'y', b'z']);
        assert_eq!(unbundle(&b).unwrap(), vec![b"ab".as_slice(), b"", b"xyz"]);
        assert!(unbundle(&b[..b.len() - 1]).is_none());
    }
}
