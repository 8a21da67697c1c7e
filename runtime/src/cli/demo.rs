//! `rlobj demo`: the catalog on a synthetic batch generated in code, so the first command
//! of the README needs no data. The batch is deterministic (a fixed-seed LCG) and has what
//! real batches have: ragged rows (one full, one of length 1), prompt groups of 4 with mixed
//! and uniform rewards, and NaN in every padding position of every float tensor — which
//! must never reach a result, since padding is structural.

use super::{Fail, Io};
use crate::api::Objective;
use crate::batch::HostTensor;
use std::time::Instant;

/// One catalog entry: its path (for messages), its source, and whether it reads
/// `advantages` per row (TRL's convention) rather than per token (verl's).
pub struct Entry {
    pub path: &'static str,
    pub source: &'static str,
    pub seq_advantages: bool,
}

macro_rules! entry {
    ($path:literal) => {
        entry!($path, false)
    };
    ($path:literal, $seq:expr) => {
        Entry {
            path: $path,
            source: include_str!(concat!("../../../", $path)),
            seq_advantages: $seq,
        }
    };
}

/// The objectives `demo` runs. Add a line to add one.
pub const CATALOG: &[Entry] = &[
    entry!("objectives/grpo.obj"),
    entry!("objectives/dapo.obj"),
    entry!("objectives/dr_grpo.obj"),
    entry!("objectives/gspo.obj"),
    entry!("objectives/gmpo.obj"),
    entry!("objectives/sapo.obj"),
    entry!("objectives/cispo.obj"),
    entry!("objectives/gppo.obj"),
    entry!("objectives/rloo.obj"),
    entry!("objectives/disco.obj"),
    entry!("objectives/gdpo.obj"),
    entry!("objectives/wco_uwo.obj"),
    entry!("objectives/ppo.obj"),
    entry!("objectives/verl/vanilla.obj"),
    entry!("objectives/verl/kl_cov.obj"),
    entry!("objectives/verl/value_loss.obj"),
    entry!("objectives/verl/adv_gae.obj"),
    entry!("objectives/trl/grpo.obj", true),
];

/// A small deterministic generator (Knuth's MMIX LCG), so the demo needs no crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

