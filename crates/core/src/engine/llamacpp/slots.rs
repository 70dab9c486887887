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
    /// Slots a generation is running in: never a destination, never dropped.
    busy: Vec<bool>,
    /// The most slots busy at once.
    peak_busy: usize,
    /// The most sequences decoding at once (some of them may wait for a later call).
    pub(super) peak_decoding: usize,
    /// The most decode tokens one call has run.
    pub(super) peak_decode_batch: usize,
    clock: u64,
}

impl Slots {
    pub(super) fn new(n: usize) -> Self {
        Self {
            tokens: vec![Vec::new(); n],
            used: vec![0; n],
            busy: vec![false; n],
            peak_busy: 0,
            peak_decoding: 0,
            peak_decode_batch: 0,
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

    pub(super) fn set_busy(&mut self, slot: usize, busy: bool) {
        self.busy[slot] = busy;
        let n = self.busy.iter().filter(|b| **b).count();
        self.peak_busy = self.peak_busy.max(n);
    }

    pub(super) fn peak_busy(&self) -> usize {
        self.peak_busy
    }

    /// KV cells the busy slots hold (a prefix they share counted once).
    pub(super) fn busy_cells(&self) -> usize {
        let held: Vec<&[u32]> = (0..self.tokens.len())
            .filter(|&i| self.busy[i])
            .map(|i| self.tokens[i].as_slice())
            .collect();
        super::super::distinct_prefix_tokens(&held)
    }

    /// A free slot, else the least recently used one, never `keep` nor a busy one.
    pub(super) fn victim(&self, keep: Option<usize>) -> Option<usize> {
        (0..self.tokens.len())
            .filter(|&i| Some(i) != keep && !self.busy[i])
            .min_by_key(|&i| (!self.tokens[i].is_empty(), self.used[i]))
    }

    /// The least recently used idle slot that holds tokens: the one to drop when the cell
    /// pool is full (a free slot holds no cells, so dropping it frees nothing; a busy one is
    /// in use).
    pub(super) fn eviction(&self) -> Option<usize> {
        (0..self.tokens.len())
            .filter(|&i| !self.busy[i] && !self.tokens[i].is_empty())
            .min_by_key(|&i| self.used[i])
    }

    /// Where `prompt` runs: the slot holding its longest prefix if that slot's tokens are all
    /// a prefix of the prompt and no generation is running in it (extended in place),
    /// otherwise a free or least recently used idle *other* slot that receives a copy of the
    /// shared prefix, so that a branch never destroys the sequence it branches from (a busy
    /// slot's prefix may be copied: its decoded positions do not change). `reuse` off (the
    /// naive baseline) runs the whole prompt in the best idle slot. `None`: every slot is busy.
    pub(super) fn plan(&self, prompt: &[u32], reuse: bool) -> Option<Placement> {
        let (best, common) = self.longest_match(prompt);
        // At least the last prompt token runs, for its logits.
        let reused = if reuse {
            common.min(prompt.len().saturating_sub(1))
        } else {
            0
        };
        let in_place = reused > 0 && common == self.tokens[best].len() && !self.busy[best];
        let dest = if in_place {
            best
        } else if !reuse {
            if self.busy[best] {
                self.victim(None)?
            } else {
                best
            }
        } else {
            match self.victim(Some(best)) {
                Some(v) => v,
                None if !self.busy[best] => best,
                None => return None,
            }
        };
        Some(Placement {
            dest,
            source: best,
            reused,
        })
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
        let p = s.plan(&[1, 2, 3, 4, 5], true).unwrap();
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
        let p = s.plan(&[1, 2, 7], true).unwrap();
        assert_eq!(p.source, 0);
        assert_ne!(p.dest, 0, "the parent's slot is not overwritten");
        assert_eq!(p.reused, 2);
        // The same prompt as the parent, shorter: a prefix of it is still a branch.
        let p = s.plan(&[1, 2, 3], true).unwrap();
        assert_ne!(p.dest, 0);
        assert_eq!(p.reused, 2, "the last prompt token always runs");
    }

    #[test]
    fn the_branch_goes_to_a_free_slot_else_the_least_recently_used_other() {
        let mut s = slots(&[&[1, 2, 3], &[5], &[6]]);
        s.tokens[2].clear();
        assert_eq!(
            s.plan(&[1, 2, 9], true).unwrap().dest,
            2,
            "a free slot first"
        );
        let mut s = slots(&[&[1, 2, 3], &[5], &[6]]);
        s.touch(1);
        // Slot 2 is now the least recently used other than the source.
        assert_eq!(s.plan(&[1, 2, 9], true).unwrap().dest, 2);
        s.touch(2);
        s.touch(0);
        assert_eq!(s.plan(&[1, 2, 9], true).unwrap().dest, 1);
    }

    #[test]
    fn a_full_pool_drops_the_least_recently_used_occupied_slot_even_when_one_is_free() {
        let mut s = slots(&[&[1], &[], &[2], &[3]]);
        s.touch(3);
        s.touch(0);
        s.set_busy(0, true);
        // Slot 1 is free but holds no cells; slot 2 is the oldest that does.
        assert_eq!(s.eviction(), Some(2));
        s.set_busy(2, true);
        assert_eq!(s.eviction(), Some(3));
        let mut s = slots(&[&[1], &[]]);
        s.set_busy(0, true);
        assert_eq!(s.eviction(), None, "nothing else to drop");
    }

    #[test]
    fn without_reuse_everything_runs() {
        let s = slots(&[&[1, 2, 3]]);
        assert_eq!(s.plan(&[1, 2, 3, 4], false).unwrap().reused, 0);
    }

    #[test]
    fn a_running_generation_is_never_a_destination() {
        let mut s = slots(&[&[1, 2, 3], &[5]]);
        s.set_busy(0, true);
        // The continuation of a busy slot branches into the other one, copying its prefix.
        let p = s.plan(&[1, 2, 3, 4], true).unwrap();
        assert_eq!((p.dest, p.source, p.reused), (1, 0, 3));
        s.set_busy(1, true);
        assert_eq!(s.plan(&[1, 2, 3, 4], true), None, "every slot busy: wait");
        assert_eq!(s.plan(&[7], false), None);
        assert_eq!(s.peak_busy(), 2);
        assert_eq!(s.busy_cells(), 4, "[1, 2, 3] and [5]");
        s.set_busy(0, false);
        assert_eq!(s.plan(&[1, 2, 3, 4], true).unwrap().dest, 0);
        assert_eq!(s.victim(None), Some(0));
    }
}
