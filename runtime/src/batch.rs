//! Binding a batch (a safetensors file, in-memory candle tensors, or host arrays) to a
//! program's inputs.
//!
//! Rules (the contract in `docs/` and ARCHITECTURE §3):
//! * `mask` (`[B, T]`, any numeric or bool dtype, nonzero = valid) defines `tok` through
//!   [`Layout::build`]. It is required whenever the program reads anything token-shaped;
//!   otherwise `B` comes from the first row-shaped input.
//! * token inputs are `[B, T]` and gathered at valid tokens; row inputs `[B]` or `[B, 1]`;
//!   batch scalars `[]` or `[1]`; row-group inputs `[B]` and row-segment inputs `[B, T]`
//!   (one value per group/segment: every member must agree).
//! * id inputs must have an integer dtype (`id[seq]`: `[B]`/`[B, 1]`, `id[tok]`: `[B, T]`).
//! * optional inputs take their default when absent; tensors the program does not read are
//!   ignored (one batch file serves every objective).
//! * a channelled input (`f32[seq, chan]`, K IR inputs `rewards[k]`) reads the tensor
//!   `rewards` of shape `[B, K]` (`[B, T, K]` for token inputs) and takes column k; K must
//!   be the count the program was compiled with (see `Objective::fit_channels`). A K = 1
//!   input also accepts `[B]` / `[B, T]`.
//! * NaN/Inf at valid positions is an error; padding is never read.
//! * `B = 0` rows is an error. A batch whose mask marks no valid token evaluates: token
//!   reductions are over nothing (sums and counts 0), so the catalog's objectives give loss 0
//!   and zero gradients, as TRL does (every denominator clamped to ≥ 1), where verl's
//!   token-mean divides 0 by 0. A data-parallel rank whose micro-batch is all padding then
//!   takes a zero step instead of stopping the run or poisoning the weights with NaN. An
//!   objective that divides by an unguarded zero count there gets an error naming the mask
//!   and the NaN result instead ([`check_empty_batch_result`]).
//!
//! Every error names the tensor. Nothing here panics on any file.

use crate::{Bound, RunError};
use rlobj_ir::{ChannelSlot, Elem, Input, InputId, InputKind, Layout, Program, SpaceId, SpaceKind};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Element data of a host tensor, widened to one of three carriers.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    Float(Vec<f64>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
}

/// A dense row-major tensor in host memory, as read from a batch, before binding.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    /// The source dtype, for messages (`F32`, `BF16`, `I64`, …).
    pub dtype: String,
    pub data: HostData,
}

impl HostTensor {
    /// An f32-typed tensor from f64 values (used by the demo batch and tests).
    pub fn float(shape: Vec<usize>, data: Vec<f64>) -> Self {
        HostTensor {
            shape,
            dtype: "F32".into(),
            data: HostData::Float(data),
        }
    }
    /// An i64-typed tensor.
    pub fn int(shape: Vec<usize>, data: Vec<i64>) -> Self {
        HostTensor {
            shape,
            dtype: "I64".into(),
            data: HostData::Int(data),
        }
    }
    fn len(&self) -> usize {
        match &self.data {
            HostData::Float(v) => v.len(),
            HostData::Int(v) => v.len(),
            HostData::Bool(v) => v.len(),
        }
    }
    fn as_f64(&self, i: usize) -> f64 {
        match &self.data {
            HostData::Float(v) => v[i],
            HostData::Int(v) => v[i] as f64,
            HostData::Bool(v) => f64::from(u8::from(v[i])),
        }
    }
}

/// Where tensors come from: a name list (for "the batch has …" messages) and a lookup that
/// decodes one tensor on demand (large batches carry many tensors a program never reads).
pub trait TensorSource {
    fn names(&self) -> Vec<String>;
    fn get(&self, name: &str) -> Result<Option<HostTensor>, RunError>;
}

/// Named host tensors in memory.
impl TensorSource for [(String, HostTensor)] {
    fn names(&self) -> Vec<String> {
        self.iter().map(|(n, _)| n.clone()).collect()
    }
    fn get(&self, name: &str) -> Result<Option<HostTensor>, RunError> {
        Ok(self.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()))
    }
}