/// The synthetic batch: `rows × width` with every conventional tensor name. Token tensors
/// hold NaN at padding. `advantages_seq` is the per-row advantage (renamed to `advantages`
/// for entries that read it per row).
pub fn synthetic_batch(rows: usize, width: usize) -> Vec<(String, HostTensor)> {
    let mut g = Lcg(0x5eed_0b1e);
    let width = width.max(1);
    let lens: Vec<usize> = (0..rows)
        .map(|r| match r {
            0 => width,
            1 => 1,
            _ => (g.range(0.25, 1.0) * width as f64)
                .ceil()
                .clamp(1.0, width as f64) as usize,
        })
        .collect();
    let group: Vec<i64> = (0..rows).map(|r| (r / 4) as i64).collect();
    // Group 1 is uniform (all correct): no learning signal, exercises dynamic sampling.
    let reward: Vec<f64> = (0..rows)
        .map(|r| {
            if group[r] == 1 || g.next() < 0.5 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    // Group z-scores (Bessel, eps 1e-6), as GRPO computes them.
    let mut adv_seq = vec![0.0; rows];
    for gid in 0..rows.div_ceil(4) as i64 {
        let members: Vec<usize> = (0..rows).filter(|&r| group[r] == gid).collect();
        let n = members.len() as f64;
        let mean = members.iter().map(|&r| reward[r]).sum::<f64>() / n;
        let var = if n > 1.0 {
            members
                .iter()
                .map(|&r| (reward[r] - mean).powi(2))
                .sum::<f64>()
                / (n - 1.0)
        } else {
            1.0
        };
        for &r in &members {
            adv_seq[r] = (reward[r] - mean) / (var.sqrt() + 1e-6);
        }
    }
    let mut mask = vec![0.0; rows * width];
    let mut tok = |f: &mut dyn FnMut(&mut Lcg, usize, usize) -> f64| -> Vec<f64> {
        let mut v = vec![f64::NAN; rows * width];
        for r in 0..rows {
            for t in 0..lens[r] {
                v[r * width + t] = f(&mut g, r, t);
            }
        }
        v
    };
    let old_logp = tok(&mut |g, _, _| -g.range(0.02, 3.0));
    let noise = tok(&mut |g, _, _| g.range(-0.3, 0.3));
    let ref_noise = tok(&mut |g, _, _| g.range(-0.2, 0.2));
    let values = tok(&mut |g, _, _| g.range(-1.0, 1.0));
    let vnoise = tok(&mut |g, _, _| g.range(-0.2, 0.2));
    let entropy = tok(&mut |g, _, _| g.range(0.1, 2.5));
    let is_w = tok(&mut |g, _, _| g.range(0.8, 1.2));
    let curvature = tok(&mut |g, _, _| g.range(0.0, 1.0));
    let token_rewards = tok(&mut |_, r, t| if t + 1 == lens[r] { reward[r] } else { 0.0 });
    let advantages = tok(&mut |_, r, _| adv_seq[r]);
    for r in 0..rows {
        for t in 0..lens[r] {
            mask[r * width + t] = 1.0;
        }
    }
    let zip = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x + y).collect() };
    let logp = zip(&old_logp, &noise);
    let ref_logp = zip(&old_logp, &ref_noise);
    let vpreds = zip(&values, &vnoise);
    let returns: Vec<f64> = values.iter().map(|v| v + 0.1).collect();
    // Three reward components per row (the channel axis of GDPO and WCO/UWO): the task
    // reward, a length bonus and a noisy judge score.
    let rewards: Vec<f64> = (0..rows)
        .flat_map(|r| {
            let judge = (reward[r] + g.range(-0.3, 0.3)).clamp(0.0, 1.0);
            [reward[r], lens[r] as f64 / width as f64, judge]
        })
        .collect();
    let bt = vec![rows, width];
    vec![
        ("mask".into(), HostTensor::float(bt.clone(), mask)),
        ("logp".into(), HostTensor::float(bt.clone(), logp)),
        ("old_logp".into(), HostTensor::float(bt.clone(), old_logp)),
        ("ref_logp".into(), HostTensor::float(bt.clone(), ref_logp)),
        (
            "advantages".into(),
            HostTensor::float(bt.clone(), advantages),
        ),
        (
            "token_rewards".into(),
            HostTensor::float(bt.clone(), token_rewards),
        ),
        ("values".into(), HostTensor::float(bt.clone(), values)),
        ("vpreds".into(), HostTensor::float(bt.clone(), vpreds)),
        ("returns".into(), HostTensor::float(bt.clone(), returns)),
        ("entropy".into(), HostTensor::float(bt.clone(), entropy)),
        (
            "rollout_is_weights".into(),
            HostTensor::float(bt.clone(), is_w),
        ),
        ("curvature".into(), HostTensor::float(bt, curvature)),
        (
            "reward".into(),
            HostTensor::float(vec![rows], reward.clone()),
        ),
        ("correct".into(), HostTensor::float(vec![rows], reward)),
        ("rewards".into(), HostTensor::float(vec![rows, 3], rewards)),
        (
            "advantages_seq".into(),
            HostTensor::float(vec![rows], adv_seq),
        ),
        ("group".into(), HostTensor::int(vec![rows], group)),
    ]
}

/// One row of the demo table.
pub struct DemoRow {
    pub name: String,
    pub loss: Option<f64>,
    /// `None` for a transform (no gradients).
    pub grad_norm: Option<f64>,
    pub metrics: Vec<(String, f64)>,
    pub compile_ms: f64,
    pub run_ms: f64,
}

