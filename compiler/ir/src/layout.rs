//! The concrete shape of every index space of a program for one batch: how many elements
//! each space has and which coarser element each element lies in. Built once per batch by
//! the runtime and shared by every backend (interpreter, CPU, OpenCL, CUDA).

use crate::{InputId, InputKind, Program, SpaceId, SpaceKind};
use std::collections::HashMap;

/// Sizes and parent maps of all spaces for one batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// `B`: rows in the batch.
    pub rows: usize,
    /// `T`: padded width of token tensors (0 when the program has no token inputs).
    pub width: usize,
    /// CSR over valid tokens: tokens of row `r` are `row_start[r]..row_start[r + 1]`.
    pub row_start: Vec<usize>,
    /// Padded position `t` of every valid token, in `tok` order.
    pub tok_pos: Vec<u32>,
    /// Element count of every space, indexed by `SpaceId`.
    pub sizes: Vec<usize>,
    /// For every space, the index maps to each of its direct parents.
    parents: Vec<Vec<(SpaceId, Vec<u32>)>>,
}

/// Why a batch cannot be laid out. Messages name the tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct LayoutError(pub String);

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for LayoutError {}

impl Layout {
    /// Lays out a batch of `rows × width` with the response `mask` (row-major, `rows*width`
    /// entries; empty when `width == 0`) and the raw values of every id input
    /// (`id[tok]`: `rows*width` entries, read only at valid tokens; `id[seq]`: `rows`).
    pub fn build(
        prog: &Program,
        rows: usize,
        width: usize,
        mask: &[bool],
        ids: &[(InputId, Vec<i64>)],
    ) -> Result<Layout, LayoutError> {
        if mask.len() != rows * width {
            return Err(LayoutError(format!(
                "tensor `mask`: expected {} elements for shape [{rows}, {width}], found {}",
                rows * width,
                mask.len()
            )));
        }
        let mut row_start = Vec::with_capacity(rows + 1);
        let mut tok_pos = Vec::new();
        let mut tok_row = Vec::new();
        row_start.push(0);
        for r in 0..rows {
            for t in 0..width {
                if mask[r * width + t] {
                    tok_pos.push(t as u32);
                    tok_row.push(r as u32);
                }
            }
            row_start.push(tok_pos.len());
        }
        let n_spaces = prog.spaces.len();
        let mut sizes = vec![0usize; n_spaces];
        let mut parents: Vec<Vec<(SpaceId, Vec<u32>)>> = vec![Vec::new(); n_spaces];
        sizes[SpaceId::BATCH.index()] = 1;
        sizes[SpaceId::SEQ.index()] = rows;
        sizes[SpaceId::TOK.index()] = tok_pos.len();
        parents[SpaceId::SEQ.index()].push((SpaceId::BATCH, vec![0; rows]));
        parents[SpaceId::TOK.index()].push((SpaceId::SEQ, tok_row.clone()));

        let ids_of = |input: InputId| -> Result<&Vec<i64>, LayoutError> {
            ids.iter()
                .find(|(i, _)| *i == input)
                .map(|(_, v)| v)
                .ok_or_else(|| {
                    LayoutError(format!(
                        "tensor `{}`: missing from the batch (it defines an index space)",
                        prog.inputs[input.index()].name
                    ))
                })
        };

        // Row groups first (in declaration order, parents are declared before children),
        // then row segments.
        for (si, space) in prog.spaces.iter().enumerate() {
            let s = SpaceId(si as u32);
            match &space.kind {
                SpaceKind::RowGroups { input, parent } => {
                    let name = &prog.inputs[input.index()].name;
                    let vals = ids_of(*input)?;
                    if vals.len() != rows {
                        return Err(LayoutError(format!(
                            "tensor `{name}`: expected {rows} ids (one per row), found {}",
                            vals.len()
                        )));
                    }
                    let mut index: HashMap<i64, u32> = HashMap::new();
                    let mut row_group = Vec::with_capacity(rows);
                    for &v in vals {
                        let next = index.len() as u32;
                        row_group.push(*index.entry(v).or_insert(next));
                    }
                    let n = index.len();
                    sizes[si] = n;
                    // Map each group to its parent element, checking nesting.
                    let parent_of_row = if *parent == SpaceId::BATCH {
                        vec![0u32; rows]
                    } else {
                        map_from(&parents, SpaceId::SEQ, *parent, prog).ok_or_else(|| {
                            LayoutError(format!(
                                "tensor `{name}`: its parent space `{}` is not laid out",
                                prog.spaces[parent.index()].name
                            ))
                        })?
                    };
                    let mut group_parent = vec![u32::MAX; n];
                    for r in 0..rows {
                        let g = row_group[r] as usize;
                        if group_parent[g] == u32::MAX {
                            group_parent[g] = parent_of_row[r];
                        } else if group_parent[g] != parent_of_row[r] {
                            return Err(LayoutError(format!(
                                "tensor `{name}`: id {} spans two `{}` segments (rows of one `{}` must share a `{}`)",
                                vals[r],
                                prog.spaces[parent.index()].name,
                                space.name,
                                prog.spaces[parent.index()].name
                            )));
                        }
                    }
                    parents[si].push((*parent, group_parent));
                    parents[SpaceId::SEQ.index()].push((s, row_group));
                }
                SpaceKind::RowSegments { .. }
                | SpaceKind::Batch
                | SpaceKind::Seq
                | SpaceKind::Tok => {}
            }
        }
        for (si, space) in prog.spaces.iter().enumerate() {
            let s = SpaceId(si as u32);
            if let SpaceKind::RowSegments { input } = &space.kind {
                let name = &prog.inputs[input.index()].name;
                let vals = ids_of(*input)?;
                if vals.len() != rows * width {
                    return Err(LayoutError(format!(
                        "tensor `{name}`: expected {} ids for shape [{rows}, {width}], found {}",
                        rows * width,
                        vals.len()
                    )));
                }
                let mut index: HashMap<(u32, i64), u32> = HashMap::new();
                let mut tok_seg = Vec::with_capacity(tok_pos.len());
                let mut seg_row = Vec::new();
                for (&r, &t) in tok_row.iter().zip(&tok_pos) {
                    let v = vals[r as usize * width + t as usize];
                    let next = index.len() as u32;
                    let seg = *index.entry((r, v)).or_insert_with(|| {
                        seg_row.push(r);
                        next
                    });
                    tok_seg.push(seg);
                }
                sizes[si] = index.len();
                parents[si].push((SpaceId::SEQ, seg_row));
                parents[SpaceId::TOK.index()].push((s, tok_seg));
            }
        }
        Ok(Layout {
            rows,
            width,
            row_start,
            tok_pos,
            sizes,
            parents,
        })
    }

