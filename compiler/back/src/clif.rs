//! Cranelift translation of fused elementwise loops (the CPU backend's row kernels).
//!
//! A [`LoopSpec`] names IR nodes that are elementwise in one space (a row's tokens, say)
//! and how the loop reaches everything else: streams indexed by the loop counter, uniforms
//! (one value per call: a row's `seq` value, a batch scalar, a param), gathers through an
//! index array (a turn value broadcast to its tokens), stores, and fused reductions. Each
//! spec becomes one JIT function
//!
//! ```text
//! extern "C" fn(n: i64, ptrs: *const *mut u8, uni: *const f32, acc: *mut f32)
//! ```
//!
//! whose body runs in `f32x4` (the only vector width Cranelift's x64 backend lowers) with a
//! scalar tail. Reductions keep four lane accumulators plus the tail and combine them in a
//! fixed order, so a call's result depends only on its inputs, never on threads.

use crate::math::{ConstPool, Emit, V4};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Type, Value,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use rlobj_ir::{BinaryOp, NodeId, Op, Program, UnaryOp};
use std::collections::HashMap;

/// Where a loop reads a value that it does not compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `ptrs[slot] as *const f32` indexed by the loop counter.
    Stream(u32),
    /// `uni[slot]`, the same for every element of the call.
    Uniform(u32),
    /// `values[index[i]]` with `values = ptrs[values] as *const f32`, `index` a `u32` array.
    Gather { values: u32, index: u32 },
}

/// A fused reduction over the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccKind {
    Sum,
    Max,
    Min,
    Count,
}

/// `acc[slot] = reduce(value where mask)` over the call's elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Acc {
    pub value: NodeId,
    pub mask: Option<NodeId>,
    pub kind: AccKind,
    pub slot: u32,
}

/// One fused elementwise loop.
#[derive(Clone, Debug, Default)]
pub struct LoopSpec {
    pub name: String,
    /// Nodes computed per element, in evaluation order.
    pub body: Vec<NodeId>,
    pub sources: Vec<(NodeId, Source)>,
    /// `ptrs[slot][i] = node`.
    pub sinks: Vec<(NodeId, u32)>,
    pub accs: Vec<Acc>,
    /// `(node, root)`: `node` reads as `root` (broadcasts and stop-grads of loop values).
    pub alias: Vec<(NodeId, NodeId)>,
}

/// The ABI of every loop function.
pub type LoopFn =
    unsafe extern "C" fn(n: i64, ptrs: *const *mut u8, uni: *const f32, acc: *mut f32);

/// Why a loop could not be translated (names the node).
#[derive(Clone, Debug, PartialEq)]
pub struct ClifError(pub String);

impl std::fmt::Display for ClifError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "clif: {}", self.0)
    }
}
impl std::error::Error for ClifError {}

fn err<E: std::fmt::Display>(e: E) -> ClifError {
    ClifError(e.to_string())
}

/// `powf` for the JIT: no vector form, called per lane; computed in f64 like the oracle.
extern "C" fn rlobj_powf(a: f32, b: f32) -> f32 {
    (f64::from(a)).powf(f64::from(b)) as f32
}

/// A JIT module being filled with loops.
pub struct Jit {
    module: JITModule,
    ctx: Context,
    fctx: FunctionBuilderContext,
    pow: FuncId,
    /// The host has FMA (see [`crate::math::Emit::fma`]).
    fma: bool,
    ids: Vec<FuncId>,
    text: Option<Vec<String>>,
    /// Each loop's constant table (see [`ConstPool`]); the code reads them.
    pools: Vec<Box<[V4]>>,
}

/// Finished machine code: one function pointer per declared loop, in declaration order.
pub struct Compiled {
    /// Owns the code; kept alive as long as the pointers are used.
    _module: JITModule,
    /// The loops' constant tables, read by the code.
    _pools: Vec<Box<[V4]>>,
    pub fns: Vec<LoopFn>,
    /// CLIF text of every loop when requested (`--emit clif`).
    pub text: Vec<String>,
}

