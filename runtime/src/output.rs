//! Shaping results for people and programs: the `--json` object, the `--out` safetensors
//! file and the human table of `rlobj run`.
//!
//! Values come back from backends in their own index space; here they are put back into
//! the padded batch shape: `tok` (and token segments) → `[B][T]` with 0 at padding, `seq`
//! (and row groups) → `[B]`, `batch` → a number.

use crate::api::Results;
use crate::RunError;
use rlobj_ir::{InputKind, Layout, Program, SpaceId, SpaceKind};
use std::fmt::Write as _;

/// A value in the padded batch shape.
#[derive(Clone, Debug, PartialEq)]
pub enum Shaped {
    Scalar(f64),
    Rows(Vec<f64>),
    Tokens(Vec<Vec<f64>>),
}

impl Shaped {
    /// The safetensors shape (`[]`, `[B]`, `[B, T]`).
    pub fn shape(&self, width: usize) -> Vec<usize> {
        match self {
            Shaped::Scalar(_) => vec![],
            Shaped::Rows(r) => vec![r.len()],
            Shaped::Tokens(t) => vec![t.len(), width],
        }
    }

    /// Row-major elements.
    pub fn flat(&self) -> Vec<f64> {
        match self {
            Shaped::Scalar(x) => vec![*x],
            Shaped::Rows(r) => r.clone(),
            Shaped::Tokens(t) => t.iter().flatten().copied().collect(),
        }
    }
}

/// Puts `values` (one per element of `space`) into the padded batch shape.
pub fn shape(
    prog: &Program,
    layout: &Layout,
    space: SpaceId,
    values: &[f64],
) -> Result<Shaped, RunError> {
    let kind = prog.spaces.get(space.index()).map(|s| &s.kind);
    let name = prog
        .spaces
        .get(space.index())
        .map(|s| s.name.as_str())
        .unwrap_or("?");
    if values.len() != layout.size(space) {
        return Err(RunError(format!(
            "internal: {} values for space `{name}` of {} elements",
            values.len(),
            layout.size(space)
        )));
    }
    let tokens = |per_tok: &dyn Fn(usize) -> f64| {
        let mut out = vec![vec![0.0; layout.width]; layout.rows];
        for (r, row) in out.iter_mut().enumerate() {
            for k in layout.row_start[r]..layout.row_start[r + 1] {
                row[layout.tok_pos[k] as usize] = per_tok(k);
            }
        }
        Shaped::Tokens(out)
    };
    let unmapped = || RunError(format!("internal: space `{name}` has no row map"));
    Ok(match kind {
        Some(SpaceKind::Batch) => Shaped::Scalar(values.first().copied().unwrap_or(0.0)),
        Some(SpaceKind::Seq) => Shaped::Rows(values.to_vec()),
        Some(SpaceKind::Tok) => tokens(&|k| values[k]),
        Some(SpaceKind::RowGroups { .. }) => {
            let map = layout.map(prog, SpaceId::SEQ, space).ok_or_else(unmapped)?;
            Shaped::Rows(map.iter().map(|&g| values[g as usize]).collect())
        }
        Some(SpaceKind::RowSegments { .. }) => {
            let map = layout.map(prog, SpaceId::TOK, space).ok_or_else(unmapped)?;
            tokens(&|k| values[map[k] as usize])
        }
        None => return Err(RunError(format!("internal: unknown space {}", space.0))),
    })
}

/// Results shaped and named, in the order they are printed.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub loss: Option<f64>,
    pub metrics: Vec<(String, f64)>,
    pub grads: Vec<(String, Shaped)>,
    pub outputs: Vec<(String, Shaped)>,
    pub state: Vec<(String, f64)>,
    /// `T`, for safetensors shapes.
    pub width: usize,
}

/// Shapes every part of `res`.
pub fn report(res: &Results) -> Result<Report, RunError> {
    let prog = &res.program;
    let mut grads = Vec::new();
    for (input, vals) in &res.eval.grads {
        let inp = prog
            .inputs
            .get(input.index())
            .ok_or_else(|| RunError(format!("internal: gradient for unknown input {}", input.0)))?;
        let space = match &inp.kind {
            InputKind::Value { space, .. } | InputKind::Ids { space } => *space,
        };
        grads.push((inp.name.clone(), shape(prog, &res.layout, space, vals)?));
    }
    let mut outputs = Vec::new();
    for (name, space, vals) in &res.eval.outputs {
        outputs.push((name.clone(), shape(prog, &res.layout, *space, vals)?));
    }
    Ok(Report {
        loss: res.eval.loss,
        metrics: res.eval.metrics.clone(),
        grads,
        outputs,
        state: res.eval.states.clone(),
        width: res.layout.width,
    })
}

/// A JSON number with the shortest text that round-trips; `null` when not finite (JSON has
/// no NaN).
pub fn num(x: f64) -> String {
    serde_json::Value::from(x).to_string()
}

