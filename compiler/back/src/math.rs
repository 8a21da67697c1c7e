//! Vectorisable f32 math routines emitted as Cranelift IR.
//!
//! Cranelift has no `exp`/`log` instructions, and a libm call per lane would stop the row
//! loops from vectorising, so each routine is a branch-free polynomial that works the same
//! on `F32` and `F32X4` values (selects instead of branches). Accuracy against libm is
//! tested over each domain in `tests/tests/cpu.rs` (figures in `docs/performance.md`).
//!
//! Bool values are kept as f32 `0.0`/`1.0` everywhere in the JIT, so every routine here
//! takes and returns floats of the type it was given.

#![allow(clippy::excessive_precision)] // musl constants are kept as published
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{
    types, Endianness, InstBuilder, InstructionData, MemFlagsData, Opcode, Type, Value,
};
use cranelift_frontend::FunctionBuilder;

/// Taylor coefficients of `e^r` on the reduced range `|r| ≤ ln2/2`, `1 + r + r²/2 + …`:
/// Horner's form takes them all, the FMA form pairs `[2..]` (Estrin).
const EXP_TAYLOR: [f32; 8] = [
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
];

/// An emitter for one value type (`F32` or `F32X4`).
pub struct Emit<'a, 'b> {
    pub b: &'a mut FunctionBuilder<'b>,
    pub ty: Type,
    /// The host has FMA: polynomials use fused multiply-adds (one rounding, half the
    /// latency). Without it Cranelift would lower `fma` to a libcall, so it stays off.
    pub fma: bool,
    /// Where vector constants come from inside a loop body (see [`ConstPool`]).
    pub pool: Option<(&'a ConstPool, Value)>,
    /// Pool loads made by this emitter (one IR node): a constant used twice within a node
    /// is loaded once, since its register is free again right after.
    loaded: Vec<(Type, u32, Value)>,
}

/// One 16-byte constant of a [`ConstPool`].
#[derive(Clone, Copy, Default)]
#[repr(C, align(16))]
pub struct V4(pub [u32; 4]);

/// Vector constants of one loop body, one slot per use.
///
/// Cranelift merges equal constants (GVN) and then keeps the merged value in a register
/// across the body; with 16 xmm registers the allocator spilled them (and the loop's
/// inputs) to the stack. Here every use loads its own slot relative to a base pointer that
/// the body reloads each iteration: the load cannot be merged or hoisted, it sits next to
/// its single user, and x64 folds it into that instruction's memory operand.
pub struct ConstPool {
    slots: std::cell::RefCell<(Box<[V4]>, usize)>,
}

impl ConstPool {
    /// Room for this many constants per loop; further ones fall back to plain constants.
    pub const CAPACITY: usize = 1024;

    pub fn new() -> Self {
        ConstPool {
            slots: std::cell::RefCell::new((vec![V4::default(); Self::CAPACITY].into(), 0)),
        }
    }

    /// The table's address (stable: the boxed slice never moves or grows).
    pub fn addr(&self) -> i64 {
        self.slots.borrow().0.as_ptr() as i64
    }

    /// The table, to keep alive as long as the code that reads it.
    pub fn into_table(self) -> Box<[V4]> {
        self.slots.into_inner().0
    }

    /// The bits in the slot at byte offset `off`.
    fn get(&self, off: i32) -> Option<u32> {
        let k = usize::try_from(off).ok()? / 16;
        let s = self.slots.borrow();
        (k < s.1).then(|| s.0[k].0[0])
    }

    /// Stores `bits` in a new slot; its byte offset, or `None` when the table is full.
    fn push(&self, bits: u32) -> Option<i32> {
        let mut s = self.slots.borrow_mut();
        let k = s.1;
        if k >= Self::CAPACITY {
            return None;
        }
        s.0[k] = V4([bits; 4]);
        s.1 = k + 1;
        i32::try_from(k * 16).ok()
    }
}

impl Default for ConstPool {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, 'b> Emit<'a, 'b> {
    pub fn new(b: &'a mut FunctionBuilder<'b>, ty: Type) -> Self {
        Emit {
            b,
            ty,
            fma: false,
            pool: None,
            loaded: Vec::new(),
        }
    }

