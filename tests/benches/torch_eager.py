#!/usr/bin/env python3
"""PyTorch-eager baseline for the CPU backend: verl-style loss code against `rlobj bench`.

Issue #5 asks the cpu backend to beat PyTorch eager running verl's loss code. This script
writes the four headline losses the way verl's `core_algos.py` computes them (padded
[B, T] tensors with a response mask, one eager op per formula step, autograd for the
backward) -- our own transcription of the formulas, not verl's source -- and times
forward+backward with the same rows, tokens and thread count as `rlobj bench`, whose cpu
time it then measures in the same run, objective by objective, back to back.

usage (from the project root, with torch installed; not part of CI):
    cargo build --release -p rlobj-runtime --bin rlobj
    python3 tests/benches/torch_eager.py [--rows 64] [--tokens 4096] [--threads 2] [--reps 20]

What is timed for torch: building the loss from inputs that already exist as tensors
(log-probs with requires_grad, advantages or rewards, the mask, group ids) and
`loss.backward()`; the metrics verl reports (clip fractions, ppo_kl) are computed too,
as in verl. For GRPO, DAPO and GSPO the group advantages are part of the timed step,
written as verl's `compute_grpo_outcome_advantage` does (a Python loop over rows
building per-group lists): that is what a verl user runs per batch.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import torch


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def agg_token_mean(losses, mask):
    return masked_mean(losses, mask)


def agg_seq_mean_token_mean(losses, mask):
    per_row = (losses * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_row.mean()


def grpo_outcome_advantage(token_rewards, mask, index, eps=1e-6):
    """Group z-score of the summed reward, Bessel std, singleton groups mean 0 / std 1."""
    scores = token_rewards.sum(dim=-1)
    id2score = {}
    with torch.no_grad():
        bsz = scores.shape[0]
        for i in range(bsz):
            id2score.setdefault(index[i], []).append(scores[i])
        id2mean, id2std = {}, {}
        for idx, vals in id2score.items():
            if len(vals) == 1:
                id2mean[idx] = torch.tensor(0.0)
                id2std[idx] = torch.tensor(1.0)
            else:
                t = torch.stack(vals)
                id2mean[idx] = torch.mean(t)
                id2std[idx] = torch.std(t)
        for i in range(bsz):
            scores[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + eps)
    return scores.unsqueeze(-1) * mask


def ppo_surrogate(logp, old_logp, adv, mask, lo, hi, clip_c=None):
    """verl's vanilla policy loss: clamped log-ratio, clipped surrogate, optional dual clip."""
    neg_kl = torch.clamp(logp - old_logp, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    ppo_kl = masked_mean(-neg_kl, mask)
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1 - lo, 1 + hi)
    clipped = torch.maximum(l1, l2)
    clipfrac = masked_mean(torch.gt(l2, l1).float(), mask)
    if clip_c is None:
        return clipped, {"pg_clipfrac": clipfrac, "ppo_kl": ppo_kl}
    l3 = -adv * clip_c
    dual = torch.min(l3, clipped)
    clipfrac_lower = masked_mean(torch.gt(clipped, l3) * (adv < 0).float(), mask)
    losses = torch.where(adv < 0, dual, clipped)
    return losses, {"pg_clipfrac": clipfrac, "ppo_kl": ppo_kl, "pg_clipfrac_lower": clipfrac_lower}


def low_var_kl(logp, ref_logp):
    kl = torch.clamp(ref_logp - logp, min=-20.0, max=20.0)
    ratio = torch.exp(kl)
    return torch.clamp(ratio - kl - 1, min=-10.0, max=10.0)


def step_vanilla(b):
    losses, m = ppo_surrogate(b["logp"], b["old_logp"], b["advantages"], b["mask"], 0.2, 0.2, 3.0)
    return agg_token_mean(losses, b["mask"]), m