impl TensorSource for Vec<(String, HostTensor)> {
    fn names(&self) -> Vec<String> {
        TensorSource::names(self.as_slice())
    }
    fn get(&self, name: &str) -> Result<Option<HostTensor>, RunError> {
        TensorSource::get(self.as_slice(), name)
    }
}

/// A parsed safetensors buffer.
struct StFile<'a> {
    st: SafeTensors<'a>,
    what: String,
}

impl TensorSource for StFile<'_> {
    fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.st.names().into_iter().map(String::from).collect();
        n.sort();
        n
    }
    fn get(&self, name: &str) -> Result<Option<HostTensor>, RunError> {
        match self.st.tensor(name) {
            Ok(view) => decode(name, view.dtype(), view.shape(), view.data()).map(Some),
            Err(safetensors::SafeTensorError::TensorNotFound(_)) => Ok(None),
            Err(e) => Err(RunError(format!("{}: tensor `{name}`: {e}", self.what))),
        }
    }
}

/// Decodes raw little-endian safetensors bytes into a host tensor.
fn decode(name: &str, dtype: Dtype, shape: &[usize], bytes: &[u8]) -> Result<HostTensor, RunError> {
    fn chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        b.chunks_exact(N).map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        })
    }
    let data = match dtype {
        Dtype::BOOL => HostData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        Dtype::U8 => HostData::Int(bytes.iter().map(|&b| i64::from(b)).collect()),
        Dtype::I8 => HostData::Int(bytes.iter().map(|&b| i64::from(b as i8)).collect()),
        Dtype::I16 => HostData::Int(chunks::<2>(bytes).map(|c| i64::from(i16::from_le_bytes(c))).collect()),
        Dtype::U16 => HostData::Int(chunks::<2>(bytes).map(|c| i64::from(u16::from_le_bytes(c))).collect()),
        Dtype::I32 => HostData::Int(chunks::<4>(bytes).map(|c| i64::from(i32::from_le_bytes(c))).collect()),
        Dtype::U32 => HostData::Int(chunks::<4>(bytes).map(|c| i64::from(u32::from_le_bytes(c))).collect()),
        Dtype::I64 => HostData::Int(chunks::<8>(bytes).map(i64::from_le_bytes).collect()),
        Dtype::U64 => {
            let mut v = Vec::with_capacity(bytes.len() / 8);
            for c in chunks::<8>(bytes) {
                let x = u64::from_le_bytes(c);
                v.push(i64::try_from(x).map_err(|_| {
                    RunError(format!("tensor `{name}`: value {x} is out of range (U64 above 2^63 - 1)"))
                })?);
            }
            HostData::Int(v)
        }
        Dtype::F16 => HostData::Float(
            chunks::<2>(bytes).map(|c| half::f16::from_le_bytes(c).to_f64()).collect(),
        ),
        Dtype::BF16 => HostData::Float(
            chunks::<2>(bytes).map(|c| half::bf16::from_le_bytes(c).to_f64()).collect(),
        ),
        Dtype::F32 => HostData::Float(chunks::<4>(bytes).map(|c| f64::from(f32::from_le_bytes(c))).collect()),
        Dtype::F64 => HostData::Float(chunks::<8>(bytes).map(f64::from_le_bytes).collect()),
        other => {
            return Err(RunError(format!(
                "tensor `{name}`: dtype {other:?} is not supported (use bool, an integer type, f16, bf16, f32 or f64)"
            )))
        }
    };
    let t = HostTensor {
        shape: shape.to_vec(),
        dtype: format!("{dtype:?}"),
        data,
    };
    let want: usize = shape.iter().product();
    if t.len() != want {
        return Err(RunError(format!(
            "tensor `{name}`: {} bytes do not hold {want} {dtype:?} elements of shape {shape:?}",
            bytes.len()
        )));
    }
    Ok(t)
}

/// Reads and binds a safetensors batch file.
pub fn bind_file(prog: &Program, path: &Path) -> Result<Bound, RunError> {
    let what = format!("batch `{}`", path.display());
    let bytes = std::fs::read(path).map_err(|e| RunError(format!("{what}: cannot read: {e}")))?;
    bind_bytes(prog, &bytes, &what)
}