    /// An emitter that uses FMA where `fma` is true (see [`Emit::fma`]).
    pub fn with_fma(b: &'a mut FunctionBuilder<'b>, ty: Type, fma: bool) -> Self {
        Emit {
            b,
            ty,
            fma,
            pool: None,
            loaded: Vec::new(),
        }
    }

    /// Vector constants from `pool` at `base`, a pointer the loop body loads each
    /// iteration (see [`ConstPool`]).
    pub fn with_pool(mut self, pool: Option<(&'a ConstPool, Value)>) -> Self {
        self.pool = pool;
        self
    }

    /// A splatted constant loaded from the pool, if this emitter has one with room.
    fn pooled(&mut self, ty: Type, bits: u32) -> Option<Value> {
        let (pool, base) = self.pool?;
        if !self.vector() {
            return None;
        }
        if let Some(&(_, _, v)) = self.loaded.iter().find(|l| l.0 == ty && l.1 == bits) {
            return Some(v);
        }
        let off = pool.push(bits)?;
        // `aligned` is true (16-byte slots in a 16-byte aligned table); where x64 can fold
        // the load into an operand (only a value used once, with single-use users), the
        // SSE-encoded forms need it.
        let flags = MemFlagsData::new()
            .with_notrap()
            .with_aligned()
            .with_readonly()
            .with_can_move();
        let v = self.b.ins().load(ty, flags, base, off);
        self.loaded.push((ty, bits, v));
        Some(v)
    }

    fn vector(&self) -> bool {
        self.ty.is_vector()
    }

    /// The integer type with the same lane layout.
    fn ity(&self) -> Type {
        if self.vector() {
            types::I32X4
        } else {
            types::I32
        }
    }

    /// A float constant of this emitter's type.
    pub fn c(&mut self, v: f32) -> Value {
        let ty = self.ty;
        if let Some(x) = self.pooled(ty, v.to_bits()) {
            return x;
        }
        let s = self.b.ins().f32const(v);
        if self.vector() {
            self.b.ins().splat(self.ty, s)
        } else {
            s
        }
    }

    fn ci(&mut self, v: i32) -> Value {
        if let Some(x) = self.pooled(types::I32X4, v as u32) {
            return x;
        }
        let s = self.b.ins().iconst(types::I32, i64::from(v));
        if self.vector() {
            self.b.ins().splat(types::I32X4, s)
        } else {
            s
        }
    }

    fn bits_of(&mut self, x: Value) -> Value {
        let ity = self.ity();
        self.b.ins().bitcast(
            ity,
            MemFlagsData::new().with_endianness(Endianness::Little),
            x,
        )
    }

    fn float_of(&mut self, x: Value) -> Value {
        let ty = self.ty;
        self.b.ins().bitcast(
            ty,
            MemFlagsData::new().with_endianness(Endianness::Little),
            x,
        )
    }

    /// A lane mask (vector) or `i8` flag (scalar) for `a cc b`.
    pub fn cmp(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        self.b.ins().fcmp(cc, a, b)
    }

    /// `cond ? a : b` for a condition made by [`Emit::cmp`].
    pub fn sel(&mut self, cond: Value, a: Value, b: Value) -> Value {
        if self.vector() {
            let ty = self.ty;
            let mask = if self.b.func.dfg.value_type(cond) == ty {
                cond
            } else {
                self.b.ins().bitcast(
                    ty,
                    MemFlagsData::new().with_endianness(Endianness::Little),
                    cond,
                )
            };
            // A zero arm is one `andps`/`andnps` instead of a blend (or three instructions
            // when the mask is not a comparison's): `m ? a : 0 == a & m`, bit for bit.
            if self.is_pos_zero(b) {
                return self.b.ins().band(mask, a);
            }
            if self.is_pos_zero(a) {
                return self.b.ins().band_not(b, mask);
            }
            self.b.ins().bitselect(mask, a, b)
        } else {
            self.b.ins().select(cond, a, b)
        }
    }

    fn is_pos_zero(&self, v: Value) -> bool {
        self.const_value(v).map(f32::to_bits) == Some(0)
    }

    /// `-x`. Vectors flip the sign bit with one `xorps` against a pool constant; Cranelift
    /// lowers `fneg` to three instructions that rebuild the sign mask in every iteration.
    pub fn neg(&mut self, x: Value) -> Value {
        if self.vector() {
            let m = self.c(-0.0);
            return self.b.ins().bxor(x, m);
        }
        self.b.ins().fneg(x)
    }

    /// A comparison as f32 `1.0`/`0.0` (the JIT's representation of bool).
    pub fn cmp_f(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        let c = self.cmp(cc, a, b);
        let one = self.c(1.0);
        let zero = self.c(0.0);
        self.sel(c, one, zero)
    }

    /// Whether an f32-encoded bool is true (`!= 0`), as a condition. A bool this emitter
    /// made from a condition (`cond ? 1.0 : 0.0`) gives that condition back, so comparisons,
    /// `and`/`or`/`not`, selects and masked accumulators never round-trip through floats.
    pub fn truthy(&mut self, x: Value) -> Value {
        if let Some(cond) = self.bool_cond(x) {
            return cond;
        }
        let zero = self.c(0.0);
        self.cmp(FloatCC::NotEqual, x, zero)
    }

    /// The condition `c` when `x` is `select(c, 1.0, 0.0)` (`bitselect` for vectors).
    fn bool_cond(&self, x: Value) -> Option<Value> {
        let dfg = &self.b.func.dfg;
        let inst = dfg.value_def(x).inst()?;
        match dfg.insts[inst] {
            InstructionData::Ternary {
                opcode: Opcode::Select | Opcode::Bitselect,
                args: [c, one, zero],
            } if self.const_value(one) == Some(1.0)
                && self.const_value(zero).map(f32::to_bits) == Some(0) =>
            {
                Some(c)
            }
            // `sel(m, 1.0, 0.0)` on vectors is `band(m, 1.0)`.
            InstructionData::Binary {
                opcode: Opcode::Band,
                args: [m, one],
            } if self.vector() && self.const_value(one) == Some(1.0) => Some(m),
            _ => None,
        }
    }

    /// The value of a float constant (`f32const`, or a splat of one).
    pub fn const_value(&self, v: Value) -> Option<f32> {
        let dfg = &self.b.func.dfg;
        let inst = dfg.value_def(v).inst()?;
        match dfg.insts[inst] {
            InstructionData::UnaryIeee32 {
                opcode: Opcode::F32const,
                imm,
            } => Some(f32::from_bits(imm.bits())),
            InstructionData::Unary {
                opcode: Opcode::Splat,
                arg,
            } => self.const_value(arg),
            InstructionData::Load {
                opcode: Opcode::Load,
                arg,
                offset,
                ..
            } => {
                let (pool, base) = self.pool?;
                if arg != base || dfg.value_type(v) != self.ty {
                    return None;
                }
                pool.get(i32::from(offset)).map(f32::from_bits)
            }
            _ => None,
        }
    }

    /// `cond_a && cond_b` / `cond_a || cond_b` of two conditions, as an f32 bool.
    pub fn and_or(&mut self, a: Value, b: Value, or: bool) -> Value {
        let (a, b) = (self.mask(a), self.mask(b));
        let m = if or {
            self.b.ins().bor(a, b)
        } else {
            self.b.ins().band(a, b)
        };
        let one = self.c(1.0);
        let zero = self.c(0.0);
        self.sel(m, one, zero)
    }

    /// A condition as a lane mask of this emitter's type (vectors); scalars are `i8` 0/1.
    fn mask(&mut self, cond: Value) -> Value {
        let ty = self.ty;
        if self.vector() && self.b.func.dfg.value_type(cond) != ty {
            self.b.ins().bitcast(
                ty,
                MemFlagsData::new().with_endianness(Endianness::Little),
                cond,
            )
        } else {
            cond
        }
    }

    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fadd(a, b)
    }
    pub fn sub(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fsub(a, b)
    }
    pub fn mul(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fmul(a, b)
    }
    pub fn div(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fdiv(a, b)
    }

