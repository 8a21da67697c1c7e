//! Rollouts: prompts × `G` samples from the policy, scored by the task, with the tensors an
//! objective reads under their conventional names (`logp`, `old_logp`, `ref_logp`, `mask`,
//! `reward`, `group`, `advantages`).

use super::policy::Policy;
use super::task::{AdditionTask, Rng};

/// One step's rollouts, padded to `rows × width` (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutBatch {
    pub rows: usize,
    pub width: usize,
    /// The prompt of every row.
    pub prompts: Vec<[u32; 2]>,
    /// Sampled tokens `[rows * width]` (padding repeats `EOS`).
    pub tokens: Vec<u32>,
    /// Response mask `[rows * width]`.
    pub mask: Vec<bool>,
    /// Log-probs of the sampling policy `[rows * width]` (0 at padding).
    pub old_logp: Vec<f32>,
    /// Log-probs of the frozen reference policy `[rows * width]` (0 at padding).
    pub ref_logp: Vec<f32>,
    /// Sequence reward `[rows]`.
    pub reward: Vec<f32>,
    /// Prompt group of every row `[rows]` (rows of one prompt share an id).
    pub group: Vec<i64>,
    /// GRPO advantages broadcast to tokens `[rows * width]` (0 at padding).
    pub advantages: Vec<f32>,
    /// Entropy of the sampling policy at each position `[rows * width]` (0 at padding).
    pub entropy: Vec<f32>,
}

/// GRPO advantages: `(r - mean_g) / (std_g + eps)` within each group, with the unbiased
/// standard deviation (as verl's `compute_grpo_outcome_advantage`); a group of one row gets 0.
pub fn grpo_advantages(reward: &[f32], group: &[i64], eps: f64) -> Vec<f32> {
    let mut out = vec![0.0f32; reward.len()];
    let mut ids: Vec<i64> = group.to_vec();
    ids.sort_unstable();
    ids.dedup();
    for g in ids {
        let idx: Vec<usize> = (0..reward.len()).filter(|&i| group[i] == g).collect();
        let n = idx.len() as f64;
        if idx.len() < 2 {
            continue;
        }
        let mean = idx.iter().map(|&i| reward[i] as f64).sum::<f64>() / n;
        let var = idx
            .iter()
            .map(|&i| (reward[i] as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        let denom = var.sqrt() + eps;
        for &i in &idx {
            let centred = reward[i] as f64 - mean;
            out[i] = if denom > 0.0 {
                (centred / denom) as f32
            } else {
                0.0
            };
        }
    }
    out
}

/// Samples `prompts_per_step` prompts (uniformly, with replacement) and `group_size` responses
/// for each, and computes everything the objective may read.
pub fn collect(
    task: &AdditionTask,
    policy: &Policy,
    reference: &Policy,
    prompts_per_step: usize,
    group_size: usize,
    rng: &mut Rng,
) -> candle_core::Result<RolloutBatch> {
    let mut prompts = Vec::with_capacity(prompts_per_step * group_size);
    let mut group = Vec::with_capacity(prompts.capacity());
    for g in 0..prompts_per_step {
        let p = task.prompt(rng.below(task.num_prompts() as u64) as usize);
        for _ in 0..group_size {
            prompts.push(p);
            group.push(g as i64);
        }
    }
    let (tokens, len) = policy.sample(&prompts, rng)?;
    let rows = prompts.len();
    let width = policy.config.max_len;
    let mask: Vec<bool> = (0..rows * width)
        .map(|i| i % width < len[i / width])
        .collect();
    let reward: Vec<f32> = (0..rows)
        .map(|r| task.reward(prompts[r], &tokens[r * width..r * width + len[r]]))
        .collect();
    let masked = |v: Vec<Vec<f32>>| -> Vec<f32> {
        v.into_iter()
            .flatten()
            .zip(&mask)
            .map(|(x, &m)| if m { x } else { 0.0 })
            .collect()
    };
    let scored = policy.score(&prompts, &tokens)?;
    let old_logp = masked(scored.logp.to_vec2::<f32>()?);
    let entropy = masked(
        (scored.log_dist.exp()? * &scored.log_dist)?
            .sum(1)?
            .neg()?
            .reshape((rows, width))?
            .to_vec2::<f32>()?,
    );
    let ref_logp = masked(reference.score(&prompts, &tokens)?.logp.to_vec2::<f32>()?);
    let seq_adv = grpo_advantages(&reward, &group, 1e-6);
    let advantages = (0..rows * width)
        .map(|i| if mask[i] { seq_adv[i / width] } else { 0.0 })
        .collect();
    Ok(RolloutBatch {
        rows,
        width,
        prompts,
        tokens,
        mask,
        old_logp,
        ref_logp,
        reward,
        group,
        advantages,
        entropy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpo_advantages_zscore_within_groups() {
        let a = grpo_advantages(&[1.0, 0.0, 0.5, 0.5, 2.0], &[0, 0, 1, 1, 2], 0.0);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((a[0] - s).abs() < 1e-6 && (a[1] + s).abs() < 1e-6);
        assert_eq!(&a[2..], &[0.0, 0.0, 0.0]);
    }
}
