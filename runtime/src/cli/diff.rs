//! `rlobj diff A.obj B.obj --batch B`: two objectives (or one under two settings, when A and
//! B are the same file) side by side on one batch — what changes in the loss, the metrics
//! and, token by token, the gradient.

use super::{load, parse_sets, Fail, Io, RunArgs};
use crate::api::{Objective, Results};
use crate::output::{self, Report, Shaped};
use std::path::Path;

/// One `--set name=value`.
type Setting = (String, String);

/// Splits `--set`s between the two objectives: each goes to every side that declares the
/// name; a name neither declares is an error.
fn split_sets(
    a: &Objective,
    b: &Objective,
    sets: &[Setting],
) -> Result<(Vec<Setting>, Vec<Setting>), Fail> {
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    for (n, v) in sets {
        let (ka, kb) = (a.knows(n), b.knows(n));
        if !ka && !kb {
            // Let the API produce its message listing the valid names of A.
            let mut probe = a.clone();
            return Err(probe
                .set(n, v)
                .err()
                .map(Fail::from)
                .unwrap_or_else(|| Fail(format!("unknown name `{n}`"))));
        }
        if ka {
            sa.push((n.clone(), v.clone()));
        }
        if kb {
            sb.push((n.clone(), v.clone()));
        }
    }
    Ok((sa, sb))
}

fn evaluate(obj: &mut Objective, file: &Path, args: &RunArgs) -> Result<(Results, Report), Fail> {
    let mut backend = crate::backends::backend_by_name(&args.backend)?;
    let bound = obj
        .bind_file(&args.batch)
        .map_err(|e| Fail(format!("{}: {e}", file.display())))?;
    let res = obj
        .evaluate(backend.as_mut(), &bound)
        .map_err(|e| Fail(format!("{}: {e}", file.display())))?;
    let rep = output::report(&res)?;
    Ok((res, rep))
}

fn sign(x: f64) -> i8 {
    if x > 0.0 {
        1
    } else if x < 0.0 {
        -1
    } else {
        0
    }
}

/// Per-element gradient comparison at valid positions: `(row, token, a, b)`.
fn pairs(res: &Results, ga: &Shaped, gb: &Shaped) -> Vec<(usize, Option<usize>, f64, f64)> {
    let l = &res.layout;
    match (ga, gb) {
        (Shaped::Tokens(a), Shaped::Tokens(b)) => {
            let mut v = Vec::new();
            for r in 0..l.rows {
                for k in l.row_start[r]..l.row_start[r + 1] {
                    let t = l.tok_pos[k] as usize;
                    let at = |m: &Vec<Vec<f64>>| m.get(r).and_then(|row| row.get(t)).copied();
                    if let (Some(x), Some(y)) = (at(a), at(b)) {
                        v.push((r, Some(t), x, y));
                    }
                }
            }
            v
        }
        (Shaped::Rows(a), Shaped::Rows(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .map(|(r, (x, y))| (r, None, *x, *y))
            .collect(),
        (Shaped::Scalar(a), Shaped::Scalar(b)) => vec![(0, None, *a, *b)],
        _ => Vec::new(),
    }
}

fn cell(x: Option<f64>) -> String {
    match x {
        Some(v) => format!("{v:.6e}"),
        None => "—".into(),
    }
}

pub fn diff(a: &Path, b: &Path, args: &RunArgs, top: usize, io: &mut Io) -> Result<(), Fail> {
    let sets = parse_sets(&args.sets)?;
    let mut oa = load(a, &[])?;
    let mut ob = load(b, &[])?;
    let (sa, sb) = split_sets(&oa, &ob, &sets)?;
    oa.set_many(&sa)
        .map_err(|e| Fail(format!("{}: {e}", a.display())))?;
    ob.set_many(&sb)
        .map_err(|e| Fail(format!("{}: {e}", b.display())))?;
    let (res_a, ra) = evaluate(&mut oa, a, args)?;
    let (_, rb) = evaluate(&mut ob, b, args)?;

    let mut s = String::new();
    let head_a = format!("A: {}", a.display());
    let head_b = format!("B: {}", b.display());
    s.push_str(&format!(
        "{:<28} {:>16} {:>16} {:>14}\n",
        "", head_a, head_b, "B − A"
    ));
    let line = |s: &mut String, name: &str, x: Option<f64>, y: Option<f64>| {
        let d = match (x, y) {
            (Some(x), Some(y)) => format!("{:+.4e}", y - x),
            _ => String::new(),
        };
        s.push_str(&format!(
            "{name:<28} {:>16} {:>16} {d:>14}\n",
            cell(x),
            cell(y)
        ));
    };
    line(&mut s, "loss", ra.loss, rb.loss);
    let mut names: Vec<&str> = ra.metrics.iter().map(|(n, _)| n.as_str()).collect();
    for (n, _) in &rb.metrics {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let get = |m: &[(String, f64)], n: &str| m.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
    for n in names {
        line(
            &mut s,
            &format!("metric {n}"),
            get(&ra.metrics, n),
            get(&rb.metrics, n),
        );
    }
    let mut grads: Vec<&str> = ra.grads.iter().map(|(n, _)| n.as_str()).collect();
    for (n, _) in &rb.grads {
        if !grads.contains(&n.as_str()) {
            grads.push(n);
        }
    }
    for n in grads {
        let ga = ra.grads.iter().find(|(k, _)| k == n).map(|(_, g)| g);
        let gb = rb.grads.iter().find(|(k, _)| k == n).map(|(_, g)| g);
        line(
            &mut s,
            &format!("|d loss/d {n}|"),
            ga.map(output::norm),
            gb.map(output::norm),
        );
        let (Some(ga), Some(gb)) = (ga, gb) else {
            continue;
        };
        let p = pairs(&res_a, ga, gb);
        if p.is_empty() {
            continue;
        }
        let flips = p.iter().filter(|(_, _, x, y)| sign(*x) != sign(*y)).count();
        s.push_str(&format!(
            "{:<28} {:>16}\n",
            format!("sign changes of d/d {n}"),
            format!(
                "{flips}/{} ({:.1}%)",
                p.len(),
                100.0 * flips as f64 / p.len() as f64
            )
        ));
        let mut by = p.clone();
        by.sort_by(|x, y| (y.3 - y.2).abs().total_cmp(&(x.3 - x.2).abs()));
        let shown: Vec<_> = by
            .into_iter()
            .take(top)
            .filter(|(_, _, x, y)| x != y)
            .collect();
        if !shown.is_empty() {
            s.push_str(&format!("  largest differences of d loss/d {n}:\n"));
            for (r, t, x, y) in shown {
                let at = match t {
                    Some(t) => format!("(row {r}, token {t})"),
                    None => format!("(row {r})"),
                };
                s.push_str(&format!(
                    "  {at:<26} {:>16} {:>16} {:>+14.4e}\n",
                    cell(Some(x)),
                    cell(Some(y)),
                    y - x
                ));
            }
        }
    }
    let _ = write!(io.out, "{s}");
    Ok(())
}