    /// `a*b + c`: fused where the host has FMA (see [`Emit::fma`]).
    fn madd(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            return self.b.ins().fma(a, b, c);
        }
        let m = self.mul(a, b);
        self.add(m, c)
    }

    /// `e^r` for |r| <= ln2/2 as `1 + (r + r²·Q(r))`, with the degree-5 tail `Q` (the
    /// Taylor terms 1/2! … 1/7!) by Estrin's scheme. The dependency chain is about 5 operations
    /// deep instead of Horner's 7 (the loops are latency-bound: one iteration's chain is
    /// longer than the out-of-order window hides), and the leading `1 + …` is rounded once,
    /// at the end, so the error stays that of Horner's form.
    fn exp_poly_fma(&mut self, r: Value) -> Value {
        let tail = &EXP_TAYLOR[2..];
        let mut pairs = Vec::with_capacity(3);
        for k in 0..3 {
            let lo = self.c(tail[2 * k]);
            let hi = self.c(tail[2 * k + 1]);
            pairs.push(self.madd(hi, r, lo));
        }
        let r2 = self.mul(r, r);
        let q = self.madd(pairs[2], r2, pairs[1]);
        let q = self.madd(q, r2, pairs[0]);
        let t = self.madd(q, r2, r);
        let one = self.c(1.0);
        self.add(t, one)
    }

