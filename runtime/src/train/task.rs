//! The toy task: single-digit addition with a verifiable reward.
//!
//! A prompt is a pair `(a, b)` with `a, b < operand_range`; the correct response is the decimal
//! digits of `a + b` followed by the end-of-sequence token ([`EOS`]). Responses are at most
//! [`AdditionTask::max_len`] tokens long; generation stops at `EOS`, so rows have different
//! lengths and the response `mask` matters. The reward is the fraction of target positions the
//! response gets right (in `[0, 1]`; `1` exactly when the response equals the target), so a
//! uniformly random policy scores about `1 / VOCAB`.

/// Digits `0..=9` are tokens `0..=9`; this is the end-of-sequence token.
pub const EOS: u32 = 10;
/// Size of the response vocabulary (ten digits and `EOS`).
pub const VOCAB: usize = 11;

/// The training run's generator: one SplitMix64 for the whole crate.
pub use crate::rng::Rng;

/// Addition of two operands below `operand_range`, answered in decimal.
#[derive(Clone, Debug, PartialEq)]
pub struct AdditionTask {
    /// Operands are `0..operand_range` (at most 10, so that `a + b` has at most two digits).
    pub operand_range: u32,
    /// Longest response the policy may produce (two digits and `EOS`).
    pub max_len: usize,
}

impl Default for AdditionTask {
    fn default() -> Self {
        AdditionTask {
            operand_range: 5,
            max_len: 3,
        }
    }
}

impl AdditionTask {
    /// Number of distinct prompts.
    pub fn num_prompts(&self) -> usize {
        (self.operand_range * self.operand_range) as usize
    }
    /// Size of the vocabulary of prompt slots (operand values).
    pub fn prompt_vocab(&self) -> usize {
        self.operand_range as usize
    }
    /// The prompt with index `i < num_prompts()`, as its two operand slots.
    pub fn prompt(&self, i: usize) -> [u32; 2] {
        let n = self.operand_range as usize;
        [(i / n) as u32, (i % n) as u32]
    }
    /// The correct response: the digits of `a + b` and `EOS`.
    pub fn target(&self, prompt: [u32; 2]) -> Vec<u32> {
        let s = prompt[0] + prompt[1];
        let mut t = if s >= 10 {
            vec![s / 10, s % 10]
        } else {
            vec![s]
        };
        t.push(EOS);
        t
    }
    /// The reward of a response (its tokens up to and including `EOS`).
    pub fn reward(&self, prompt: [u32; 2], response: &[u32]) -> f32 {
        let target = self.target(prompt);
        let hits = target.iter().zip(response).filter(|(a, b)| a == b).count();
        hits as f32 / target.len().max(response.len()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_rewards() {
        let t = AdditionTask {
            operand_range: 10,
            max_len: 3,
        };
        assert_eq!(AdditionTask::default().num_prompts(), 25);
        assert_eq!(t.target([7, 5]), vec![1, 2, EOS]);
        assert_eq!(t.target([2, 3]), vec![5, EOS]);
        assert_eq!(t.reward([2, 3], &[5, EOS]), 1.0);
        assert_eq!(t.reward([2, 3], &[5, 1, EOS]), 1.0 / 3.0);
        assert_eq!(t.reward([7, 5], &[1, 3, EOS]), 2.0 / 3.0);
        assert_eq!(t.num_prompts(), 100);
        assert_eq!(t.prompt(57), [5, 7]);
    }
}
