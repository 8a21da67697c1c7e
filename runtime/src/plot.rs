//! Plots as SVG (plotters' SVG backend): line-chart panels, and `rlobj plot` — the surrogate
//! of an objective and its gradient as functions of the ratio `r = exp(logp - old_logp)`.
//!
//! The surrogate picture is computed by evaluating the objective itself (through the library
//! API, on the interpreter) on synthetic one-token batches that sweep `r`, once with a positive
//! and once with a negative advantage, so it works for any objective and shows exactly what
//! the compiler computes: PPO-clip's flat regions, GPPO's gradient that survives outside the
//! band, CISPO's clipped-but-never-zero weight, SAPO's smooth gate.

use crate::api::Objective;
use crate::batch::HostTensor;
use crate::Backend;
use plotters::prelude::*;
use std::path::PathBuf;

/// An error while plotting (or evaluating the objective for a plot).
#[derive(Clone, Debug, PartialEq)]
pub struct PlotError(pub String);

impl std::fmt::Display for PlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for PlotError {}

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError(format!("drawing failed: {e:?}"))
}

/// One named curve.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart: a title, axis labels, curves and optional vertical markers (e.g. `r = 1 ± ε`).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub markers: Vec<f64>,
}

/// Line colours, in series order (colour-blind friendly, Okabe–Ito).
const COLORS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

fn bounds(panel: &Panel) -> ((f64, f64), (f64, f64)) {
    let pts = || {
        panel
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite())
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if y0 > y1 {
        (y0, y1) = (0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    let pad = ((y1 - y0) * 0.08).max(1e-6);
    ((x0, x1), (y0 - pad, y1 + pad))
}

/// Renders panels on a grid with `cols` columns (each `size` pixels) into an SVG document.
pub fn render_panels(panels: &[Panel], cols: usize, size: (u32, u32)) -> Result<String, PlotError> {
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (size.0 * cols as u32, size.1 * rows as u32))
            .into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let areas = root.split_evenly((rows, cols));
        for (panel, area) in panels.iter().zip(areas.iter()) {
            draw_panel(panel, area)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

fn draw_panel(
    panel: &Panel,
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
) -> Result<(), PlotError> {
    let ((x0, x1), (y0, y1)) = bounds(panel);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(draw_err)?;
    for &m in &panel.markers {
        if m >= x0 && m <= x1 {
            chart
                .draw_series(LineSeries::new(
                    vec![(m, y0), (m, y1)],
                    RGBColor(170, 170, 170),
                ))
                .map_err(draw_err)?;
        }
    }
    for (i, s) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(draw_err)?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    if panel.series.iter().any(|s| !s.name.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_two_panels() {
        let p = Panel {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: "a".into(),
                points: vec![(0.0, 1.0), (1.0, 2.0)],
            }],
            markers: vec![0.5],
        };
        let svg = render_panels(&[p.clone(), p], 2, (300, 200)).expect("svg");
        assert!(svg.starts_with("<svg"));
        assert!(svg.matches("<polyline").count() >= 2, "{svg}");
    }
}

/// The surrogate of one objective on a sweep of the ratio, for one advantage sign.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepCurve {
    /// `+1` or `-1`.
    pub sign: f64,
    /// `(r, loss)`.
    pub loss: Vec<(f64, f64)>,
    /// `(r, d loss / d logp)` at the swept token.
    pub grad: Vec<(f64, f64)>,
}

/// The sweep of one objective: both advantage signs, plus how the batch was built.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    pub objective: String,
    pub curves: Vec<SweepCurve>,
    /// Vertical markers: `r = 1` and the clip bounds found among the params.
    pub markers: Vec<f64>,
    /// How the advantage was set (`advantages = ±1`, or from a two-row reward group).
    pub how: String,
}

/// The ratios swept: `0.05 … 2.5`.
pub fn ratio_grid(points: usize) -> Vec<f64> {
    let n = points.max(2);
    (0..n)
        .map(|i| 0.05 + (2.5 - 0.05) * i as f64 / (n - 1) as f64)
        .collect()
}

fn sweep_batch(prog: &rlobj_ir::Program, r: f64, sign: f64) -> (Vec<(String, HostTensor)>, bool) {
    let reads = |n: &str| prog.inputs.iter().any(|i| i.name == n);
    // One row, one token (the loss is then the per-token surrogate for every aggregation),
    // unless the advantage is computed from rewards within a group: then the swept row gets
    // a companion row at r = 1 with the opposite reward, so its advantage has the wanted sign.
    let two =
        !reads("advantages") && (reads("reward") || reads("token_rewards") || reads("correct"));
    let (hi, lo) = if sign > 0.0 { (1.0, 0.0) } else { (0.0, 1.0) };
    let rows = if two { 2 } else { 1 };
    let tok =
        |a: f64, b: f64| HostTensor::float(vec![rows, 1], if two { vec![a, b] } else { vec![a] });
    let seq =
        |a: f64, b: f64| HostTensor::float(vec![rows], if two { vec![a, b] } else { vec![a] });
    let batch = vec![
        ("logp".into(), tok(r.ln(), 0.0)),
        ("old_logp".into(), tok(0.0, 0.0)),
        ("ref_logp".into(), tok(0.0, 0.0)),
        ("mask".into(), tok(1.0, 1.0)),
        ("advantages".into(), tok(sign, -sign)),
        ("token_rewards".into(), tok(hi, lo)),
        ("values".into(), tok(0.0, 0.0)),
        ("vpreds".into(), tok(0.0, 0.0)),
        ("returns".into(), tok(0.0, 0.0)),
        ("entropy".into(), tok(0.0, 0.0)),
        ("reward".into(), seq(hi, lo)),
        ("correct".into(), seq(hi, lo)),
        ("group".into(), HostTensor::int(vec![rows], vec![0; rows])),
    ];
    (batch, two)
}