    /// Horner evaluation of `coef[0] + coef[1]*x + …`.
    fn poly(&mut self, x: Value, coef: &[f32]) -> Value {
        let mut acc = self.c(coef[coef.len() - 1]);
        for &k in coef.iter().rev().skip(1) {
            let kc = self.c(k);
            acc = self.madd(acc, x, kc);
        }
        acc
    }

    /// IR `min`: NaN if either operand is NaN, else the smaller (Cranelift `fmin` is
    /// IEEE minimum, which also orders -0 < +0; the interpreter compares, so we do too).
    /// `b < a ? b : a` is the shape x64 lowers to one `minps`; it already gives NaN for a
    /// NaN `a`, so the NaN check is left out where `b` is a constant that is not NaN.
    pub fn min(&mut self, a: Value, b: Value) -> Value {
        let lt = self.cmp(FloatCC::LessThan, b, a);
        let m = self.sel(lt, b, a);
        if self.const_value(b).is_some_and(|c| !c.is_nan()) {
            return m;
        }
        self.nan_either(a, b, m)
    }

    /// IR `max`, see [`Emit::min`] (`a < b ? b : a` lowers to one `maxps`).
    pub fn max(&mut self, a: Value, b: Value) -> Value {
        let lt = self.cmp(FloatCC::LessThan, a, b);
        let m = self.sel(lt, b, a);
        if self.const_value(b).is_some_and(|c| !c.is_nan()) {
            return m;
        }
        self.nan_either(a, b, m)
    }

    /// `m`, or NaN where `a` or `b` is NaN.
    fn nan_either(&mut self, a: Value, b: Value, m: Value) -> Value {
        let un = self.cmp(FloatCC::Unordered, a, b);
        if self.vector() {
            // `m | mask`: all-ones bits (a NaN) where unordered, `m` bit for bit elsewhere;
            // one `orps` instead of loading a NaN constant and blending.
            let mask = self.mask(un);
            return self.b.ins().bor(m, mask);
        }
        let nan = self.c(f32::NAN);
        self.sel(un, nan, m)
    }

    pub fn abs(&mut self, x: Value) -> Value {
        self.b.ins().fabs(x)
    }

