//! Device helpers shared by every kernel (text, written once for both targets): NaN-aware
//! min/max, accumulators, the deterministic block reduction, finishers and rank order.

pub(super) const HELPERS: &str = r#"DEVICE float rl_min(float a, float b) { return (a != a || b != b) ? RL_NAN : (b < a ? b : a); }
DEVICE float rl_max(float a, float b) { return (a != a || b != b) ? RL_NAN : (b > a ? b : a); }
DEVICE float rl_sign(float x) { return x != x ? x : (x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f)); }
DEVICE float rl_sigmoid(float x) {
  if (x >= 0.0f) return 1.0f / (1.0f + exp(-x));
  float e = exp(x);
  return e / (1.0f + e);
}
DEVICE float rl_softplus(float x) {
  if (x != x) return x;
  return (x > 0.0f ? x : 0.0f) + log1p(exp(-fabs(x)));
}
/* Accumulators (n, a, b): op 0 sum, 1 max, 2 min, 3 mean/M2 (Welford), 4 logsumexp. */
DEVICE void rl_acc_add(int op, float* n, float* a, float* b, float x) {
  if (op == 0) { *a += x; }
  else if (op == 1) { *a = (*n == 0.0f) ? x : rl_max(*a, x); }
  else if (op == 2) { *a = (*n == 0.0f) ? x : rl_min(*a, x); }
  else if (op == 3) { float d = x - *a; *a += d / (*n + 1.0f); *b += d * (x - *a); }
  else if (*n == 0.0f) { *a = x; *b = 1.0f; }
  else {
    float m = rl_max(*a, x);
    *b = *b * (*a == m ? 1.0f : exp(*a - m)) + (x == m ? 1.0f : exp(x - m));
    *a = m;
  }
  *n += 1.0f;
}
DEVICE void rl_acc_combine(int op, float* n, float* a, float* b, float n2, float a2, float b2) {
  if (n2 == 0.0f) return;
  if (*n == 0.0f) { *n = n2; *a = a2; *b = b2; return; }
  if (op == 0) { *a += a2; }
  else if (op == 1) { *a = rl_max(*a, a2); }
  else if (op == 2) { *a = rl_min(*a, a2); }
  else if (op == 3) {
    float nt = *n + n2;
    float d = a2 - *a;
    *a += d * (n2 / nt);
    *b += b2 + d * d * (*n * n2 / nt);
  } else {
    float m = rl_max(*a, a2);
    *b = *b * (*a == m ? 1.0f : exp(*a - m)) + b2 * (a2 == m ? 1.0f : exp(a2 - m));
    *a = m;
  }
  *n += n2;
}
/* Deterministic block reduction; the result is left in red[0], red[RL_BLOCK],
 * red[2 * RL_BLOCK]. One fixed tree on every target: lane i folds lane i + s for
 * s = 16, 8, 4, 2, 1 inside each group of 32 threads, then the group results are folded
 * the same way (empty accumulators are exact identities, so the shape of the tree never
 * depends on timing). CUDA walks the tree with warp shuffles (RL_WARP_SHUFFLE), OpenCL
 * with the same steps in __local memory. Outputs go through shared memory, not pointers
 * to private variables: CPU OpenCL compilers do not keep address-taken privates across
 * barriers reliably. */
DEVICE void rl_block_reduce(int op, LOCAL_PTR float* red, float n, float a, float b) {
  const int tid = LOCAL_ID;
#if RL_WARP_SHUFFLE
  const int lane = tid & 31, nw = (LOCAL_SIZE + 31) >> 5;
  for (int s = 16; s > 0; s >>= 1) {
    float n2 = RL_SHFL_DOWN(n, s), a2 = RL_SHFL_DOWN(a, s), b2 = RL_SHFL_DOWN(b, s);
    if (lane < s) rl_acc_combine(op, &n, &a, &b, n2, a2, b2);
  }
  if (lane == 0) { red[tid >> 5] = n; red[RL_BLOCK + (tid >> 5)] = a; red[2 * RL_BLOCK + (tid >> 5)] = b; }
  BARRIER();
  if (tid < 32) {
    n = tid < nw ? red[tid] : 0.0f; a = tid < nw ? red[RL_BLOCK + tid] : 0.0f; b = tid < nw ? red[2 * RL_BLOCK + tid] : 0.0f;
    for (int s = 16; s > 0; s >>= 1) {
      float n2 = RL_SHFL_DOWN(n, s), a2 = RL_SHFL_DOWN(a, s), b2 = RL_SHFL_DOWN(b, s);
      if (lane < s) rl_acc_combine(op, &n, &a, &b, n2, a2, b2);
    }
    if (tid == 0) { red[0] = n; red[RL_BLOCK] = a; red[2 * RL_BLOCK] = b; }
  }
  BARRIER();
#else
  red[tid] = n; red[RL_BLOCK + tid] = a; red[2 * RL_BLOCK + tid] = b;
  BARRIER();
  for (int s = 16; s > 0; s >>= 1) {
    if ((tid & 31) < s && tid + s < LOCAL_SIZE) {
      float n1 = red[tid], a1 = red[RL_BLOCK + tid], b1 = red[2 * RL_BLOCK + tid];
      rl_acc_combine(op, &n1, &a1, &b1, red[tid + s], red[RL_BLOCK + tid + s], red[2 * RL_BLOCK + tid + s]);
      red[tid] = n1; red[RL_BLOCK + tid] = a1; red[2 * RL_BLOCK + tid] = b1;
    }
    BARRIER();
  }
  for (int s = RL_BLOCK / 64; s > 0; s >>= 1) {
    const int i = tid * 32, j = (tid + s) * 32;
    if (tid < s && j < LOCAL_SIZE) {
      float n1 = red[i], a1 = red[RL_BLOCK + i], b1 = red[2 * RL_BLOCK + i];
      rl_acc_combine(op, &n1, &a1, &b1, red[j], red[RL_BLOCK + j], red[2 * RL_BLOCK + j]);
      red[i] = n1; red[RL_BLOCK + i] = a1; red[2 * RL_BLOCK + i] = b1;
    }
    BARRIER();
  }
#endif
}
#define RL_REDUCE(op, n, a, b) { rl_block_reduce(op, red, n, a, b); n = red[0]; a = red[RL_BLOCK]; b = red[2 * RL_BLOCK]; BARRIER(); }
/* kind: 0 sum, 1 mean, 2 max, 3 min, 4 count, 5 var, 6 std, 7 logsumexp. */
DEVICE float rl_finish(int kind, float n, float a, float b, float ddof, float empty) {
  if (n == 0.0f) return empty;
  if (kind == 1) return a / n;
  if (kind == 4) return n;
  if (kind == 5 || kind == 6) {
    if (n - ddof <= 0.0f) return empty;
    float v = b / (n - ddof);
    return kind == 6 ? sqrt(v) : v;
  }
  if (kind == 7) return a + log(b);
  return a;
}
/* Ascending order of rlobj_ir::scalar::order_key: NaN above +inf, ties by position. */
DEVICE int rl_before(float xj, int j, float xi, int i) {
  int nj = xj != xj, ni = xi != xi;
  if (nj || ni) return (nj && ni) ? (j < i) : ni;
  return (xj < xi) || (xj == xi && j < i);
}
/* Descending by value (NaN largest), ties by position. */
DEVICE int rl_before_desc(float xj, int j, float xi, int i) {
  int nj = xj != xj, ni = xi != xi;
  if (nj || ni) return (nj && ni) ? (j < i) : nj;
  return (xj > xi) || (xj == xi && j < i);
}
"#;