/// Evaluates `obj` on synthetic batches sweeping `r = exp(logp - old_logp)` (with
/// `old_logp = ref_logp = 0`) for a positive and a negative advantage.
pub fn sweep(
    obj: &mut Objective,
    backend: &mut dyn Backend,
    points: usize,
) -> Result<Sweep, PlotError> {
    let name = obj.name().to_string();
    let err = |e: crate::api::Error| PlotError(format!("objective `{name}`: {e}"));
    let logp_input = obj
        .program()
        .grads
        .iter()
        .map(|(i, _)| *i)
        .find(|i| obj.program().inputs[i.index()].name == "logp")
        .ok_or_else(|| {
            PlotError(format!(
                "objective `{name}` has no `logp` @grad input to sweep"
            ))
        })?;
    if obj.program().loss.is_none() {
        return Err(PlotError(format!(
            "objective `{name}` has no loss (it is a transform)"
        )));
    }
    let mut curves = Vec::new();
    let mut two_rows = false;
    for sign in [1.0, -1.0] {
        let mut c = SweepCurve {
            sign,
            loss: Vec::new(),
            grad: Vec::new(),
        };
        for r in ratio_grid(points) {
            let (batch, two) = sweep_batch(obj.program(), r, sign);
            two_rows = two;
            let bound = obj.bind(&batch).map_err(err)?;
            let res = obj.evaluate(backend, &bound).map_err(err)?;
            let loss = res.eval.loss.unwrap_or(f64::NAN);
            let g = res
                .eval
                .grads
                .iter()
                .find(|(i, _)| *i == logp_input)
                .and_then(|(_, g)| g.first().copied());
            c.loss.push((r, loss));
            c.grad.push((r, g.unwrap_or(f64::NAN)));
        }
        curves.push(c);
    }
    let mut markers = vec![1.0];
    let pv = |n: &str| {
        obj.program()
            .params
            .iter()
            .position(|p| p.name == n)
            .map(|i| obj.params()[i])
    };
    if let Some(lo) = pv("clip_ratio_low").or_else(|| pv("epsilon")) {
        markers.push(1.0 - lo);
    }
    if let Some(hi) = pv("clip_ratio_high")
        .or_else(|| pv("epsilon_high"))
        .or_else(|| pv("epsilon"))
    {
        markers.push(1.0 + hi);
    }
    let how = if two_rows {
        "advantage from a two-row reward group (rewards 1/0; the companion row at r = 1 adds a constant)"
    } else {
        "one token with advantages = ±1"
    };
    Ok(Sweep {
        objective: name,
        curves,
        markers,
        how: how.into(),
    })
}

/// The two panels (surrogate, gradient) of a sweep.
pub fn sweep_panels(s: &Sweep) -> [Panel; 2] {
    let label = |sign: f64| if sign > 0.0 { "A > 0" } else { "A < 0" };
    let series = |grad: bool| {
        s.curves
            .iter()
            .map(|c| Series {
                name: label(c.sign).into(),
                points: if grad { c.grad.clone() } else { c.loss.clone() },
            })
            .collect()
    };
    [
        Panel {
            title: format!("{}: loss vs r", s.objective),
            x_label: "r = exp(logp - old_logp)".into(),
            y_label: "loss".into(),
            series: series(false),
            markers: s.markers.clone(),
        },
        Panel {
            title: format!("{}: d loss / d logp vs r", s.objective),
            x_label: "r = exp(logp - old_logp)".into(),
            y_label: "d loss / d logp".into(),
            series: series(true),
            markers: s.markers.clone(),
        },
    ]
}

/// `rlobj plot`: the surrogate picture of each objective file (one row of two panels per
/// file), evaluated on the interpreter with `sets` applied to every file.
pub fn plot_files(
    paths: &[PathBuf],
    sets: &[(String, String)],
) -> Result<(String, Vec<Sweep>), PlotError> {
    let mut backend = crate::backends::backend_by_name("interp").map_err(|e| PlotError(e.0))?;
    let mut sweeps = Vec::new();
    for path in paths {
        let perr = |e: crate::api::Error| PlotError(format!("{}: {e}", path.display()));
        let mut obj = Objective::compile(path).map_err(perr)?;
        let applicable: Vec<(String, String)> =
            sets.iter().filter(|(n, _)| obj.knows(n)).cloned().collect();
        obj.set_many(&applicable).map_err(perr)?;
        sweeps.push(sweep(&mut obj, backend.as_mut(), 200)?);
    }
    let panels: Vec<Panel> = sweeps.iter().flat_map(sweep_panels).collect();
    let svg = render_panels(&panels, 2, (520, 340))?;
    Ok((svg, sweeps))
}
