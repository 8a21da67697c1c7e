//! A tiny autoregressive policy on candle: an MLP over the prompt, the position and the
//! previous token.
//!
//! For a row with prompt `(a, b)` the logits of token `t` are
//! `W2 · tanh(W1 · [E_a[a]; E_b[b]; P[t]; E_prev[y_{t-1}]] + b1) + b2`, with `y_{-1}` a
//! begin-of-sequence token. Weights are drawn from the run's own [`Rng`], so a run is a pure
//! function of its seed.

use super::task::{Rng, VOCAB};
use candle_core::{DType, Device, Tensor, Var, D};

/// Index of the begin-of-sequence token in the `prev` embedding (one past the vocabulary).
const BOS: u32 = VOCAB as u32;

/// Sizes of the policy network.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    /// Number of distinct values of a prompt slot.
    pub prompt_vocab: usize,
    /// Longest response (size of the position embedding).
    pub max_len: usize,
    /// Embedding width of each of the four feature slots.
    pub embed: usize,
    /// Hidden width of the MLP.
    pub hidden: usize,
}

/// The policy's parameters (candle [`Var`]s, so `backward` reaches them).
#[derive(Clone, Debug)]
pub struct Policy {
    pub config: PolicyConfig,
    emb_a: Var,
    emb_b: Var,
    emb_pos: Var,
    emb_prev: Var,
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
}

/// Per-position log-probabilities of a batch of responses, teacher-forced.
pub struct Scored {
    /// `[B, T]`: log-probability of the response token at each position (padding included,
    /// masked later).
    pub logp: Tensor,
    /// `[B*T, V]`: the full log-distribution at each position.
    pub log_dist: Tensor,
}

fn randn(rng: &mut Rng, shape: &[usize], std: f64) -> candle_core::Result<Var> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
    Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu)?)
}

impl Policy {
    /// A freshly initialised policy; the initial distribution is close to uniform.
    pub fn new(config: PolicyConfig, rng: &mut Rng) -> candle_core::Result<Self> {
        let (d, h) = (config.embed, config.hidden);
        Ok(Policy {
            emb_a: randn(rng, &[config.prompt_vocab, d], 1.0)?,
            emb_b: randn(rng, &[config.prompt_vocab, d], 1.0)?,
            emb_pos: randn(rng, &[config.max_len, d], 1.0)?,
            emb_prev: randn(rng, &[VOCAB + 1, d], 1.0)?,
            w1: randn(rng, &[4 * d, h], 1.0 / ((4 * d) as f64).sqrt())?,
            b1: Var::from_tensor(&Tensor::zeros(h, DType::F32, &Device::Cpu)?)?,
            w2: randn(rng, &[h, VOCAB], 0.05 / (h as f64).sqrt())?,
            b2: Var::from_tensor(&Tensor::zeros(VOCAB, DType::F32, &Device::Cpu)?)?,
            config,
        })
    }

    /// Every trainable variable (for the optimiser).
    pub fn vars(&self) -> Vec<Var> {
        vec![
            self.emb_a.clone(),
            self.emb_b.clone(),
            self.emb_pos.clone(),
            self.emb_prev.clone(),
            self.w1.clone(),
            self.b1.clone(),
            self.w2.clone(),
            self.b2.clone(),
        ]
    }

    /// A frozen copy with its own storage (the reference policy).
    pub fn frozen_copy(&self) -> candle_core::Result<Policy> {
        let c = |v: &Var| Var::from_tensor(&v.as_tensor().copy()?);
        Ok(Policy {
            config: self.config.clone(),
            emb_a: c(&self.emb_a)?,
            emb_b: c(&self.emb_b)?,
            emb_pos: c(&self.emb_pos)?,
            emb_prev: c(&self.emb_prev)?,
            w1: c(&self.w1)?,
            b1: c(&self.b1)?,
            w2: c(&self.w2)?,
            b2: c(&self.b2)?,
        })
    }

    /// Logits `[N, V]` for `N` positions given each one's prompt, position and previous token.
    fn logits(
        &self,
        a: Vec<u32>,
        b: Vec<u32>,
        pos: Vec<u32>,
        prev: Vec<u32>,
    ) -> candle_core::Result<Tensor> {
        let n = a.len();
        let dev = Device::Cpu;
        let ix = |v: Vec<u32>| Tensor::from_vec(v, n, &dev);
        let x = Tensor::cat(
            &[
                self.emb_a.as_tensor().index_select(&ix(a)?, 0)?,
                self.emb_b.as_tensor().index_select(&ix(b)?, 0)?,
                self.emb_pos.as_tensor().index_select(&ix(pos)?, 0)?,
                self.emb_prev.as_tensor().index_select(&ix(prev)?, 0)?,
            ],
            1,
        )?;
        let h = x
            .matmul(self.w1.as_tensor())?
            .broadcast_add(self.b1.as_tensor())?
            .tanh()?;
        h.matmul(self.w2.as_tensor())?
            .broadcast_add(self.b2.as_tensor())
    }