    /// `e^x`: Cody–Waite reduction `x = n ln2 + r`, degree-7 Taylor on `|r| <= ln2/2`,
    /// and `2^n` built as two exponent-field products so subnormal results round once.
    pub fn exp(&mut self, x: Value) -> Value {
        // An argument already clamped into [-80, 80] (e.g. `exp(clamp(δ, ±20))`, the PPO
        // ratio) needs neither the clamps nor the split scale: 2^n is normal for |n| <= 116
        // and one exact product gives the same bits as two.
        let small = self
            .range(x)
            .is_some_and(|(lo, hi)| lo >= -80.0 && hi <= 80.0);
        let xc = if small {
            x
        } else {
            let hi = self.c(89.0);
            let lo = self.c(-104.0);
            // NaN passes both clamps (see `min`), like IEEE fmin/fmax but in one instruction.
            let xc = self.min(x, hi);
            self.max(xc, lo)
        };
        let log2e = self.c(std::f32::consts::LOG2_E);
        // Round to nearest-even by adding 1.5·2^23 (|t| <= 150 here): the sum's low mantissa
        // bits are the integer `n`, so no float→int conversion with saturation is needed.
        // With FMA the product is not rounded first (n is the nearest integer to the exact
        // x·log2e) and the reduction `x - n·ln2` is two fused steps.
        let magic = self.c(12_582_912.0);
        let tm = if self.fma {
            self.madd(xc, log2e, magic)
        } else {
            let t = self.mul(xc, log2e);
            self.add(t, magic)
        };
        let n = self.sub(tm, magic);
        let r = if self.fma {
            let m_hi = self.c(-0.693_145_751_953_125);
            let m_lo = self.c(-1.428_606_765_330_187e-6);
            let r = self.madd(n, m_hi, xc);
            self.madd(n, m_lo, r)
        } else {
            let ln2_hi = self.c(0.693_145_751_953_125);
            let ln2_lo = self.c(1.428_606_765_330_187e-6);
            let a = self.mul(n, ln2_hi);
            let r = self.sub(xc, a);
            let a = self.mul(n, ln2_lo);
            self.sub(r, a)
        };
        let p = if self.fma {
            self.exp_poly_fma(r)
        } else {
            self.poly(r, &EXP_TAYLOR)
        };
        let tb = self.bits_of(tm);
        let mb = self.ci(0x4b40_0000); // bits of 1.5·2^23
        let ni = self.b.ins().isub(tb, mb);
        if small {
            let s = self.pow2i(ni);
            return self.mul(p, s);
        }
        let n1 = self.b.ins().sshr_imm_s(ni, 1);
        let n2 = self.b.ins().isub(ni, n1);
        let s1 = self.pow2i(n1);
        let s2 = self.pow2i(n2);
        let p = self.mul(p, s1);
        self.mul(p, s2)
    }

    /// Bounds `(lo, hi)` of `x` when it is a [`Emit::min`]/[`Emit::max`] clamp by
    /// constants (NaN passes such a clamp, and stays NaN through `exp`).
    fn range(&self, x: Value) -> Option<(f32, f32)> {
        let dfg = &self.b.func.dfg;
        let inst = dfg.value_def(x).inst()?;
        let InstructionData::Ternary {
            opcode: Opcode::Select | Opcode::Bitselect,
            args: [m, b, a],
        } = dfg.insts[inst]
        else {
            return None;
        };
        let c = self.const_value(b).filter(|c| !c.is_nan())?;
        let mut m = m;
        if let Some(i) = dfg.value_def(m).inst() {
            if let InstructionData::LoadNoOffset {
                opcode: Opcode::Bitcast,
                arg,
                ..
            } = dfg.insts[i]
            {
                m = arg;
            }
        }
        let mi = dfg.value_def(m).inst()?;
        let InstructionData::FloatCompare {
            cond: FloatCC::LessThan,
            args: [p, q],
            ..
        } = dfg.insts[mi]
        else {
            return None;
        };
        let inner = self.range(a).unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        if p == b && q == a {
            // `b < a ? b : a`: min(a, c).
            Some((inner.0.min(c), inner.1.min(c)))
        } else if p == a && q == b {
            // `a < b ? b : a`: max(a, c).
            Some((inner.0.max(c), inner.1.max(c)))
        } else {
            None
        }
    }