// SAFETY: after `finalize_definitions` the module is never mutated again; it only keeps
// the executable pages mapped. The function pointers are plain code addresses.
unsafe impl Send for Compiled {}
unsafe impl Sync for Compiled {}

impl Jit {
    /// A JIT for the host CPU (`keep_text` records CLIF text for `--emit clif`).
    pub fn new(keep_text: bool) -> Result<Self, ClifError> {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").map_err(err)?;
        flags.set("use_colocated_libcalls", "false").map_err(err)?;
        flags.set("is_pic", "false").map_err(err)?;
        let isa_builder = cranelift_native::builder().map_err(err)?;
        let isa = isa_builder
            .finish(settings::Flags::new(flags))
            .map_err(err)?;
        let fma = isa
            .isa_flags()
            .iter()
            .any(|f| f.name == "has_fma" && f.as_bool() == Some(true));
        let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
        jb.symbol("rlobj_powf", rlobj_powf as *const u8);
        let mut module = JITModule::new(jb);
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(types::F32));
        sig.params.push(AbiParam::new(types::F32));
        sig.returns.push(AbiParam::new(types::F32));
        let pow = module
            .declare_function("rlobj_powf", Linkage::Import, &sig)
            .map_err(err)?;
        let ctx = module.make_context();
        Ok(Jit {
            module,
            ctx,
            fctx: FunctionBuilderContext::new(),
            pow,
            fma,
            ids: Vec::new(),
            text: keep_text.then(Vec::new),
            pools: Vec::new(),
        })
    }

    /// Translates one loop; returns its index in [`Compiled::fns`].
    pub fn add_loop(&mut self, prog: &Program, spec: &LoopSpec) -> Result<usize, ClifError> {
        let ptr = self.module.target_config().pointer_type();
        self.module.clear_context(&mut self.ctx);
        let sig = &mut self.ctx.func.signature;
        sig.params.push(AbiParam::new(types::I64));
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(ptr));
        let name = format!("loop{}_{}", self.ids.len(), spec.name);
        let id = self
            .module
            .declare_function(&name, Linkage::Local, &self.ctx.func.signature)
            .map_err(err)?;
        let pow_ref = self
            .module
            .declare_func_in_func(self.pow, &mut self.ctx.func);
        {
            let b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let mut t = Translator {
                prog,
                spec,
                b,
                ptr,
                pow: pow_ref,
                fma: self.fma,
                pool: ConstPool::new(),
                bases: None,
            };
            t.translate()?;
            t.b.finalize(self.module.target_config());
            self.pools.push(t.pool.into_table());
        }
        if let Some(text) = &mut self.text {
            text.push(format!("; {name}\n{}", self.ctx.func.display()));
        }
        self.ctx.set_disasm(self.text.is_some());
        self.module
            .define_function(id, &mut self.ctx)
            .map_err(|e| ClifError(format!("{name}: {e:?}")))?;
        if let Some(text) = &mut self.text {
            // The machine code after register allocation (shows spills and hoisting).
            if let Some(vcode) = self.ctx.compiled_code().and_then(|c| c.vcode.clone()) {
                text.push(format!("; {name}: machine code\n{vcode}"));
            }
        }
        self.module.clear_context(&mut self.ctx);
        self.ids.push(id);
        Ok(self.ids.len() - 1)
    }

    /// Finalises the code and returns the callable loops.
    pub fn finish(mut self) -> Result<Compiled, ClifError> {
        self.module.finalize_definitions().map_err(err)?;
        let fns = self
            .ids
            .iter()
            .map(|id| {
                let p = self.module.get_finalized_function(*id);
                // SAFETY: every loop was declared with exactly the `LoopFn` signature.
                unsafe { std::mem::transmute::<*const u8, LoopFn>(p) }
            })
            .collect();
        Ok(Compiled {
            _module: self.module,
            _pools: self.pools,
            fns,
            text: self.text.unwrap_or_default(),
        })
    }
}