    /// Samples one response per prompt, token by token, stopping a row at `EOS`. Returns the
    /// tokens `[B * max_len]` (padding after `EOS` repeats `EOS`) and each row's length.
    pub fn sample(
        &self,
        prompts: &[[u32; 2]],
        rng: &mut Rng,
    ) -> candle_core::Result<(Vec<u32>, Vec<usize>)> {
        let t_max = self.config.max_len;
        let rows = prompts.len();
        let eos = super::task::EOS;
        let mut tokens = vec![eos; rows * t_max];
        let mut len = vec![0usize; rows];
        let mut done = vec![false; rows];
        let mut prev = vec![BOS; rows];
        for t in 0..t_max {
            let logits = self.logits(
                prompts.iter().map(|p| p[0]).collect(),
                prompts.iter().map(|p| p[1]).collect(),
                vec![t as u32; rows],
                prev.clone(),
            )?;
            let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
            for r in 0..rows {
                if done[r] {
                    continue;
                }
                let y = rng.categorical(&probs[r]) as u32;
                tokens[r * t_max + t] = y;
                len[r] = t + 1;
                prev[r] = y;
                if y == eos {
                    done[r] = true;
                }
            }
        }
        Ok((tokens, len))
    }

    /// Teacher-forced log-probabilities of `tokens` (`[B * T]`, `T = max_len`).
    pub fn score(&self, prompts: &[[u32; 2]], tokens: &[u32]) -> candle_core::Result<Scored> {
        let t_max = self.config.max_len;
        let rows = prompts.len();
        let n = rows * t_max;
        let (mut a, mut b, mut pos, mut prev) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::new(),
        );
        for (r, p) in prompts.iter().enumerate() {
            for t in 0..t_max {
                a.push(p[0]);
                b.push(p[1]);
                pos.push(t as u32);
                prev.push(if t == 0 {
                    BOS
                } else {
                    tokens[r * t_max + t - 1]
                });
            }
        }
        let logits = self.logits(a, b, pos, prev)?;
        let log_dist = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let idx = Tensor::from_vec(tokens.to_vec(), (n, 1), &Device::Cpu)?;
        let logp = log_dist.gather(&idx, 1)?.reshape((rows, t_max))?;
        Ok(Scored { logp, log_dist })
    }
}

/// Token-mean entropy of `log_dist` and KL(`log_dist` ‖ `ref_dist`) over the valid positions.
pub fn entropy_and_kl(
    log_dist: &Tensor,
    ref_dist: &Tensor,
    mask: &[bool],
) -> candle_core::Result<(f64, f64)> {
    let lp = log_dist.detach().to_vec2::<f32>()?;
    let lq = ref_dist.detach().to_vec2::<f32>()?;
    let (mut ent, mut kl, mut n) = (0.0f64, 0.0f64, 0usize);
    for (i, (p_row, q_row)) in lp.iter().zip(&lq).enumerate() {
        if !mask.get(i).copied().unwrap_or(false) {
            continue;
        }
        n += 1;
        for (&lpi, &lqi) in p_row.iter().zip(q_row) {
            let p = (lpi as f64).exp();
            ent -= p * lpi as f64;
            kl += p * (lpi as f64 - lqi as f64);
        }
    }
    let n = n.max(1) as f64;
    Ok((ent / n, kl / n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Policy {
        let cfg = PolicyConfig {
            prompt_vocab: 4,
            max_len: 3,
            embed: 4,
            hidden: 8,
        };
        Policy::new(cfg, &mut Rng::new(0)).expect("policy")
    }

    #[test]
    fn sampling_and_scoring_agree() {
        let p = small();
        let prompts = [[0, 1], [2, 3], [3, 3]];
        let (tokens, len) = p.sample(&prompts, &mut Rng::new(5)).expect("sample");
        assert_eq!(tokens.len(), 9);
        assert!(len.iter().all(|&l| (1..=3).contains(&l)));
        let s = p.score(&prompts, &tokens).expect("score");
        let logp = s.logp.to_vec2::<f32>().expect("vec");
        assert!(logp.iter().flatten().all(|&x| x <= 0.0 && x.is_finite()));
        // Near-uniform at initialisation.
        let mean = logp.iter().flatten().sum::<f32>() / 9.0;
        assert!((mean + (VOCAB as f32).ln()).abs() < 0.2, "{mean}");
        let r = p.frozen_copy().expect("copy");
        let (ent, kl) = entropy_and_kl(
            &s.log_dist,
            &r.score(&prompts, &tokens).expect("s").log_dist,
            &[true; 9],
        )
        .expect("ent");
        assert!(kl.abs() < 1e-6);
        assert!((ent - (VOCAB as f64).ln()).abs() < 0.1);
    }
}