/// Binds a safetensors buffer; `what` names it in messages (e.g. "batch `b.safetensors`").
pub fn bind_bytes(prog: &Program, bytes: &[u8], what: &str) -> Result<Bound, RunError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| RunError(format!("{what}: not a valid safetensors file: {e}")))?;
    bind(
        prog,
        &StFile {
            st,
            what: what.to_string(),
        },
    )
}

/// A safetensors buffer as a [`TensorSource`] (tensors decode on demand), so one file can
/// serve `Objective::fit_channels` and then `Objective::bind`.
pub fn parse_bytes<'a>(bytes: &'a [u8], what: &str) -> Result<impl TensorSource + 'a, RunError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| RunError(format!("{what}: not a valid safetensors file: {e}")))?;
    Ok(StFile {
        st,
        what: what.to_string(),
    })
}

/// Reads every tensor of a safetensors buffer into host memory (for `diff` and tools).
pub fn read_all(bytes: &[u8], what: &str) -> Result<Vec<(String, HostTensor)>, RunError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| RunError(format!("{what}: not a valid safetensors file: {e}")))?;
    let src = StFile {
        st,
        what: what.to_string(),
    };
    let mut out = Vec::new();
    for n in src.names() {
        if let Some(t) = src.get(&n)? {
            out.push((n, t));
        }
    }
    Ok(out)
}

/// Binds in-memory candle tensors (any device; they are copied to the host).
pub fn bind_tensors(
    prog: &Program,
    tensors: &[(&str, &candle_core::Tensor)],
) -> Result<Bound, RunError> {
    let mut host = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        host.push((name.to_string(), from_candle(name, t)?));
    }
    bind(prog, &host)
}

/// Copies one candle tensor to the host.
pub fn from_candle(name: &str, t: &candle_core::Tensor) -> Result<HostTensor, RunError> {
    use candle_core::DType;
    let err = |e: candle_core::Error| RunError(format!("tensor `{name}`: cannot read: {e}"));
    let shape = t.dims().to_vec();
    let flat = t.flatten_all().map_err(err)?;
    let data = match t.dtype() {
        DType::U8 | DType::U32 | DType::I16 | DType::I32 | DType::I64 => {
            HostData::Int(flat.to_dtype(DType::I64).map_err(err)?.to_vec1::<i64>().map_err(err)?)
        }
        DType::BF16 | DType::F16 | DType::F32 | DType::F64 => {
            HostData::Float(flat.to_dtype(DType::F64).map_err(err)?.to_vec1::<f64>().map_err(err)?)
        }
        other => {
            return Err(RunError(format!(
                "tensor `{name}`: dtype {other:?} is not supported (use an integer type, f16, bf16, f32 or f64)"
            )))
        }
    };
    Ok(HostTensor {
        shape,
        dtype: format!("{:?}", t.dtype()).to_uppercase(),
        data,
    })
}