fn string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn shaped_json(s: &Shaped, out: &mut String) {
    let row = |r: &[f64], out: &mut String| {
        out.push('[');
        for (i, x) in r.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&num(*x));
        }
        out.push(']');
    };
    match s {
        Shaped::Scalar(x) => out.push_str(&num(*x)),
        Shaped::Rows(r) => row(r, out),
        Shaped::Tokens(t) => {
            out.push('[');
            for (i, r) in t.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                row(r, out);
            }
            out.push(']');
        }
    }
}

/// `{"loss": f, "metrics": {…}, "grads": {…}, "outputs": {…}, "state": {…}}` in exactly
/// that key order; `loss` is `null` for a transform.
pub fn to_json(rep: &Report) -> String {
    fn obj<T>(s: &mut String, key: &str, items: &[(String, T)], val: impl Fn(&T, &mut String)) {
        let _ = write!(s, ", {}: {{", string(key));
        for (i, (name, v)) in items.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            s.push_str(&string(name));
            s.push_str(": ");
            val(v, s);
        }
        s.push('}');
    }
    let mut s = String::from("{\"loss\": ");
    s.push_str(&rep.loss.map(num).unwrap_or_else(|| "null".into()));
    obj(&mut s, "metrics", &rep.metrics, |v, s| s.push_str(&num(*v)));
    obj(&mut s, "grads", &rep.grads, shaped_json);
    obj(&mut s, "outputs", &rep.outputs, shaped_json);
    obj(&mut s, "state", &rep.state, |v, s| s.push_str(&num(*v)));
    s.push('}');
    s
}

/// Writes `loss`, `grad.<input>`, `metric.<name>`, `output.<name>` and `state.<name>` as f32
/// tensors with the JSON shapes.
pub fn write_safetensors(rep: &Report, path: &std::path::Path) -> Result<(), RunError> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |name: String, s: &Shaped| {
        let bytes: Vec<u8> = s
            .flat()
            .iter()
            .flat_map(|&x| (x as f32).to_le_bytes())
            .collect();
        tensors.push((name, s.shape(rep.width), bytes));
    };
    if let Some(l) = rep.loss {
        add("loss".into(), &Shaped::Scalar(l));
    }
    for (n, v) in &rep.metrics {
        add(format!("metric.{n}"), &Shaped::Scalar(*v));
    }
    for (n, g) in &rep.grads {
        add(format!("grad.{n}"), g);
    }
    for (n, o) in &rep.outputs {
        add(format!("output.{n}"), o);
    }
    for (n, v) in &rep.state {
        add(format!("state.{n}"), &Shaped::Scalar(*v));
    }
    let mut views = Vec::with_capacity(tensors.len());
    for (name, shape, bytes) in &tensors {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map_err(|e| RunError(format!("--out: tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| RunError(format!("--out `{}`: cannot serialise: {e}", path.display())))?;
    std::fs::write(path, bytes)
        .map_err(|e| RunError(format!("--out `{}`: cannot write: {e}", path.display())))
}

/// Euclidean norm over all elements.
pub fn norm(s: &Shaped) -> f64 {
    s.flat().iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn dims(s: &Shaped, width: usize) -> String {
    let d: Vec<String> = s.shape(width).iter().map(|x| x.to_string()).collect();
    format!("[{}]", d.join(", "))
}

/// The human-readable table of `rlobj run`.
pub fn table(name: &str, rep: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "objective {name}");
    match rep.loss {
        Some(l) => {
            let _ = writeln!(s, "  loss                 {l:.9e}");
        }
        None => {
            let _ = writeln!(s, "  loss                 (none: a transform)");
        }
    }
    let label = |s: &mut String, head: &str, empty: bool| {
        if !empty {
            let _ = writeln!(s, "{head}");
        }
    };
    label(&mut s, "metrics", rep.metrics.is_empty());
    for (n, v) in &rep.metrics {
        let _ = writeln!(s, "  {n:<20} {v:.9e}");
    }
    label(
        &mut s,
        "gradients                 shape        norm          min           max",
        rep.grads.is_empty(),
    );
    for (n, g) in &rep.grads {
        let f = g.flat();
        let (lo, hi) = f
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let _ = writeln!(
            s,
            "  d loss/d {n:<15} {:<12} {:<13.6e} {lo:<13.6e} {hi:.6e}",
            dims(g, rep.width),
            norm(g)
        );
    }
    label(
        &mut s,
        "outputs                   shape        norm          first values",
        rep.outputs.is_empty(),
    );
    for (n, o) in &rep.outputs {
        let first: Vec<String> = match o {
            Shaped::Tokens(t) => t
                .first()
                .map(|r| r.iter().take(4).map(|x| format!("{x:.4}")).collect())
                .unwrap_or_default(),
            other => other
                .flat()
                .iter()
                .take(4)
                .map(|x| format!("{x:.4}"))
                .collect(),
        };
        let _ = writeln!(
            s,
            "  {n:<23} {:<12} {:<13.6e} {}",
            dims(o, rep.width),
            norm(o),
            first.join(" ")
        );
    }
    label(&mut s, "state", rep.state.is_empty());
    for (n, v) in &rep.state {
        let _ = writeln!(s, "  {n:<20} {v:.9e}");
    }
    s
}