    /// `2^n` for an integer `n` in the normal exponent range.
    fn pow2i(&mut self, n: Value) -> Value {
        let bias = self.ci(127);
        let e = self.b.ins().iadd(n, bias);
        let e = self.b.ins().ishl_imm_s(e, 23);
        self.float_of(e)
    }

    /// `ln x` (musl `logf`'s reduction and polynomial), subnormals pre-scaled by 2^25.
    pub fn log(&mut self, x: Value) -> Value {
        let tiny = self.c(f32::MIN_POSITIVE);
        let is_sub = self.cmp(FloatCC::LessThan, x, tiny);
        let scale = self.c(33_554_432.0); // 2^25
        let xs = self.mul(x, scale);
        let xr = self.sel(is_sub, xs, x);
        let m25 = self.c(-25.0);
        let z0 = self.c(0.0);
        let kadj = self.sel(is_sub, m25, z0);

        let bits = self.bits_of(xr);
        let off = self.ci(0x3f80_0000 - 0x3f35_04f3);
        let ix = self.b.ins().iadd(bits, off);
        let k = self.b.ins().sshr_imm_s(ix, 23);
        let bias = self.ci(0x7f);
        let k = self.b.ins().isub(k, bias);
        let mant = self.ci(0x007f_ffff);
        let ix = self.b.ins().band(ix, mant);
        let base = self.ci(0x3f35_04f3);
        let ix = self.b.ins().iadd(ix, base);
        let m = self.float_of(ix);
        let ty = self.ty;
        let dk = self.b.ins().fcvt_from_sint(ty, k);
        let dk = self.add(dk, kadj);

        let one = self.c(1.0);
        let two = self.c(2.0);
        let f = self.sub(m, one);
        let d = self.add(two, f);
        let s = self.div(f, d);
        let z = self.mul(s, s);
        let w = self.mul(z, z);
        let t1 = self.poly(w, &[0.400_009_72, 0.242_790_79]);
        let t1 = self.mul(w, t1);
        let t2 = self.poly(w, &[0.666_666_6, 0.284_987_87]);
        let t2 = self.mul(z, t2);
        let rr = self.add(t2, t1);
        let half = self.c(0.5);
        let hf = self.mul(half, f);
        let hfsq = self.mul(hf, f);
        let a = self.add(hfsq, rr);
        let a = self.mul(s, a);
        let l2lo = self.c(9.058_000_6e-6);
        let l2hi = self.c(0.693_138_1);
        let b1 = self.mul(dk, l2lo);
        let res = self.add(a, b1);
        let res = self.sub(res, hfsq);
        let res = self.add(res, f);
        let b2 = self.mul(dk, l2hi);
        let res = self.add(res, b2);

        // Special values: x < 0 or NaN → NaN, 0 → -inf, +inf → +inf.
        let zero = self.c(0.0);
        let inf = self.c(f32::INFINITY);
        let is_inf = self.cmp(FloatCC::Equal, x, inf);
        let res = self.sel(is_inf, inf, res);
        let is_zero = self.cmp(FloatCC::Equal, x, zero);
        let ninf = self.c(f32::NEG_INFINITY);
        let res = self.sel(is_zero, ninf, res);
        let bad = self.cmp(FloatCC::UnorderedOrLessThan, x, zero);
        let nan = self.c(f32::NAN);
        self.sel(bad, nan, res)
    }

    /// `ln(1+x)` by Goldberg's correction `log(u) * x / (u - 1)`, `u = 1 + x`.
    pub fn log1p(&mut self, x: Value) -> Value {
        let one = self.c(1.0);
        let u = self.add(one, x);
        let lu = self.log(u);
        let um1 = self.sub(u, one);
        let q = self.div(x, um1);
        let r = self.mul(lu, q);
        let same = self.cmp(FloatCC::Equal, u, one);
        let r = self.sel(same, x, r);
        let inf = self.c(f32::INFINITY);
        let is_inf = self.cmp(FloatCC::Equal, x, inf);
        self.sel(is_inf, inf, r)
    }