fn shape_str(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Whether the program reads token-shaped data (so `mask` is needed and `tok` must be
/// non-empty).
fn needs_tokens(prog: &Program) -> bool {
    prog.inputs.iter().any(|i| match &i.kind {
        InputKind::Value { space, .. } | InputKind::Ids { space } => {
            *space == SpaceId::TOK
                || matches!(
                    prog.spaces.get(space.index()).map(|s| &s.kind),
                    Some(SpaceKind::RowSegments { .. })
                )
        }
    })
}

/// A batch whose mask marks no valid token is a zero step only if the objective guards its
/// denominators (`max(count, 1)`, as `std::agg` does); an unguarded `sum / count` gives NaN.
/// That NaN would be the first sign of trouble in a training run, so it is an error here,
/// naming the mask, the result and the fix. Batches with valid tokens are not checked: a NaN
/// there is the objective's own arithmetic on real data.
pub fn check_empty_batch_result(
    prog: &Program,
    layout: &Layout,
    eval: &crate::Evaluation,
) -> Result<(), RunError> {
    if layout.size(SpaceId::TOK) != 0 || !(needs_tokens(prog) || uses_tok_space(prog)) {
        return Ok(());
    }
    let mut bad = eval
        .loss
        .filter(|l| !l.is_finite())
        .map(|l| format!("the loss is {l}"));
    bad = bad.or_else(|| {
        eval.metrics
            .iter()
            .find(|(_, v)| !v.is_finite())
            .map(|(n, v)| format!("metric `{n}` is {v}"))
    });
    bad = bad.or_else(|| {
        eval.outputs.iter().find_map(|(n, _, v)| {
            v.iter()
                .find(|x| !x.is_finite())
                .map(|x| format!("output `{n}` has {x}"))
        })
    });
    bad = bad.or_else(|| {
        eval.grads.iter().find_map(|(id, g)| {
            g.iter().find(|x| !x.is_finite()).map(|x| {
                let name = prog
                    .inputs
                    .get(id.0 as usize)
                    .map_or("?", |i| i.name.as_str());
                format!("the gradient of `{name}` has {x}")
            })
        })
    });
    match bad {
        None => Ok(()),
        Some(what) => Err(RunError(format!(
            "empty batch: tensor `mask` marks no valid token, and {what}: the objective divides \
             by a count of zero tokens. Guard the denominator (e.g. `max(count[batch](x), 1)`, as \
             std::agg does) to make an all-padding batch a zero step"
        ))),
    }
}

/// Uses the tokens of the program anywhere (a `position()` or a token node) without a
/// token input: `mask` is still needed to define `tok`.
fn uses_tok_space(prog: &Program) -> bool {
    needs_tokens(prog)
        || prog.nodes.iter().any(|n| {
            n.space == SpaceId::TOK
                || matches!(
                    prog.spaces.get(n.space.index()).map(|s| &s.kind),
                    Some(SpaceKind::RowSegments { .. })
                )
        })
}

/// The expected shapes of an input's tensor, as text, for messages.
fn expected_shapes(kind: &SpaceKind, rows: usize, width: usize) -> String {
    match kind {
        SpaceKind::Batch => "[] or [1]".into(),
        SpaceKind::Seq | SpaceKind::RowGroups { .. } => format!("[{rows}] or [{rows}, 1]"),
        SpaceKind::Tok | SpaceKind::RowSegments { .. } => format!("[{rows}, {width}]"),
    }
}

fn shape_ok(kind: &SpaceKind, shape: &[usize], rows: usize, width: usize) -> bool {
    match kind {
        SpaceKind::Batch => shape.is_empty() || shape == [1],
        SpaceKind::Seq | SpaceKind::RowGroups { .. } => shape == [rows] || shape == [rows, 1],
        SpaceKind::Tok | SpaceKind::RowSegments { .. } => shape == [rows, width],
    }
}

fn missing(name: &str, src: &dyn TensorSource, why: &str) -> RunError {
    let have = src.names();
    let have = if have.is_empty() {
        "the batch has no tensors".to_string()
    } else {
        format!("the batch has: {}", have.join(", "))
    };
    RunError(format!(
        "tensor `{name}`: missing from the batch ({why}); {have}"
    ))
}

/// Binds tensors from any source to the program's inputs. See the module docs for rules.
pub fn bind(prog: &Program, src: &dyn TensorSource) -> Result<Bound, RunError> {
    // 1. B and T: from `mask`, else from the first row-shaped input.
    let mask_t = src.get("mask")?;
    let (rows, width, mask) = match &mask_t {
        Some(m) => {
            if m.shape.len() != 2 {
                return Err(RunError(format!(
                    "tensor `mask`: expected shape [B, T] (rank 2), found {} (rank {})",
                    shape_str(&m.shape),
                    m.shape.len()
                )));
            }
            let mut valid = Vec::with_capacity(m.len());
            for i in 0..m.len() {
                let x = m.as_f64(i);
                if x.is_nan() {
                    return Err(RunError(format!("tensor `mask`: NaN at flat index {i}")));
                }
                valid.push(x != 0.0);
            }
            (m.shape[0], m.shape[1], valid)
        }
        None => {
            if uses_tok_space(prog) {
                return Err(missing(
                    "mask",
                    src,
                    "the response mask defines the token space `tok`",
                ));
            }
            (infer_rows(prog, src)?, 0, Vec::new())
        }
    };
    if rows == 0 {
        return Err(RunError(
            "empty batch: B = 0 rows (tensor `mask` or the row inputs have no rows)".into(),
        ));
    }
    let dims = if mask_t.is_some() {
        format!(" (B = {rows}, T = {width} from `mask`)")
    } else {
        format!(" (B = {rows})")
    };

    // 2. Id inputs, then the layout.
    let mut ids: Vec<(InputId, Vec<i64>)> = Vec::new();
    let mut fetched: Vec<Option<HostTensor>> = Vec::with_capacity(prog.inputs.len());
    let mut channelled: Vec<(String, Option<HostTensor>)> = Vec::new();
    for (k, input) in prog.inputs.iter().enumerate() {
        let t = match &input.channel {
            None => src.get(&input.name)?,
            // The K inputs of one channelled tensor decode it once.
            Some(slot) => match channelled.iter().find(|(n, _)| *n == slot.tensor) {
                Some((_, t)) => t.clone(),
                None => {
                    let t = src.get(&slot.tensor)?;
                    channelled.push((slot.tensor.clone(), t.clone()));
                    t
                }
            },
        };
        if let InputKind::Ids { space } = &input.kind {
            let Some(t) = &t else {
                return Err(missing(
                    &input.name,
                    src,
                    "it is an id input and defines an index space",
                ));
            };
            let kind = space_kind(prog, *space);
            let expect = match kind {
                SpaceKind::RowSegments { .. } | SpaceKind::Tok => format!("[{rows}, {width}]"),
                _ => format!("[{rows}] or [{rows}, 1]"),
            };
            let ok = match kind {
                SpaceKind::RowSegments { .. } | SpaceKind::Tok => t.shape == [rows, width],
                _ => t.shape == [rows] || t.shape == [rows, 1],
            };
            if !ok {
                return Err(RunError(format!(
                    "tensor `{}`: expected shape {expect}{dims}, found {}",
                    input.name,
                    shape_str(&t.shape)
                )));
            }
            let HostData::Int(v) = &t.data else {
                return Err(RunError(format!(
                    "tensor `{}`: ids need an integer dtype (i64, i32, …), found {}",
                    input.name, t.dtype
                )));
            };
            ids.push((InputId(k as u32), v.clone()));
        }
        fetched.push(t);
    }
    let layout = Layout::build(prog, rows, width, &mask, &ids).map_err(|e| RunError(e.0))?;

    // 3. Value inputs.
    let mut values = Vec::with_capacity(prog.inputs.len());
    for (input, t) in prog.inputs.iter().zip(fetched) {
        let InputKind::Value {
            elem,
            space,
            default,
            ..
        } = &input.kind
        else {
            values.push(None);
            continue;
        };
        let size = layout.size(*space);
        let Some(t) = t else {
            match default {
                Some(d) => {
                    values.push(Some(vec![*d; size]));
                    continue;
                }
                None => return Err(missing(tensor_name(input), src, "it has no default")),
            }
        };
        let kind = space_kind(prog, *space);
        let t = match &input.channel {
            Some(slot) => channel_column(&t, slot, kind, rows, width, &dims)?,
            None => t,
        };
        if !shape_ok(kind, &t.shape, rows, width) {
            return Err(RunError(format!(
                "tensor `{}`: expected shape {}{dims}, found {}",
                tensor_name(input),
                expected_shapes(kind, rows, width),
                shape_str(&t.shape)
            )));
        }
        match (elem, &t.data) {
            (Elem::F32, HostData::Float(_)) | (Elem::Bool, _) => {}
            (Elem::F32, _) => {
                return Err(RunError(format!(
                    "tensor `{}`: expected a float dtype (f32, f64, f16, bf16) for an f32 input, found {}",
                    tensor_name(input), t.dtype
                )))
            }
        }
        values.push(Some(gather(prog, &layout, &input.name, *space, *elem, &t)?));
    }
    Ok(Bound { layout, values })
}

/// The batch tensor an input reads: its own name, or the channelled tensor it is a column of.
fn tensor_name(input: &Input) -> &str {
    input.channel.as_ref().map_or(&input.name, |c| &c.tensor)
}

/// Column `slot.index` of a channelled tensor (`[B, K]` or `[B, T, K]`), shaped like an
/// ordinary input of `kind`.
fn channel_column(
    t: &HostTensor,
    slot: &ChannelSlot,
    kind: &SpaceKind,
    rows: usize,
    width: usize,
    dims: &str,
) -> Result<HostTensor, RunError> {
    let (base, layout): (Vec<usize>, &str) = match kind {
        SpaceKind::Batch => (Vec::new(), "[K]"),
        SpaceKind::Seq | SpaceKind::RowGroups { .. } => (vec![rows], "[B, K]"),
        SpaceKind::Tok | SpaceKind::RowSegments { .. } => (vec![rows, width], "[B, T, K]"),
    };
    let count = slot.count as usize;
    if count == 1 && t.shape == base {
        return Ok(t.clone());
    }
    let (name, axis) = (&slot.tensor, &slot.axis);
    let ranked = t.shape.len() == base.len() + 1 && t.shape[..base.len()] == base[..];
    match t.shape.last() {
        Some(&found) if ranked && found != count => {
            return Err(RunError(format!(
                "tensor `{name}`: has {found} channels (shape {}) but the objective was compiled with {axis} = {count}; run with --set {axis}={found}",
                shape_str(&t.shape)
            )))
        }
        _ if ranked => {}
        _ => {
            let mut want = base.clone();
            want.push(count);
            return Err(RunError(format!(
                "tensor `{name}`: expected shape {} ({layout}, {axis} = {count}){dims}, found {}",
                shape_str(&want),
                shape_str(&t.shape)
            )));
        }
    }
    let k = slot.index as usize;
    let picks = (0..base.iter().product::<usize>()).map(|i| i * count + k);
    let data = match &t.data {
        HostData::Float(v) => HostData::Float(picks.map(|i| v[i]).collect()),
        HostData::Int(v) => HostData::Int(picks.map(|i| v[i]).collect()),
        HostData::Bool(v) => HostData::Bool(picks.map(|i| v[i]).collect()),
    };
    Ok(HostTensor {
        shape: base,
        dtype: t.dtype.clone(),
        data,
    })
}

fn space_kind(prog: &Program, s: SpaceId) -> &SpaceKind {
    prog.spaces
        .get(s.index())
        .map(|sp| &sp.kind)
        .unwrap_or(&SpaceKind::Batch)
}

/// `B` when the batch has no `mask`: the leading dimension of the first row-shaped input.
fn infer_rows(prog: &Program, src: &dyn TensorSource) -> Result<usize, RunError> {
    for input in &prog.inputs {
        let space = match &input.kind {
            InputKind::Value { space, .. } | InputKind::Ids { space } => *space,
        };
        if matches!(
            space_kind(prog, space),
            SpaceKind::Seq | SpaceKind::RowGroups { .. }
        ) {
            if let Some(t) = src.get(tensor_name(input))? {
                return t.shape.first().copied().ok_or_else(|| {
                    RunError(format!(
                        "tensor `{}`: expected shape [B], found [] (a scalar)",
                        tensor_name(input)
                    ))
                });
            }
        }
    }
    Err(missing(
        "mask",
        src,
        "nothing else gives the number of rows B",
    ))
}

/// Picks the values at the elements of `space` and checks they are finite there.
fn gather(
    prog: &Program,
    layout: &Layout,
    name: &str,
    space: SpaceId,
    elem: Elem,
    t: &HostTensor,
) -> Result<Vec<f64>, RunError> {
    let width = layout.width;
    let check = |x: f64, at: &dyn Fn() -> String| -> Result<f64, RunError> {
        if !x.is_finite() {
            return Err(RunError(format!(
                "tensor `{name}`: non-finite value {x} at {} (a valid position)",
                at()
            )));
        }
        Ok(if elem == Elem::Bool {
            f64::from(u8::from(x != 0.0))
        } else {
            x
        })
    };
    let rows = layout.rows;
    match space_kind(prog, space) {
        SpaceKind::Batch => Ok(vec![check(t.as_f64(0), &|| "the scalar".to_string())?]),
        SpaceKind::Seq => (0..rows)
            .map(|r| check(t.as_f64(r), &|| format!("row {r}")))
            .collect(),
        SpaceKind::Tok => {
            let mut out = Vec::with_capacity(layout.tok_pos.len());
            for r in 0..rows {
                for k in layout.row_start[r]..layout.row_start[r + 1] {
                    let p = layout.tok_pos[k] as usize;
                    out.push(check(t.as_f64(r * width + p), &|| {
                        format!("row {r}, token {p}")
                    })?);
                }
            }
            Ok(out)
        }
        SpaceKind::RowGroups { .. } => {
            let map = layout.map(prog, SpaceId::SEQ, space).ok_or_else(|| {
                RunError(format!(
                    "tensor `{name}`: its space `{}` is not laid out",
                    prog.spaces[space.index()].name
                ))
            })?;
            let per_row: Vec<f64> = (0..rows).map(|r| t.as_f64(r)).collect();
            one_per_segment(
                name,
                &prog.spaces[space.index()].name,
                layout.size(space),
                &map,
                &per_row,
                |r| format!("row {r}"),
            )
            .and_then(|v| {
                v.into_iter()
                    .enumerate()
                    .map(|(g, x)| check(x, &|| format!("group {g}")))
                    .collect()
            })
        }
        SpaceKind::RowSegments { .. } => {
            let map = layout.map(prog, SpaceId::TOK, space).ok_or_else(|| {
                RunError(format!(
                    "tensor `{name}`: its space `{}` is not laid out",
                    prog.spaces[space.index()].name
                ))
            })?;
            let mut per_tok = Vec::with_capacity(layout.tok_pos.len());
            let mut where_ = Vec::with_capacity(layout.tok_pos.len());
            for r in 0..rows {
                for k in layout.row_start[r]..layout.row_start[r + 1] {
                    let p = layout.tok_pos[k] as usize;
                    per_tok.push(t.as_f64(r * width + p));
                    where_.push((r, p));
                }
            }
            let v = one_per_segment(
                name,
                &prog.spaces[space.index()].name,
                layout.size(space),
                &map,
                &per_tok,
                |k| format!("row {}, token {}", where_[k].0, where_[k].1),
            )?;
            v.into_iter()
                .enumerate()
                .map(|(s, x)| check(x, &|| format!("segment {s}")))
                .collect()
        }
    }
}

/// Collapses member values to one per segment, requiring every member to agree.
fn one_per_segment(
    name: &str,
    space: &str,
    n: usize,
    map: &[u32],
    vals: &[f64],
    at: impl Fn(usize) -> String,
) -> Result<Vec<f64>, RunError> {
    let mut out = vec![f64::NAN; n];
    let mut first = vec![usize::MAX; n];
    for (k, (&s, &x)) in map.iter().zip(vals).enumerate() {
        let s = s as usize;
        if first[s] == usize::MAX {
            first[s] = k;
            out[s] = x;
        } else if out[s].to_bits() != x.to_bits() && out[s] != x {
            return Err(RunError(format!(
                "tensor `{name}`: one value per `{space}` is expected, but {} has {} and {} has {x}",
                at(first[s]),
                out[s],
                at(k)
            )));
        }
    }
    Ok(out)
}

/// The values a backend reads for value input `input`: the bound ones (`given`, which must
/// have `n` entries: one per element of the input's space) or, when the batch lacks the
/// tensor, the declared default. One place for the two errors every backend reports.
pub enum InputValues<'a, T> {
    Given(&'a [T]),
    Default(f64),
}

pub fn input_values<'a, T>(
    input: &Input,
    given: Option<&'a [T]>,
    n: usize,
) -> Result<InputValues<'a, T>, RunError> {
    let default = match &input.kind {
        InputKind::Value { default, .. } => *default,
        InputKind::Ids { .. } => {
            return Err(RunError(format!(
                "input `{}`: ids are not values",
                input.name
            )))
        }
    };
    match (given, default) {
        (Some(v), _) if v.len() == n => Ok(InputValues::Given(v)),
        (Some(v), _) => Err(RunError(format!(
            "tensor `{}`: expected {n} values in its space, found {}",
            input.name,
            v.len()
        ))),
        (None, Some(d)) => Ok(InputValues::Default(d)),
        (None, None) => Err(RunError(format!(
            "tensor `{}`: missing from the batch",
            input.name
        ))),
    }
}

/// A batch layout belongs to the program it is run with (same spaces).
pub fn check_layout(prog: &Program, layout: &Layout) -> Result<(), RunError> {
    if layout.sizes.len() != prog.spaces.len() {
        return Err(RunError(format!(
            "layout has {} spaces, program `{}` has {}",
            layout.sizes.len(),
            prog.name,
            prog.spaces.len()
        )));
    }
    Ok(())
}
