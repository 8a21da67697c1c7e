//! Variant comparison: train the same policy (same seed, same rollout generator) with each
//! objective and write the curves as an SVG and the summary as a Markdown table.

use super::trainer::{StepStats, TrainReport};
use super::{train, TrainConfig, TrainError};
use crate::plot::{render_panels, Panel, Series};
use std::path::{Path, PathBuf};

/// The runs of a comparison and the files written.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareReport {
    pub runs: Vec<TrainReport>,
    /// `compare.svg`: reward, clip fraction, KL to the reference, entropy, gradient norm and
    /// loss per step, one curve per objective.
    pub svg: PathBuf,
    /// `compare.md`: the summary table (also in [`CompareReport::markdown`]).
    pub markdown_path: PathBuf,
    pub markdown: String,
}

/// Trains each objective with `cfg` (same seed for all) and writes `compare.svg` and
/// `compare.md` into `out_dir` (created if needed).
pub fn compare(
    objectives: &[PathBuf],
    cfg: &TrainConfig,
    out_dir: &Path,
) -> Result<CompareReport, TrainError> {
    let mut runs = Vec::with_capacity(objectives.len());
    for path in objectives {
        if cfg.verbose {
            println!("== {}", path.display());
        }
        let mut run = train(path, cfg)?;
        // Two files may define objectives of the same name (e.g. a catalog entry and its
        // TRL-parity twin): fall back to the file path to keep curves apart.
        if runs
            .iter()
            .any(|r: &TrainReport| r.objective == run.objective)
        {
            run.objective = path.display().to_string();
        }
        runs.push(run);
    }
    write_report(runs, cfg, out_dir)
}

/// Writes the SVG and Markdown report for finished runs.
pub fn write_report(
    runs: Vec<TrainReport>,
    cfg: &TrainConfig,
    out_dir: &Path,
) -> Result<CompareReport, TrainError> {
    let io = |e: std::io::Error| TrainError(format!("{}: {e}", out_dir.display()));
    std::fs::create_dir_all(out_dir).map_err(io)?;
    let svg_text = render_svg(&runs)?;
    let svg = out_dir.join("compare.svg");
    std::fs::write(&svg, svg_text).map_err(io)?;
    let markdown = render_markdown(&runs, cfg);
    let markdown_path = out_dir.join("compare.md");
    std::fs::write(&markdown_path, &markdown).map_err(io)?;
    Ok(CompareReport {
        runs,
        svg,
        markdown_path,
        markdown,
    })
}

/// Centred moving average over `2k+1` steps (shorter at the ends).
fn smooth(v: &[f64], k: usize) -> Vec<f64> {
    (0..v.len())
        .map(|i| {
            let lo = i.saturating_sub(k);
            let hi = (i + k + 1).min(v.len());
            v[lo..hi].iter().sum::<f64>() / (hi - lo) as f64
        })
        .collect()
}

/// The six panels of a comparison.
pub fn panels(runs: &[TrainReport]) -> Vec<Panel> {
    type Pick = fn(&StepStats) -> Option<f64>;
    let specs: [(&str, &str, Pick); 6] = [
        ("reward (mean of the step's rollouts)", "reward", |s| {
            Some(s.reward)
        }),
        ("clip fraction (objective metric)", "fraction", |s| {
            s.clip_fraction()
        }),
        ("KL(policy ‖ reference) per token", "nats", |s| {
            Some(s.kl_ref)
        }),
        ("entropy per token", "nats", |s| Some(s.entropy)),
        ("gradient norm |d loss / d θ|", "L2 norm", |s| {
            Some(s.grad_norm)
        }),
        ("loss", "loss", |s| Some(s.loss)),
    ];
    let window = runs.iter().map(|r| r.steps.len()).max().unwrap_or(0) / 40;
    specs
        .iter()
        .map(|(title, y, pick)| Panel {
            title: if window > 0 {
                format!("{title}, smoothed ±{window}")
            } else {
                title.to_string()
            },
            x_label: "step".into(),
            y_label: y.to_string(),
            series: runs
                .iter()
                .filter_map(|r| {
                    let vals: Option<Vec<f64>> = r.steps.iter().map(pick).collect();
                    let vals = vals?;
                    let sm = smooth(&vals, window);
                    Some(Series {
                        name: r.objective.clone(),
                        points: r
                            .steps
                            .iter()
                            .zip(sm)
                            .map(|(s, v)| (s.step as f64, v))
                            .collect(),
                    })
                })
                .collect(),
            markers: Vec::new(),
        })
        .collect()
}

/// The comparison plot as an SVG document.
pub fn render_svg(runs: &[TrainReport]) -> Result<String, TrainError> {
    render_panels(&panels(runs), 3, (480, 340)).map_err(|e| TrainError(e.0))
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

fn tail(r: &TrainReport) -> &[StepStats] {
    let k = (r.steps.len() / 5).max(1).min(r.steps.len());
    &r.steps[r.steps.len() - k..]
}

/// The summary table: one row per objective.
pub fn render_markdown(runs: &[TrainReport], cfg: &TrainConfig) -> String {
    let f = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into());
    let mut s = format!(
        "# Variant comparison\n\nTask: single-digit addition (operands < {}), {} steps, seed {}, {} prompts × {} samples per step, {} updates per step, AdamW lr {}, backend `{}`.\n\"first\"/\"last\" are means over the first/last 20% of steps; KL and entropy are per valid token, exact over the vocabulary.\n\n",
        cfg.task.operand_range, cfg.steps, cfg.seed, cfg.prompts_per_step, cfg.group_size, cfg.updates_per_step, cfg.lr, cfg.backend
    );
    s.push_str("| objective | reward first | reward last | solved last | clip frac (mean) | KL to ref (last) | entropy (last) | grad norm (mean) | seconds |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in runs {
        let last = tail(r);
        let clip: Option<Vec<f64>> = r.steps.iter().map(|s| s.clip_fraction()).collect();
        s.push_str(&format!(
            "| {} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {:.1} |\n",
            r.objective,
            r.reward_start(),
            r.reward_end(),
            f(mean(last.iter().map(|s| s.solved))),
            f(clip.and_then(|c| mean(c.into_iter()))),
            f(mean(last.iter().map(|s| s.kl_ref))),
            f(mean(last.iter().map(|s| s.entropy))),
            f(mean(r.steps.iter().map(|s| s.grad_norm))),
            r.seconds
        ));
    }
    s
}