/// Compiles and runs one entry on `batch`.
pub fn run_entry(
    e: &Entry,
    batch: &[(String, HostTensor)],
    backend: &mut dyn crate::Backend,
) -> Result<DemoRow, Fail> {
    let t0 = Instant::now();
    let mut obj = Objective::compile_source(e.path, e.source)
        .map_err(|err| Fail(format!("{}: {err}", e.path)))?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut tensors: Vec<(String, HostTensor)> = batch.to_vec();
    if e.seq_advantages {
        tensors.retain(|(n, _)| n != "advantages");
        for (n, _) in tensors.iter_mut() {
            if n == "advantages_seq" {
                *n = "advantages".into();
            }
        }
    }
    obj.fit_channels(&tensors)
        .map_err(|err| Fail(format!("{}: {err}", e.path)))?;
    let t1 = Instant::now();
    let bound = obj
        .bind(&tensors)
        .map_err(|err| Fail(format!("{}: {err}", e.path)))?;
    let res = obj
        .evaluate(backend, &bound)
        .map_err(|err| Fail(format!("{}: {err}", e.path)))?;
    let run_ms = t1.elapsed().as_secs_f64() * 1e3;
    let grad_norm = (!res.eval.grads.is_empty()).then(|| {
        res.eval
            .grads
            .iter()
            .flat_map(|(_, g)| g.iter())
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt()
    });
    Ok(DemoRow {
        name: obj.name().to_string(),
        loss: res.eval.loss,
        grad_norm,
        metrics: res.eval.metrics.clone(),
        compile_ms,
        run_ms,
    })
}

pub fn demo(backend_name: &str, rows: usize, width: usize, io: &mut Io) -> Result<(), Fail> {
    if rows == 0 || width == 0 {
        return Err(Fail("demo: --rows and --width must be at least 1".into()));
    }
    let mut backend = crate::backends::backend_by_name(backend_name)?;
    let batch = synthetic_batch(rows, width);
    let _ = writeln!(
        io.out,
        "rlobj demo: {} objectives on a synthetic batch of {rows} rows × {width} tokens (ragged, groups of 4, NaN in padding), backend `{backend_name}`\n",
        CATALOG.len()
    );
    let _ = writeln!(
        io.out,
        "{:<30} {:>14} {:>12} {:>9} {:>8}  metrics",
        "objective", "loss", "|grad|", "compile", "run"
    );
    let _ = writeln!(io.out, "{}", "-".repeat(100));
    let mut failed = 0;
    for e in CATALOG {
        match run_entry(e, &batch, backend.as_mut()) {
            Ok(row) => {
                let label = e
                    .path
                    .trim_start_matches("objectives/")
                    .trim_end_matches(".obj");
                let loss = row
                    .loss
                    .map(|l| format!("{l:.6e}"))
                    .unwrap_or_else(|| "(transform)".into());
                let metrics: Vec<String> = row
                    .metrics
                    .iter()
                    .take(3)
                    .map(|(n, v)| format!("{n}={v:.4}"))
                    .collect();
                let _ = writeln!(
                    io.out,
                    "{:<30} {:>14} {:>12} {:>7.1}ms {:>6.2}ms  {}",
                    if label.ends_with(&row.name) {
                        label.to_string()
                    } else {
                        format!("{label} ({})", row.name)
                    },
                    loss,
                    row.grad_norm
                        .map(|g| format!("{g:.4e}"))
                        .unwrap_or_else(|| "—".into()),
                    row.compile_ms,
                    row.run_ms,
                    metrics.join(" ")
                );
            }
            Err(Fail(m)) => {
                failed += 1;
                let first = m
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim();
                let _ = writeln!(
                    io.out,
                    "{:<30} error: {first}",
                    e.path.trim_start_matches("objectives/")
                );
                let _ = writeln!(io.err, "{m}");
            }
        }
    }
    if failed > 0 {
        return Err(Fail(format!(
            "demo: {failed} of {} objectives failed",
            CATALOG.len()
        )));
    }
    Ok(())
}