struct Translator<'a, 'f> {
    prog: &'a Program,
    spec: &'a LoopSpec,
    b: FunctionBuilder<'f>,
    ptr: Type,
    pow: cranelift_codegen::ir::FuncRef,
    fma: bool,
    /// This loop's vector constants.
    pool: ConstPool,
    /// In the vector body: the constant table's and the uniforms' addresses, reloaded from
    /// a stack slot each iteration so that loads relative to them stay in the loop.
    bases: Option<(Value, Value)>,
}

/// Values hoisted into the entry block.
struct Hoisted {
    n: Value,
    bases: HashMap<u32, Value>,
    uni_s: HashMap<u32, Value>,
    /// Byte offset of each uniform's splat in the vector body's uniform slot.
    uni_j: HashMap<u32, i32>,
}

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

impl Translator<'_, '_> {
    fn translate(&mut self) -> Result<(), ClifError> {
        let entry = self.b.create_block();
        self.b.append_block_params_for_function_params(entry);
        self.b.switch_to_block(entry);
        self.b.seal_block(entry);
        let params = self.b.block_params(entry).to_vec();
        let (n, ptrs, uni, acc_ptr) = (params[0], params[1], params[2], params[3]);

        // Hoist stream bases and uniforms.
        let mut slots: Vec<u32> = Vec::new();
        let mut unis: Vec<u32> = Vec::new();
        for (_, s) in &self.spec.sources {
            match *s {
                Source::Stream(k) => slots.push(k),
                Source::Gather { values, index } => slots.extend([values, index]),
                Source::Uniform(k) => unis.push(k),
            }
        }
        slots.extend(self.spec.sinks.iter().map(|(_, k)| *k));
        slots.sort_unstable();
        slots.dedup();
        let mut h = Hoisted {
            n,
            bases: HashMap::new(),
            uni_s: HashMap::new(),
            uni_j: HashMap::new(),
        };
        for k in slots {
            let v = self.b.ins().load(self.ptr, flags(), ptrs, (k * 8) as i32);
            h.bases.insert(k, v);
        }
        // The vector body reads uniforms pre-splatted into this slot: one load per use
        // instead of a scalar load and a broadcast.
        unis.sort_unstable();
        unis.dedup();
        let uslot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            16 * (unis.len() as u32).max(1),
            4,
        ));
        for (j, &k) in unis.iter().enumerate() {
            let v = self.b.ins().load(types::F32, flags(), uni, (k * 4) as i32);
            h.uni_s.insert(k, v);
            h.uni_j.insert(k, (16 * j) as i32);
            let vv = self.b.ins().splat(types::F32X4, v);
            self.b
                .ins()
                .stack_store(self.ptr, vv, uslot, (16 * j) as i32);
        }

        // The constant table's and the uniforms' addresses, for the vector body.
        let bslot =
            self.b
                .create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 16, 3));
        let paddr = self.b.ins().iconst(self.ptr, self.pool.addr());
        self.b.ins().stack_store(self.ptr, paddr, bslot, 0);
        let uaddr = self.b.ins().stack_addr(self.ptr, uslot, 0);
        self.b.ins().stack_store(self.ptr, uaddr, bslot, 8);

        // Accumulators: one vector and one scalar variable each.
        let mut vacc = Vec::new();
        let mut sacc = Vec::new();
        for a in &self.spec.accs {
            let init = match a.kind {
                AccKind::Sum | AccKind::Count => 0.0,
                AccKind::Max => f32::NEG_INFINITY,
                AccKind::Min => f32::INFINITY,
            };
            let vv = self.b.declare_var(types::F32X4);
            let sv = self.b.declare_var(types::F32);
            let c = self.b.ins().f32const(init);
            let cv = self.b.ins().splat(types::F32X4, c);
            self.b.def_var(vv, cv);
            self.b.def_var(sv, c);
            vacc.push(vv);
            sacc.push(sv);
        }

        let i = self.b.declare_var(types::I64);
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.def_var(i, zero);
        let vhead = self.b.create_block();
        let vbody = self.b.create_block();
        let thead = self.b.create_block();
        let tbody = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().jump(vhead, &[]);

        self.b.switch_to_block(vhead);
        let iv = self.b.use_var(i);
        let i4 = self.b.ins().iadd_imm_s(iv, 4);
        let c = self.b.ins().icmp(IntCC::SignedLessThanOrEqual, i4, h.n);
        self.b.ins().brif(c, vbody, &[], thead, &[]);

        self.b.switch_to_block(vbody);
        self.b.seal_block(vbody);
        let cb = self.b.ins().stack_load(self.ptr, self.ptr, bslot, 0);
        let ub = self.b.ins().stack_load(self.ptr, self.ptr, bslot, 8);
        self.bases = Some((cb, ub));
        let iv = self.b.use_var(i);
        self.body(&h, iv, types::F32X4, &vacc)?;
        self.bases = None;
        let iv = self.b.use_var(i);
        let next = self.b.ins().iadd_imm_s(iv, 4);
        self.b.def_var(i, next);
        self.b.ins().jump(vhead, &[]);
        self.b.seal_block(vhead);

        self.b.switch_to_block(thead);
        let iv = self.b.use_var(i);
        let c = self.b.ins().icmp(IntCC::SignedLessThan, iv, h.n);
        self.b.ins().brif(c, tbody, &[], exit, &[]);

        self.b.switch_to_block(tbody);
        self.b.seal_block(tbody);
        let iv = self.b.use_var(i);
        self.body(&h, iv, types::F32, &sacc)?;
        let iv = self.b.use_var(i);
        let next = self.b.ins().iadd_imm_s(iv, 1);
        self.b.def_var(i, next);
        self.b.ins().jump(thead, &[]);
        self.b.seal_block(thead);

        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
        for (k, a) in self.spec.accs.iter().enumerate() {
            let v = self.b.use_var(vacc[k]);
            let s = self.b.use_var(sacc[k]);
            let lanes: Vec<Value> = (0..4).map(|l| self.b.ins().extractlane(v, l)).collect();
            let mut e = Emit::new(&mut self.b, types::F32);
            let r = match a.kind {
                AccKind::Sum | AccKind::Count => {
                    let p = e.add(lanes[0], lanes[1]);
                    let q = e.add(lanes[2], lanes[3]);
                    let pq = e.add(p, q);
                    e.add(pq, s)
                }
                AccKind::Max => {
                    let p = e.max(lanes[0], lanes[1]);
                    let q = e.max(lanes[2], lanes[3]);
                    let pq = e.max(p, q);
                    e.max(pq, s)
                }
                AccKind::Min => {
                    let p = e.min(lanes[0], lanes[1]);
                    let q = e.min(lanes[2], lanes[3]);
                    let pq = e.min(p, q);
                    e.min(pq, s)
                }
            };
            self.b.ins().store(flags(), r, acc_ptr, (a.slot * 4) as i32);
        }
        self.b.ins().return_(&[]);
        Ok(())
    }

    /// Emits one element (scalar) or four (vector) of the loop body at counter `iv`.
    fn body(
        &mut self,
        h: &Hoisted,
        iv: Value,
        ty: Type,
        accs: &[Variable],
    ) -> Result<(), ClifError> {
        let vector = ty.is_vector();
        let off = self.b.ins().ishl_imm_s(iv, 2);
        let mut vals: HashMap<NodeId, Value> = HashMap::new();
        for &(node, src) in &self.spec.sources {
            let v = match src {
                Source::Stream(k) => {
                    let addr = self.b.ins().iadd(h.bases[&k], off);
                    // Token inputs are never written by a loop (sinks are separate
                    // buffers), so `readonly` lets Cranelift place each load next to its
                    // first use instead of holding (and spilling) all of them from the top.
                    self.b
                        .ins()
                        .load(ty, flags().with_readonly().with_can_move(), addr, 0)
                }
                Source::Uniform(k) => {
                    if vector {
                        // A vector load from the pre-splatted slot, next to its use: a
                        // splat hoisted out of the loop held a register for the whole loop,
                        // and the register allocator spilled it and re-broadcast it each time.
                        match self.bases {
                            Some((_, ub)) => {
                                let pure = flags().with_aligned().with_readonly().with_can_move();
                                self.b.ins().load(types::F32X4, pure, ub, h.uni_j[&k])
                            }
                            None => self.b.ins().splat(types::F32X4, h.uni_s[&k]),
                        }
                    } else {
                        h.uni_s[&k]
                    }
                }
                Source::Gather { values, index } => {
                    let ia = self.b.ins().iadd(h.bases[&index], off);
                    let lanes = if vector { 4 } else { 1 };
                    let mut acc: Option<Value> = None;
                    for l in 0..lanes {
                        let ix = self.b.ins().load(types::I32, flags(), ia, l * 4);
                        let ix = self.b.ins().uextend(types::I64, ix);
                        let ix = self.b.ins().ishl_imm_s(ix, 2);
                        let a = self.b.ins().iadd(h.bases[&values], ix);
                        let x = self.b.ins().load(types::F32, flags(), a, 0);
                        acc = Some(match acc {
                            None if vector => self.b.ins().splat(types::F32X4, x),
                            None => x,
                            Some(v) => self.b.ins().insertlane(v, x, l as u8),
                        });
                    }
                    acc.ok_or_else(|| ClifError("empty gather".into()))?
                }
            };
            vals.insert(node, v);
        }
        for &node in &self.spec.body {
            if vals.contains_key(&node) {
                continue;
            }
            let v = self.node(&vals, node, ty)?;
            vals.insert(node, v);
        }
        let spec = self.spec;
        let alias = &spec.alias;
        let get = |vals: &HashMap<NodeId, Value>, n: NodeId| {
            let n = alias
                .iter()
                .find(|(a, _)| *a == n)
                .map(|(_, r)| *r)
                .unwrap_or(n);
            vals.get(&n)
                .copied()
                .ok_or_else(|| ClifError(format!("node %{} is not available in the loop", n.0)))
        };
        for &(node, k) in &self.spec.sinks {
            let v = get(&vals, node)?;
            let addr = self.b.ins().iadd(h.bases[&k], off);
            self.b.ins().store(flags(), v, addr, 0);
        }
        for (a, var) in self.spec.accs.iter().zip(accs) {
            let mask = match a.mask {
                Some(m) => Some(get(&vals, m)?),
                None => None,
            };
            let cur = self.b.use_var(*var);
            let mut e = Emit::with_fma(&mut self.b, ty, self.fma)
                .with_pool(self.bases.map(|(cb, _)| (&self.pool, cb)));
            let x = match a.kind {
                AccKind::Count => e.c(1.0),
                _ => get(&vals, a.value)?,
            };
            let neutral = match a.kind {
                AccKind::Sum | AccKind::Count => e.c(0.0),
                AccKind::Max => e.c(f32::NEG_INFINITY),
                AccKind::Min => e.c(f32::INFINITY),
            };
            let x = match mask {
                Some(m) => {
                    let t = e.truthy(m);
                    e.sel(t, x, neutral)
                }
                None => x,
            };
            let next = match a.kind {
                AccKind::Sum | AccKind::Count => e.add(cur, x),
                AccKind::Max => e.max(cur, x),
                AccKind::Min => e.min(cur, x),
            };
            self.b.def_var(*var, next);
        }
        Ok(())
    }

    fn node(
        &mut self,
        vals: &HashMap<NodeId, Value>,
        id: NodeId,
        ty: Type,
    ) -> Result<Value, ClifError> {
        let spec = self.spec;
        let alias = &spec.alias;
        let get = |n: NodeId| {
            let n = alias
                .iter()
                .find(|(a, _)| *a == n)
                .map(|(_, r)| *r)
                .unwrap_or(n);
            vals.get(&n).copied().ok_or_else(|| {
                ClifError(format!(
                    "operand %{} of %{} is not available in the loop",
                    n.0, id.0
                ))
            })
        };
        let node = self.prog.node(id);
        let pow = self.pow;
        let mut e = Emit::with_fma(&mut self.b, ty, self.fma)
            .with_pool(self.bases.map(|(cb, _)| (&self.pool, cb)));
        Ok(match &node.op {
            Op::Const(c) => e.c(*c as f32),
            Op::Unary(u, a) => {
                let a = get(*a)?;
                match u {
                    UnaryOp::Neg => e.neg(a),
                    UnaryOp::Exp => e.exp(a),
                    UnaryOp::Log => e.log(a),
                    UnaryOp::Log1p => e.log1p(a),
                    UnaryOp::Expm1 => e.expm1(a),
                    UnaryOp::Sqrt => e.b.ins().sqrt(a),
                    UnaryOp::Rsqrt => {
                        let s = e.b.ins().sqrt(a);
                        let one = e.c(1.0);
                        e.div(one, s)
                    }
                    UnaryOp::Abs => e.abs(a),
                    UnaryOp::Sign => e.sign(a),
                    UnaryOp::Tanh => e.tanh(a),
                    UnaryOp::Sigmoid => e.sigmoid(a),
                    UnaryOp::Softplus => e.softplus(a),
                    UnaryOp::LogSigmoid => e.log_sigmoid(a),
                    UnaryOp::Floor => e.b.ins().floor(a),
                    UnaryOp::Ceil => e.b.ins().ceil(a),
                    UnaryOp::Recip => {
                        let one = e.c(1.0);
                        e.div(one, a)
                    }
                    UnaryOp::Not => {
                        let t = e.truthy(a);
                        let zero = e.c(0.0);
                        let one = e.c(1.0);
                        e.sel(t, zero, one)
                    }
                    UnaryOp::ToF32 => a,
                }
            }
            Op::Binary(op, a, b) => {
                let (a, b) = (get(*a)?, get(*b)?);
                match op {
                    BinaryOp::Add => e.add(a, b),
                    BinaryOp::Sub => e.sub(a, b),
                    BinaryOp::Mul => e.mul(a, b),
                    BinaryOp::Div => e.div(a, b),
                    BinaryOp::Pow => {
                        if ty.is_vector() {
                            let mut out = None;
                            for l in 0..4u8 {
                                let x = e.b.ins().extractlane(a, l);
                                let y = e.b.ins().extractlane(b, l);
                                let call = e.b.ins().call(pow, &[x, y]);
                                let r = e.b.inst_results(call)[0];
                                out = Some(match out {
                                    None => e.b.ins().splat(types::F32X4, r),
                                    Some(v) => e.b.ins().insertlane(v, r, l),
                                });
                            }
                            out.ok_or_else(|| ClifError("pow".into()))?
                        } else {
                            let call = e.b.ins().call(pow, &[a, b]);
                            e.b.inst_results(call)[0]
                        }
                    }
                    BinaryOp::Min => e.min(a, b),
                    BinaryOp::Max => e.max(a, b),
                    BinaryOp::Lt => e.cmp_f(FloatCC::LessThan, a, b),
                    BinaryOp::Le => e.cmp_f(FloatCC::LessThanOrEqual, a, b),
                    BinaryOp::Gt => e.cmp_f(FloatCC::GreaterThan, a, b),
                    BinaryOp::Ge => e.cmp_f(FloatCC::GreaterThanOrEqual, a, b),
                    BinaryOp::Eq => e.cmp_f(FloatCC::Equal, a, b),
                    BinaryOp::Ne => e.cmp_f(FloatCC::NotEqual, a, b),
                    BinaryOp::And | BinaryOp::Or => {
                        let ta = e.truthy(a);
                        let tb = e.truthy(b);
                        e.and_or(ta, tb, *op == BinaryOp::Or)
                    }
                }
            }
            Op::Select(c, a, b) => {
                let (c, a, b) = (get(*c)?, get(*a)?, get(*b)?);
                let t = e.truthy(c);
                e.sel(t, a, b)
            }
            Op::Clamp(x, lo, hi) => {
                let (x, lo, hi) = (get(*x)?, get(*lo)?, get(*hi)?);
                let m = e.max(x, lo);
                e.min(m, hi)
            }
            Op::StopGrad(a) => get(*a)?,
            other => {
                return Err(ClifError(format!(
                    "node %{} ({other:?}) is not elementwise and has no source",
                    id.0
                )))
            }
        })
    }
}

