//! The llama.cpp engine's slots: which sequence id holds which tokens, and where a prompt
//! runs. Pure bookkeeping, so its rules are unit-tested without a model.

use super::super::common_prefix;

/// What each slot's sequence holds, shared with the engine handle so that
/// [`Engine::hot_prefix_len`] needs no round trip to the worker.
#[derive(Debug, Default)]
pub(super) struct Slots {
    /// Tokens whose KV each slot holds (empty: free).
    pub(super) tokens: Vec<Vec<u32>>,
    /// Last use of each slot (a counter), for least-recently-used eviction.
    used: Vec<u64>,
    clock: u64,
}

impl Slots {
    pub(super) fn new(n: usize) -> Self {
        Self {
            tokens: vec![Vec::new(); n],
            used: vec![0; n],
            clock: 0,
        }
    }

    pub(super) fn longest_match(&self, tokens: &[u32]) -> (usize, usize) {
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (i, common_prefix(t, tokens)))
            .max_by_key(|&(i, n)| (n, self.used[i]))
            .unwrap_or((0, 0))
    }

    pub(super) fn touch(&mut self, slot: usize) {
        self.clock += 1;
        self.used[slot] = self.clock;
    }

    /// A free slot, else the least recently used one, never `keep`.
    pub(super) fn victim(&self, keep: Option<usize>) -> Option<usize> {
        (0..self.tokens.len())
            .filter(|&i| Some(i) != keep)
            .min_by_key(|&i| (!self.tokens[i].is_empty(), self.used[i]))
    }

    /// The least recently used slot that holds tokens, never `keep`: the one to drop when
    /// the cell pool is full (a free slot holds no cells, so dropping it frees nothing).
    pub(super) fn eviction(&self, keep: usize) -> Option<usize> {
        (0..self.tokens.len())
            .filter(|&i| i != keep && !self.tokens[i].is_empty())
            .min_by_key(|&i| self.used[i])
    }

    /// Where `prompt` runs: the slot holding its longest prefix if that slot's tokens are all
    /// a prefix of the prompt (extended in place), otherwise a free or least recently used
    /// *other* slot that receives a copy of the shared prefix, so that a branch never
    /// destroys the sequence it branches from. `reuse` off (the naive baseline) runs the whole
    /// prompt in the best slot.
    pub(super) fn plan(&self, prompt: &[u32], reuse: bool) -> Placement {
        let (best, common) = self.longest_match(prompt);
        // At least the last prompt token runs, for its logits.
        let reused = if reuse {
            common.min(prompt.len().saturating_sub(1))
        } else {
            0
        };
        let in_place = reused > 0 && common == self.tokens[best].len();
        let dest = if in_place || !reuse {
            best
        } else {
            self.victim(Some(best)).unwrap_or(best)
        };
        Placement {
            dest,
            source: best,
            reused,
        }
    }
}

/// Where a prompt runs ([`Slots::plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Placement {
    /// The slot the prompt runs in.
    pub dest: usize,
    /// The slot holding its longest prefix (`dest` when extended in place).
    pub source: usize,
    /// Prompt tokens whose KV is reused from `source`.
    pub reused: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(held: &[&[u32]]) -> Slots {
        let mut s = Slots::new(held.len());
        for (i, t) in held.iter().enumerate() {
            s.tokens[i] = t.to_vec();
            s.touch(i);
        }
        s
    }

    #[test]
    fn a_continuation_extends_its_slot_in_place() {
        let s = slots(&[&[1, 2, 3], &[]]);
        let p = s.plan(&[1, 2, 3, 4, 5], true);
        assert_eq!(
            p,
            Placement {
                dest: 0,
                source: 0,
                reused: 3
            }
        );
    }

    #[test]
    fn a_branch_never_destroys_its_parent() {
        // Slot 0 holds a parent; the prompt shares only its first two tokens.
        let s = slots(&[&[1, 2, 3, 4], &[9, 9]]);
        let p = s.plan(&[1, 2, 7], true);
        assert_eq!(p.source, 0);
        assert_ne!(p.dest, 0, "the parent's slot is not overwritten");
        assert_eq!(p.reused, 2);
        // The same prompt as the parent, shorter: a prefix of it is still a branch.
        let p = s.plan(&[1, 2, 3], true);
        assert_ne!(p.dest, 0);
        assert_eq!(p.reused, 2, "the last prompt token always runs");
    }

    #[test]
    fn the_branch_goes_to_a_free_slot_else_the_least_recently_used_other() {
        let mut s = slots(&[&[1, 2, 3], &[5], &[6]]);
        s.tokens[2].clear();
        assert_eq!(s.plan(&[1, 2, 9], true).dest, 2, "a free slot first");
        let mut s = slots(&[&[1, 2, 3], &[5], &[6]]);
        s.touch(1);
        // Slot 2 is now the least recently used other than the source.
        assert_eq!(s.plan(&[1, 2, 9], true).dest, 2);
        s.touch(2);
        s.touch(0);
        assert_eq!(s.plan(&[1, 2, 9], true).dest, 1);
    }

    #[test]
    fn a_full_pool_drops_the_least_recently_used_occupied_slot_even_when_one_is_free() {
        let mut s = slots(&[&[1], &[], &[2], &[3]]);
        s.touch(3);
        s.touch(0);
        // Slot 1 is free but holds no cells; slot 2 is the oldest that does.
        assert_eq!(s.eviction(0), Some(2));
        assert_eq!(s.eviction(2), Some(3));
        assert_eq!(
            slots(&[&[1], &[]]).eviction(0),
            None,
            "nothing else to drop"
        );
    }

    #[test]
    fn without_reuse_everything_runs() {
        let s = slots(&[&[1, 2, 3]]);
        assert_eq!(s.plan(&[1, 2, 3, 4], false).reused, 0);
    }
}
