//! Golden snapshots of objectives: the loss, metrics, states and summaries of every gradient
//! and output of an objective on one fixed, deterministic batch, written as an
//! [insta](https://insta.rs)-compatible snapshot (`tests/snapshots/golden__<name>.snap`).
//!
//! A change to an objective, the stdlib or the compiler that moves any of these numbers shows
//! up as a reviewable text diff: `cargo test -p rlobj-tests --test e2e` fails with insta's
//! diff, `rlobj golden` prints the same diff and leaves a `.snap.new` beside the snapshot
//! (`cargo insta review` or `rlobj golden --accept` takes it).
//!
//! Numbers are printed with 6 significant digits and magnitudes below `1e-12` print as 0, so
//! snapshots are stable across summation orders but catch any real change.

use crate::api::Objective;
use crate::batch::HostTensor;
use crate::{Backend, RunError};
use std::path::{Path, PathBuf};

/// The objectives `rlobj golden` snapshots when given no files (paths relative to the
/// repository root).
pub const DEFAULT_SET: &[&str] = &[
    "objectives/grpo.obj",
    "objectives/dapo.obj",
    "objectives/dr_grpo.obj",
    "objectives/gspo.obj",
    "objectives/gppo.obj",
    "objectives/cispo.obj",
    "objectives/sapo.obj",
    "objectives/ppo.obj",
];

/// The `source:` line insta writes for snapshots asserted in `tests/tests/e2e.rs`; the CLI
/// writes the same header so either can create or update a snapshot.
pub const SNAPSHOT_SOURCE: &str = "tests/tests/e2e.rs";

/// An error while recording or checking a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct GoldenError(pub String);

impl std::fmt::Display for GoldenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for GoldenError {}

/// Deterministic values for the batch, independent of everything else.
struct Gen(crate::rng::Rng);
impl Gen {
    /// Rounded to 1/1024 so the batch is exact in f32 and f64 alike.
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        ((lo + (hi - lo) * self.0.unit()) * 1024.0).round() / 1024.0
    }
}

/// Rows and padded width of the golden batch.
pub const ROWS: usize = 8;
pub const WIDTH: usize = 6;

/// The golden batch (version 1): 8 rows of width 6 in two groups of four, row lengths
/// `6 1 4 3 5 2 6 4` (a full row, a one-token row), ratios spread over `[0.6, 1.5]` so every
/// clip region is hit, rewards `{0, 0.5, 1}`, and every conventional tensor name
/// (`logp old_logp ref_logp mask advantages token_rewards reward group entropy values vpreds
/// returns rollout_is_weights turn correct`).
pub fn batch() -> Vec<(String, HostTensor)> {
    let (b, t) = (ROWS, WIDTH);
    let lens = [6usize, 1, 4, 3, 5, 2, 6, 4];
    let mut g = Gen(crate::rng::Rng::from_state(20_240_601));
    let mask: Vec<f64> = (0..b * t)
        .map(|i| f64::from(u8::from(i % t < lens[i / t])))
        .collect();
    let old: Vec<f64> = (0..b * t).map(|_| g.uniform(-3.0, -0.05)).collect();
    let logp: Vec<f64> = old
        .iter()
        .map(|&o| (o + g.uniform(-0.5, 0.4)).min(-0.01))
        .collect();
    let refp: Vec<f64> = old
        .iter()
        .map(|&o| (o + g.uniform(-0.3, 0.3)).min(-0.01))
        .collect();
    let reward: Vec<f64> = (0..b).map(|_| (g.0.unit() * 3.0).floor() / 2.0).collect();
    let group: Vec<i64> = (0..b).map(|r| (r / 4) as i64).collect();
    let adv: Vec<f64> = (0..b * t)
        .map(|i| reward[i / t] - 0.5 + g.uniform(-0.1, 0.1))
        .collect();
    let mut token_rewards = vec![0.0; b * t];
    for r in 0..b {
        token_rewards[r * t + lens[r] - 1] = reward[r];
    }
    let entropy: Vec<f64> = (0..b * t).map(|_| g.uniform(0.05, 2.0)).collect();
    let values: Vec<f64> = (0..b * t).map(|_| g.uniform(-0.5, 1.0)).collect();
    let vpreds: Vec<f64> = values.iter().map(|&v| v + g.uniform(-0.3, 0.3)).collect();
    let returns: Vec<f64> = (0..b * t).map(|_| g.uniform(-0.5, 1.0)).collect();
    let is_w: Vec<f64> = (0..b * t).map(|_| g.uniform(0.5, 1.5)).collect();
    let turn: Vec<i64> = (0..b * t).map(|i| ((i % t) / 2) as i64).collect();
    let correct: Vec<f64> = reward
        .iter()
        .map(|&r| f64::from(u8::from(r >= 1.0)))
        .collect();
    let f2 = |v: Vec<f64>| HostTensor::float(vec![b, t], v);
    vec![
        ("logp".into(), f2(logp)),
        ("old_logp".into(), f2(old)),
        ("ref_logp".into(), f2(refp)),
        ("mask".into(), f2(mask)),
        ("advantages".into(), f2(adv)),
        ("token_rewards".into(), f2(token_rewards)),
        ("entropy".into(), f2(entropy)),
        ("values".into(), f2(values)),
        ("vpreds".into(), f2(vpreds)),
        ("returns".into(), f2(returns)),
        ("rollout_is_weights".into(), f2(is_w)),
        ("turn".into(), HostTensor::int(vec![b, t], turn)),
        ("reward".into(), HostTensor::float(vec![b], reward)),
        ("correct".into(), HostTensor::float(vec![b], correct)),
        ("group".into(), HostTensor::int(vec![b], group)),
    ]
}

