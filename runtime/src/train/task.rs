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

/// A deterministic random generator (SplitMix64): the training run depends on nothing else.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(1e-300);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Index drawn from the (unnormalised, non-negative) weights.
    pub fn categorical(&mut self, weights: &[f32]) -> usize {
        let total: f64 = weights.iter().map(|&w| w.max(0.0) as f64).sum();
        if total <= 0.0 || !total.is_finite() {
            return self.below(weights.len());
        }
        let mut u = self.next_f64() * total;
        for (i, &w) in weights.iter().enumerate() {
            u -= w.max(0.0) as f64;
            if u < 0.0 {
                return i;
            }
        }
        weights.len().saturating_sub(1)
    }
}

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

    #[test]
    fn rng_is_deterministic() {
        let mut a = Rng::new(3);
        let mut b = Rng::new(3);
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut r = Rng::new(1);
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[r.categorical(&[1.0, 0.0, 3.0])] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!(counts[2] > 2 * counts[0]);
    }
}