/// Compiles a single elementwise unary routine as a loop `out[i] = op(in[i])`
/// (slots 0 and 1) — the accuracy tests' entry to the math routines.
pub fn compile_unary(op: UnaryOp) -> Result<Compiled, ClifError> {
    let mut prog = Program::new("unary");
    let span = rlobj_ir::SrcSpan::default();
    let x = prog.push(rlobj_ir::Node {
        op: Op::Const(0.0),
        elem: rlobj_ir::Elem::F32,
        space: rlobj_ir::SpaceId::TOK,
        span,
    });
    let y = prog.push(rlobj_ir::Node {
        op: Op::Unary(op, x),
        elem: rlobj_ir::Elem::F32,
        space: rlobj_ir::SpaceId::TOK,
        span,
    });
    let spec = LoopSpec {
        name: format!("{op:?}").to_lowercase(),
        body: vec![y],
        sources: vec![(x, Source::Stream(0))],
        sinks: vec![(y, 1)],
        accs: vec![],
        alias: vec![],
    };
    let mut jit = Jit::new(false)?;
    jit.add_loop(&prog, &spec)?;
    jit.finish()
}

/// Runs a loop from [`compile_unary`] over `input`.
pub fn run_unary(c: &Compiled, input: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; input.len()];
    let ptrs = [input.as_ptr() as *mut u8, out.as_mut_ptr() as *mut u8];
    let uni = [0f32; 1];
    let mut acc = [0f32; 1];
    if let Some(f) = c.fns.first() {
        // SAFETY: slot 0 holds `input.len()` readable floats, slot 1 as many writable ones.
        unsafe {
            f(
                input.len() as i64,
                ptrs.as_ptr(),
                uni.as_ptr(),
                acc.as_mut_ptr(),
            )
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp(min(max(x, -20), 20))` through the JIT, where `exp` takes its range-known path.
    fn clamped_exp(xs: &[f32]) -> Vec<f32> {
        let mut prog = Program::new("clamped_exp");
        let node = |op| rlobj_ir::Node {
            op,
            elem: rlobj_ir::Elem::F32,
            space: rlobj_ir::SpaceId::TOK,
            span: rlobj_ir::SrcSpan::default(),
        };
        let x = prog.push(node(Op::Const(0.0)));
        let lo = prog.push(node(Op::Const(-20.0)));
        let hi = prog.push(node(Op::Const(20.0)));
        let m = prog.push(node(Op::Binary(BinaryOp::Max, x, lo)));
        let c = prog.push(node(Op::Binary(BinaryOp::Min, m, hi)));
        let y = prog.push(node(Op::Unary(UnaryOp::Exp, c)));
        let spec = LoopSpec {
            name: "clamped_exp".into(),
            body: vec![lo, hi, m, c, y],
            sources: vec![(x, Source::Stream(0))],
            sinks: vec![(y, 1)],
            accs: vec![],
            alias: vec![],
        };
        let mut jit = Jit::new(false).expect("jit");
        jit.add_loop(&prog, &spec).expect("loop");
        run_unary(&jit.finish().expect("finish"), xs)
    }

    #[test]
    fn range_known_exp_matches_general_exp_bit_for_bit() {
        let mut xs: Vec<f32> = (0..4001).map(|i| -25.0 + i as f32 * 0.0125).collect();
        xs.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            19.999,
            -19.999,
        ]);
        xs.extend([1e-30, -1e-30, 20.0, -20.0, 20.001, -20.001, 7.0]);
        let clamped: Vec<f32> = xs
            .iter()
            .map(|&x| if x.is_nan() { x } else { x.clamp(-20.0, 20.0) })
            .collect();
        let general = run_unary(&compile_unary(UnaryOp::Exp).expect("exp"), &clamped);
        let fast = clamped_exp(&xs);
        assert_eq!(fast.len(), general.len());
        for ((x, f), g) in xs.iter().zip(&fast).zip(&general) {
            assert!(
                f.to_bits() == g.to_bits() || (f.is_nan() && g.is_nan()),
                "exp(clamp({x})): {f} vs {g}"
            );
        }
    }
}