/// A number with 6 significant digits; tiny magnitudes and `-0` print as `0`.
pub fn num(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else if x.abs() < 1e-12 {
        "0".into()
    } else {
        format!("{x:.5e}")
    }
}

/// `q`-quantile with linear interpolation of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// `n sum l2 min q25 median q75 max` of a vector.
pub fn summary(v: &[f64]) -> String {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let sum: f64 = v.iter().sum();
    let l2 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    format!(
        "n={} sum={} l2={} min={} q25={} median={} q75={} max={}",
        v.len(),
        num(sum),
        num(l2),
        num(quantile(&s, 0.0)),
        num(quantile(&s, 0.25)),
        num(quantile(&s, 0.5)),
        num(quantile(&s, 0.75)),
        num(quantile(&s, 1.0))
    )
}

/// The snapshot text of `obj` on the golden batch (evaluated by `backend`).
pub fn render(
    obj: &mut Objective,
    backend: &mut dyn Backend,
    label: &str,
) -> Result<String, RunError> {
    let bound = obj.bind(&batch()).map_err(|e| RunError(e.to_string()))?;
    let res = obj
        .evaluate(backend, &bound)
        .map_err(|e| RunError(e.to_string()))?;
    let prog = &res.program;
    let mut s = format!(
        "objective: {}\nfile: {label}\nbatch: golden v1 ({ROWS} rows x {WIDTH}, {} valid tokens)\nbackend: {}\n",
        prog.name,
        res.layout.tok_pos.len(),
        backend.name()
    );
    s.push_str(&format!(
        "loss: {}\n",
        res.eval.loss.map(num).unwrap_or_else(|| "none".into())
    ));
    let section = |s: &mut String, title: &str, empty: bool| {
        s.push_str(title);
        s.push_str(if empty { ": none\n" } else { ":\n" });
    };
    section(&mut s, "metrics", res.eval.metrics.is_empty());
    for (n, v) in &res.eval.metrics {
        s.push_str(&format!("  {n}: {}\n", num(*v)));
    }
    section(&mut s, "grads", res.eval.grads.is_empty());
    for (i, g) in &res.eval.grads {
        s.push_str(&format!(
            "  {}: {}\n",
            prog.inputs[i.index()].name,
            summary(g)
        ));
    }
    section(&mut s, "outputs", res.eval.outputs.is_empty());
    for (n, space, v) in &res.eval.outputs {
        s.push_str(&format!(
            "  {n} [{}]: {}\n",
            prog.spaces[space.index()].name,
            summary(v)
        ));
    }
    section(&mut s, "states", res.eval.states.is_empty());
    for (n, v) in &res.eval.states {
        s.push_str(&format!("  {n}: {}\n", num(*v)));
    }
    Ok(s)
}

/// Snapshot name of an objective file: `golden__<stem>`, with the parent folder for files
/// under `objectives/<sub>/` (`golden__trl_grpo`).
pub fn snapshot_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().into_owned());
    match parent {
        Some(p) if p != "objectives" && !p.is_empty() && p != "." => format!("golden__{p}_{stem}"),
        _ => format!("golden__{stem}"),
    }
}

/// The snapshot text of the objective in `path` (a path relative to the working directory;
/// `label` is what the snapshot records as its file).
pub fn render_file(path: &Path, label: &str) -> Result<String, GoldenError> {
    let mut obj =
        Objective::compile(path).map_err(|e| GoldenError(format!("{}: {e}", path.display())))?;
    let mut backend = crate::backends::backend_by_name("interp").map_err(|e| GoldenError(e.0))?;
    render(&mut obj, backend.as_mut(), label)
        .map_err(|e| GoldenError(format!("{}: {e}", path.display())))
}

