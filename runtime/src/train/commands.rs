//! The `rlobj train`, `compare`, `plot` and `golden` subcommands as plain functions: the CLI
//! parses arguments and calls these; the docs' tests call them the same way.
//!
//! Each returns `Ok(exit_code)` (0, or 1 when `golden` found changed snapshots) or an error
//! message for the user.

use super::{compare::compare, train_observed, trainer::format_step, Compiled, TrainConfig};
use std::io::Write;
use std::path::{Path, PathBuf};

fn w(e: std::io::Error) -> String {
    format!("writing output: {e}")
}

/// `rlobj train FILE.obj [--steps N] [--seed S] [--set k=v]… [--backend B] [--candle-op]`:
/// prints one line per step and a summary.
pub fn train_command(
    file: &Path,
    steps: usize,
    seed: u64,
    sets: &[(String, String)],
    backend: &str,
    candle_op: bool,
    out: &mut dyn Write,
) -> Result<i32, String> {
    let mut cfg = TrainConfig::new(steps, seed);
    cfg.sets = sets.to_vec();
    cfg.backend = backend.to_string();
    cfg.candle_op = candle_op;
    let mut obj = Compiled::load(file, &cfg.sets, &cfg.backend).map_err(|e| e.0)?;
    let mut io_err = None;
    let report = train_observed(&mut obj, &cfg, &mut |s| {
        if io_err.is_none() {
            io_err = writeln!(out, "{}", format_step(s)).err();
        }
    })
    .map_err(|e| e.0)?;
    if let Some(e) = io_err {
        return Err(w(e));
    }
    writeln!(
        out,
        "{}: reward {:.3} (first 20% of steps) -> {:.3} (last 20%) in {} steps, {:.1} s",
        report.objective,
        report.reward_start(),
        report.reward_end(),
        report.steps.len(),
        report.seconds
    )
    .map_err(w)?;
    Ok(0)
}

/// `rlobj compare A.obj B.obj… [--steps N] [--seed S] [--set k=v]… [--out DIR]`: trains each
/// with the same seed, writes `DIR/compare.svg` and `DIR/compare.md`, prints the table.
pub fn compare_command(
    files: &[PathBuf],
    steps: usize,
    seed: u64,
    sets: &[(String, String)],
    out_dir: &Path,
    out: &mut dyn Write,
) -> Result<i32, String> {
    let mut cfg = TrainConfig::new(steps, seed);
    cfg.sets = sets.to_vec();
    let rep = compare(files, &cfg, out_dir).map_err(|e| e.0)?;
    writeln!(out, "{}", rep.markdown.trim_end()).map_err(w)?;
    writeln!(
        out,
        "\nwrote {} and {}",
        rep.svg.display(),
        rep.markdown_path.display()
    )
    .map_err(w)?;
    Ok(0)
}

/// `rlobj plot FILE.obj… [--set k=v]… [--out FILE.svg]`: the surrogate and its gradient
/// against the ratio for `A > 0` and `A < 0` (default output: `<stem>.surrogate.svg` of the
/// first file, in the current directory).
pub fn plot_command(
    files: &[PathBuf],
    sets: &[(String, String)],
    output: Option<&Path>,
    out: &mut dyn Write,
) -> Result<i32, String> {
    let (svg, sweeps) = crate::plot::plot_files(files, sets).map_err(|e| e.0)?;
    let default = files
        .first()
        .and_then(|f| f.file_stem())
        .map(|s| PathBuf::from(format!("{}.surrogate.svg", s.to_string_lossy())))
        .unwrap_or_else(|| PathBuf::from("surrogate.svg"));
    let path = output.map(Path::to_path_buf).unwrap_or(default);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
    for s in &sweeps {
        writeln!(out, "{}: {}", s.objective, s.how).map_err(w)?;
    }
    writeln!(out, "wrote {}", path.display()).map_err(w)?;
    Ok(0)
}

/// `rlobj golden [FILE.obj…] [--dir tests/snapshots] [--accept]`: checks (or creates, or with
/// `--accept` updates) the snapshots; exit code 1 when any changed without `--accept`.
pub fn golden_command(
    files: &[PathBuf],
    dir: &Path,
    accept: bool,
    out: &mut dyn Write,
) -> Result<i32, String> {
    use crate::golden::{check, Outcome, DEFAULT_SET};
    let files: Vec<PathBuf> = if files.is_empty() {
        DEFAULT_SET.iter().map(PathBuf::from).collect()
    } else {
        files.to_vec()
    };
    let results = check(&files, dir, accept).map_err(|e| e.0)?;
    let mut changed = 0;
    for r in &results {
        let what = match &r.outcome {
            Outcome::Unchanged => "unchanged".to_string(),
            Outcome::Created => "created".to_string(),
            Outcome::Updated => "updated".to_string(),
            Outcome::Changed { diff } => {
                changed += 1;
                format!(
                    "CHANGED (new version in {}.new)\n{diff}",
                    r.snapshot.display()
                )
            }
        };
        writeln!(
            out,
            "{} -> {}: {what}",
            r.file.display(),
            r.snapshot.display()
        )
        .map_err(w)?;
    }
    if changed > 0 {
        writeln!(out, "{changed} snapshot(s) changed: review the diffs, then `rlobj golden --accept` (or `cargo insta review`)").map_err(w)?;
        return Ok(1);
    }
    Ok(0)
}