def step_grpo(b):
    adv = grpo_outcome_advantage(b["token_rewards"].clone(), b["mask"], b["index"])
    losses, m = ppo_surrogate(b["logp"], b["old_logp"], adv, b["mask"], 0.2, 0.2)
    kl = low_var_kl(b["logp"], b["ref_logp"])
    kl_loss = agg_token_mean(kl, b["mask"])
    return agg_token_mean(losses, b["mask"]) + 0.001 * kl_loss, m


def step_dapo(b):
    adv = grpo_outcome_advantage(b["token_rewards"].clone(), b["mask"], b["index"])
    losses, m = ppo_surrogate(b["logp"], b["old_logp"], adv, b["mask"], 0.2, 0.28)
    return agg_token_mean(losses, b["mask"]), m


def step_gspo(b):
    adv = grpo_outcome_advantage(b["token_rewards"].clone(), b["mask"], b["index"])
    logp, old_logp, mask = b["logp"], b["old_logp"], b["mask"]
    neg_kl = logp - old_logp
    lengths = mask.sum(-1).clamp(min=1.0)
    seq_kl = (neg_kl * mask).sum(-1) / lengths
    log_seq_ratio = logp - logp.detach() + seq_kl.detach().unsqueeze(-1)
    log_seq_ratio = torch.clamp(log_seq_ratio, max=10.0)
    seq_ratio = torch.exp(log_seq_ratio)
    l1 = -adv * seq_ratio
    l2 = -adv * torch.clamp(seq_ratio, 1 - 3e-4, 1 + 4e-4)
    losses = torch.maximum(l1, l2)
    m = {"pg_clipfrac": masked_mean(torch.gt(l2, l1).float(), mask),
         "ppo_kl": masked_mean(-neg_kl, mask)}
    return agg_seq_mean_token_mean(losses, mask), m


STEPS = {"verl/vanilla": step_vanilla, "grpo": step_grpo, "dapo": step_dapo, "gspo": step_gspo}


def make_batch(rows, tokens, group_size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (rows, tokens)
    logp = (-torch.rand(shape, generator=g) * 2.0).requires_grad_(True)
    old_logp = logp.detach() + 0.05 * torch.randn(shape, generator=g)
    ref_logp = logp.detach() + 0.05 * torch.randn(shape, generator=g)
    token_rewards = torch.zeros(shape)
    token_rewards[:, -1] = torch.rand(rows, generator=g)
    return {
        "logp": logp,
        "old_logp": old_logp,
        "ref_logp": ref_logp,
        "advantages": torch.randn(shape, generator=g),
        "token_rewards": token_rewards,
        "mask": torch.ones(shape),
        "index": [f"prompt{i // group_size}" for i in range(rows)],
    }


def time_torch(step, batch, reps):
    def once():
        batch["logp"].grad = None
        loss, metrics = step(batch)
        loss.backward()
        _ = [float(v.detach()) for v in metrics.values()]
        return float(loss.detach())

    once()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_rlobj(rlobj, name, rows, tokens):
    out = subprocess.run(
        [rlobj, "bench", f"objectives/{name}.obj", "--rows", str(rows), "--tokens", str(tokens),
         "--backends", "cpu", "--json"],
        check=True, capture_output=True, text=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    return report["backends"][0]["seconds"], report["roofline_fraction"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rlobj", default="target/release/rlobj")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batch = make_batch(args.rows, args.tokens)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rows} x {args.tokens}, "
          f"median of {args.reps}")
    print("| objective | torch eager ms | rlobj cpu ms | x torch | roofline |")
    print("|---|---|---|---|---|")
    for name, step in STEPS.items():
        t_torch = time_torch(step, batch, args.reps)
        t_cpu, roof = time_rlobj(args.rlobj, name, args.rows, args.tokens)
        print(f"| {name} | {t_torch * 1e3:.2f} | {t_cpu * 1e3:.2f} | "
              f"{t_torch / t_cpu:.1f} | {roof:.2f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