/// A whole `.snap` file in insta's format (metadata header, then the content).
pub fn snap_file(content: &str) -> String {
    format!(
        "---\nsource: {SNAPSHOT_SOURCE}\n---\n{}\n",
        content.trim_end()
    )
}

/// The content of an existing `.snap` file (what follows the metadata header).
pub fn snap_content(file: &str) -> &str {
    let body = file
        .strip_prefix("---\n")
        .and_then(|rest| rest.find("\n---\n").map(|i| &rest[i + 5..]));
    body.unwrap_or(file).trim_end()
}

/// What [`check`] found for one objective.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The snapshot matches.
    Unchanged,
    /// No snapshot existed; it was written.
    Created,
    /// The snapshot differed and `accept` was set: it was overwritten.
    Updated,
    /// The snapshot differs: the new text is in the `.snap.new` beside it; `diff` is a
    /// line diff (`-` old, `+` new).
    Changed { diff: String },
}

/// The result for one file.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub file: PathBuf,
    pub snapshot: PathBuf,
    pub outcome: Outcome,
}

/// A minimal line diff of two texts (lines only in `old` as `-`, only in `new` as `+`,
/// common lines as ` `), good enough for snapshots of a few dozen lines.
pub fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // LCS table.
    let mut l = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            l[i][j] = if a[i] == b[j] {
                l[i + 1][j + 1] + 1
            } else {
                l[i + 1][j].max(l[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || l[i + 1][j] >= l[i][j + 1]) {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        }
    }
    out
}

/// `rlobj golden`: renders every file, compares with `dir/golden__<name>.snap`, and writes
/// new snapshots (missing ones always; changed ones only with `accept`, else a `.snap.new`).
/// File labels in snapshots are the paths as given.
pub fn check(files: &[PathBuf], dir: &Path, accept: bool) -> Result<Vec<Checked>, GoldenError> {
    let io = |p: &Path, e: std::io::Error| GoldenError(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut out = Vec::new();
    for file in files {
        let label = file.to_string_lossy().replace('\\', "/");
        let content = render_file(file, &label)?;
        let snapshot = dir.join(format!("{}.snap", snapshot_name(file)));
        let pending = dir.join(format!("{}.snap.new", snapshot_name(file)));
        let outcome = match std::fs::read_to_string(&snapshot) {
            Err(_) => {
                std::fs::write(&snapshot, snap_file(&content)).map_err(|e| io(&snapshot, e))?;
                Outcome::Created
            }
            Ok(old) if snap_content(&old) == content.trim_end() => {
                if pending.exists() {
                    std::fs::remove_file(&pending).map_err(|e| io(&pending, e))?;
                }
                Outcome::Unchanged
            }
            Ok(old) => {
                let diff = line_diff(snap_content(&old), content.trim_end());
                if accept {
                    std::fs::write(&snapshot, snap_file(&content)).map_err(|e| io(&snapshot, e))?;
                    if pending.exists() {
                        std::fs::remove_file(&pending).map_err(|e| io(&pending, e))?;
                    }
                    Outcome::Updated
                } else {
                    std::fs::write(&pending, snap_file(&content)).map_err(|e| io(&pending, e))?;
                    Outcome::Changed { diff }
                }
            }
        };
        out.push(Checked {
            file: file.clone(),
            snapshot,
            outcome,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_diff() {
        assert_eq!(num(-0.0), "0");
        assert_eq!(num(1e-15), "0");
        assert_eq!(num(0.123456789), "1.23457e-1");
        assert_eq!(line_diff("a\nb\nc", "a\nx\nc"), "  a\n- b\n+ x\n  c\n");
        assert_eq!(snap_content(&snap_file("x: 1\ny: 2\n")), "x: 1\ny: 2");
        assert_eq!(
            snapshot_name(Path::new("objectives/trl/grpo.obj")),
            "golden__trl_grpo"
        );
        assert_eq!(
            snapshot_name(Path::new("objectives/grpo.obj")),
            "golden__grpo"
        );
    }

    #[test]
    fn batch_is_deterministic_and_shaped() {
        let a = batch();
        assert_eq!(a, batch());
        let mask = a
            .iter()
            .find(|(n, _)| n == "mask")
            .map(|(_, t)| t.shape.clone());
        assert_eq!(mask, Some(vec![ROWS, WIDTH]));
    }
}