    /// `e^x - 1` by Kahan's correction `(u - 1) * x / log(u)`, `u = e^x`.
    pub fn expm1(&mut self, x: Value) -> Value {
        let one = self.c(1.0);
        let u = self.exp(x);
        let um1 = self.sub(u, one);
        let lu = self.log(u);
        let q = self.div(x, lu);
        let r = self.mul(um1, q);
        let same = self.cmp(FloatCC::Equal, u, one);
        let r = self.sel(same, x, r);
        let m1 = self.c(-1.0);
        let is_m1 = self.cmp(FloatCC::Equal, um1, m1);
        let r = self.sel(is_m1, m1, r);
        let big = self.c(88.0);
        let is_big = self.cmp(FloatCC::GreaterThan, x, big);
        self.sel(is_big, um1, r)
    }

    /// `tanh x = e/(e+2)` with `e = expm1(2|x|)`, sign restored; saturates past |x| = 9.1.
    pub fn tanh(&mut self, x: Value) -> Value {
        let ax = self.abs(x);
        let cap = self.c(9.1);
        let ax = self.min(ax, cap);
        let two = self.c(2.0);
        let a2 = self.mul(two, ax);
        let e = self.expm1(a2);
        let d = self.add(e, two);
        let t = self.div(e, d);
        self.copysign(t, x)
    }

    /// `|mag|` with the sign of `sign` (bit ops: x64 has no vector `fcopysign`).
    fn copysign(&mut self, mag: Value, sign: Value) -> Value {
        let m = self.bits_of(mag);
        let s = self.bits_of(sign);
        let lo = self.ci(0x7fff_ffff);
        let hi = self.ci(i32::MIN);
        let m = self.b.ins().band(m, lo);
        let s = self.b.ins().band(s, hi);
        let r = self.b.ins().bor(m, s);
        self.float_of(r)
    }

    /// `1/(1+e^-x)`, written with `e = e^-|x|` so neither tail loses precision.
    pub fn sigmoid(&mut self, x: Value) -> Value {
        let ax = self.abs(x);
        let nax = self.neg(ax);
        let e = self.exp(nax);
        let one = self.c(1.0);
        let d = self.add(one, e);
        let pos = self.div(one, d);
        let neg = self.div(e, d);
        let zero = self.c(0.0);
        let ge = self.cmp(FloatCC::GreaterThanOrEqual, x, zero);
        // NaN fails `>=` and gives e/(1+e) = NaN anyway.
        self.sel(ge, pos, neg)
    }

    /// `log(1 + e^x) = max(x, 0) + log1p(e^-|x|)`.
    pub fn softplus(&mut self, x: Value) -> Value {
        let ax = self.abs(x);
        let nax = self.neg(ax);
        let e = self.exp(nax);
        let l = self.log1p(e);
        let zero = self.c(0.0);
        let m = self.max(x, zero);
        self.add(m, l)
    }

    /// `log σ(x) = min(x, 0) - log1p(e^-|x|)`.
    pub fn log_sigmoid(&mut self, x: Value) -> Value {
        let ax = self.abs(x);
        let nax = self.neg(ax);
        let e = self.exp(nax);
        let l = self.log1p(e);
        let zero = self.c(0.0);
        let m = self.min(x, zero);
        self.sub(m, l)
    }

    /// `sign(x)`: -1, 0 or 1, NaN stays NaN.
    pub fn sign(&mut self, x: Value) -> Value {
        let zero = self.c(0.0);
        let one = self.c(1.0);
        let m1 = self.c(-1.0);
        let gt = self.cmp(FloatCC::GreaterThan, x, zero);
        let lt = self.cmp(FloatCC::LessThan, x, zero);
        let r = self.sel(lt, m1, zero);
        let r = self.sel(gt, one, r);
        let un = self.cmp(FloatCC::Unordered, x, x);
        self.sel(un, x, r)
    }
}