    pub fn size(&self, s: SpaceId) -> usize {
        self.sizes[s.index()]
    }

    /// For every element of `fine`, the index of the element of `coarse` it lies in.
    /// `None` when `fine` is not within `coarse`.
    pub fn map(&self, prog: &Program, fine: SpaceId, coarse: SpaceId) -> Option<Vec<u32>> {
        map_from(&self.parents, fine, coarse, prog)
    }

    /// Whether the tokens of every segment of `space` (a `RowSegments` space, or `SEQ`)
    /// are consecutive in token order — required by scans and shifts.
    pub fn contiguous(&self, prog: &Program, space: SpaceId) -> bool {
        let Some(m) = self.map(prog, SpaceId::TOK, space) else {
            return false;
        };
        let mut seen = vec![false; self.size(space)];
        let mut prev: Option<u32> = None;
        for &s in &m {
            if prev != Some(s) {
                if seen[s as usize] {
                    return false;
                }
                seen[s as usize] = true;
                prev = Some(s);
            }
        }
        true
    }
}

fn map_from(
    parents: &[Vec<(SpaceId, Vec<u32>)>],
    fine: SpaceId,
    coarse: SpaceId,
    prog: &Program,
) -> Option<Vec<u32>> {
    if fine == coarse {
        let n = match parents.get(fine.index())?.first() {
            Some((_, m)) => m.len(),
            None => 1,
        };
        return Some((0..n as u32).collect());
    }
    for (p, m) in parents.get(fine.index())? {
        if *p == coarse {
            return Some(m.clone());
        }
        if prog.within(*p, coarse) {
            if let Some(up) = map_from(parents, *p, coarse, prog) {
                return Some(m.iter().map(|&i| up[i as usize]).collect());
            }
        }
    }
    None
}

/// Convenience for `ids` of [`Layout::build`]: which inputs are id inputs.
pub fn id_inputs(prog: &Program) -> Vec<InputId> {
    prog.inputs
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i.kind, InputKind::Ids { .. }))
        .map(|(k, _)| InputId(k as u32))
        .collect()
}
