//===- pointwise.cu - embedding, rms_norm, rope, swiglu, add, transpose, copy, accumulate ===//
//
// CUDA twins of runtime/cpu/{embedding,norm,rope,swiglu,elementwise}.cpp: same operands,
// attributes, checks and error messages (runtime/cpu/kernels.h is the contract). Every kernel
// is templated on its element types (f32 or bf16 storage, f32 math; runtime/cuda/bf16.cuh):
// loads widen, stores round once. Mixes of f32 and bf16 operands that a kernel does not
// instantiate go through run_widened (the f32 kernel on widened copies).
// Every kernel runs on stream(), asynchronously, except embedding_fwd, which waits for its id
// check so a bad id is reported (with its value and position) before anything is written
// (inside a CUDA graph the check is deferred to after the replay: graph.cu).
//
// Rounding: products and sums that the CPU evaluates as separate fp32 operations (it is built
// with -ffp-contract=off) use __fmul_rn / __fadd_rn here, so nvcc cannot fuse them into an FMA
// and the results match the CPU element for element, up to the device's expf (2 ulp).
// RoPE's cos / sin table is computed on the host with the CPU kernel's exact code and cached.
// Packing: rope's optional position_ids (B, T) pick the table row of each token; they are checked
// to lie in [0, T) like embedding_fwd's ids (a check kernel, then the host reads its error word:
// at once, or after each replay of a CUDA graph), and the rotation reads row 0 for a bad one so
// nothing is read out of bounds.
//
//===----------------------------------------------------------------------===//
#include <cmath>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/comm/comm.h"
#include "runtime/cuda/bf16.cuh"
#include "runtime/cuda/common.cuh"
#include "runtime/cuda/device_util.cuh"
#include "runtime/cuda/kernels_impl.h"

namespace parallora::rt::cuda::impl {

using util::Check;
using util::kEltThreads;
using util::kRowThreads;
using util::shape_str;

namespace {

//===--------------------------------------------------------------------===//
// embedding_fwd
//===--------------------------------------------------------------------===//

// Records the smallest position whose id is outside [0, vocab).
__global__ void embedding_check_kernel(const int32_t *ids, int64_t n, int64_t vocab,
                                       unsigned long long *first_bad) {
  PARALLORA_GRID_LOOP(i, n) {
    const int64_t id = ids[i];
    if (id < 0 || id >= vocab) atomicMin(first_bad, (unsigned long long)i);
  }
}

// y[i, :] = table[ids[i] - lo, :], or zeros when the id is in another shard.
template <typename TT, typename TY>
__global__ void embedding_gather_kernel(const int32_t *ids, const TT *table, TY *y,
                                        int64_t n, int64_t D, int64_t lo, int64_t V) {
  PARALLORA_GRID_LOOP(k, n * D) {
    const int64_t i = k / D, j = k - i * D;
    const int64_t row = int64_t(ids[i]) - lo;
    st(y, k, (row >= 0 && row < V) ? ld(table, row * D + j) : 0.0f);
  }
}

thread_local util::ManagedScratch g_embed_err;

//===--------------------------------------------------------------------===//
// rms_norm
//===--------------------------------------------------------------------===//

// One block per row. Sum of squares in double: thread j sums columns j, j + 256, .. in order,
// then block_reduce's fixed tree. y = w * (x * r) with r rounded to float (the CPU's order).
template <typename T>
__global__ void rms_norm_fwd_kernel(const T *x, const T *w, T *y, int64_t D, double eps) {
  const T *xr = x + int64_t(blockIdx.x) * D;
  T *yr = y + int64_t(blockIdx.x) * D;
  double ss = 0.0;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const double xv = double(ld(xr, j));
    ss += xv * xv;
  }
  ss = util::block_reduce(ss, util::SumOp(), 0.0);
  const float r = float(1.0 / sqrt(ss / double(D) + eps));
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
    st(yr, j, __fmul_rn(ld(w, j), __fmul_rn(ld(xr, j), r)));
}

// dx_j = r (dy_j w_j) - r^3 / D * x_j * sum_i (dy_i w_i x_i), all in double like the CPU.
template <typename T>
__global__ void rms_norm_bwd_kernel(const T *dy, const T *x, const T *w, T *dx, int64_t D,
                                    double eps) {
  const int64_t off = int64_t(blockIdx.x) * D;
  const T *xr = x + off, *dyr = dy + off;
  T *dxr = dx + off;
  double ss = 0.0, dot = 0.0;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const double xv = double(ld(xr, j));
    ss += xv * xv;
    dot += double(ld(dyr, j)) * double(ld(w, j)) * xv;
  }
  ss = util::block_reduce(ss, util::SumOp(), 0.0);
  dot = util::block_reduce(dot, util::SumOp(), 0.0);
  const double r = 1.0 / sqrt(ss / double(D) + eps);
  const double coef = r * r * r * dot / double(D);
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
    st(dxr, j, float(__dadd_rn(__dmul_rn(r, double(ld(dyr, j)) * double(ld(w, j))),
                               -__dmul_rn(coef, double(ld(xr, j))))));
}

// Shared checks and launch of rms_norm_fwd / _bwd are in the entry points below.

//===--------------------------------------------------------------------===//
// rope
//===--------------------------------------------------------------------===//

// The cos / sin table (T, Dh/2) of one parameter set, in managed memory. Built on the host by
// rope_cos_sin (runtime/kernel_check.h, also used by the CPU kernel) so the angles round identically;
// cached per thread, never overwritten (a queued kernel may still read an entry).
struct RopeKey {
  int64_t T, Dh;
  double theta;
  bool llama3;
  double factor, low, high, old_ctx;
  bool operator<(const RopeKey &o) const {
    return std::tie(T, Dh, theta, llama3, factor, low, high, old_ctx) <
           std::tie(o.T, o.Dh, o.theta, o.llama3, o.factor, o.low, o.high, o.old_ctx);
  }
};
struct RopeTable {
  float *cos = nullptr, *sin = nullptr;  // managed, T * half each
};
thread_local std::map<RopeKey, RopeTable> g_rope_tables;
constexpr size_t kMaxRopeTables = 32;

// Validates the rope attrs (runtime/kernel_check, as the CPU kernel) and returns the cached table.
bool rope_table(const KernelCall &c, Check &ck, int64_t T, int64_t Dh, RopeTable *out) {
  RopeParams p;
  if (!parse_rope_params(c, ck, &p)) return false;
  const RopeKey key{T, Dh, p.theta, p.llama3, p.factor, p.low, p.high, p.old_ctx};
  auto it = g_rope_tables.find(key);
  if (it != g_rope_tables.end()) {
    *out = it->second;
    return true;
  }
  // A new table is built on the host into new managed memory: not while capturing a CUDA graph
  // (graph.cuh; the warm-up run built it).
  if (graph::capturing()) return ck.expect(false, graph::refuse_capture("a new RoPE table").message());
  if (g_rope_tables.size() >= kMaxRopeTables) {  // unusual (many distinct T): start over
    if (Status s = sync_stream(); !s) return ck.expect(false, s.message());
    for (auto &kv : g_rope_tables) {
      for (float *t : {kv.second.cos, kv.second.sin}) {
        if (graph::graphs_exist())
          graph::retire(t, true);  // a captured graph may read it
        else
          cudaFree(t);
      }
    }
    g_rope_tables.clear();
  }

  const int64_t half = Dh / 2;
  RopeTable tab;
  const size_t count = size_t(T * half) > 0 ? size_t(T * half) : 1;
  if (Status s = cuda_status(cudaMallocManaged(&tab.cos, count * sizeof(float)),
                             "cudaMallocManaged (rope table)");
      !s)
    return ck.expect(false, s.message());
  if (Status s = cuda_status(cudaMallocManaged(&tab.sin, count * sizeof(float)),
                             "cudaMallocManaged (rope table)");
      !s) {
    cudaFree(tab.cos);
    return ck.expect(false, s.message());
  }
  rope_cos_sin(p, T, Dh, tab.cos, tab.sin);  // the CPU kernel's numbers, on the host
  g_rope_tables[key] = tab;
  *out = tab;
  return true;
}

// Records the smallest index of position_ids whose value is outside [0, T).
__global__ void rope_position_check_kernel(const int32_t *pos, int64_t n, int64_t T_,
                                           unsigned long long *first_bad) {
  PARALLORA_GRID_LOOP(i, n) {
    if (pos[i] < 0 || pos[i] >= T_) atomicMin(first_bad, (unsigned long long)i);
  }
}

thread_local util::ManagedScratch g_rope_err;

// One thread per (row, i < half): the pair (x[i], x[i + half]) of row = ((b*H + h)*T + t), at
// position t, or pos[b*T + t] with packing (a bad one, already reported, reads row 0).
//   fwd: y1 = x1 c - x2 s, y2 = x2 c + x1 s;  bwd: dx1 = dy1 c + dy2 s, dx2 = dy2 c - dy1 s.
template <typename T>
__global__ void rope_kernel(const T *x, T *y, const float *cs, const float *sn, int64_t rows,
                            int64_t T_, int64_t half, bool backward, const int32_t *pos, int64_t H) {
  PARALLORA_GRID_LOOP(k, rows * half) {
    const int64_t row = k / half, i = k - row * half;
    int64_t t = row % T_;
    if (pos) {
      const int64_t p = pos[(row / (H * T_)) * T_ + t];
      t = p >= 0 && p < T_ ? p : 0;
    }
    const T *xr = x + row * 2 * half;
    T *yr = y + row * 2 * half;
    const float x1 = ld(xr, i), x2 = ld(xr, i + half), co = cs[t * half + i], si = sn[t * half + i];
    if (!backward) {
      st(yr, i, __fadd_rn(__fmul_rn(x1, co), __fmul_rn(-x2, si)));
      st(yr, i + half, __fadd_rn(__fmul_rn(x2, co), __fmul_rn(x1, si)));
    } else {
      st(yr, i, __fadd_rn(__fmul_rn(x1, co), __fmul_rn(x2, si)));
      st(yr, i + half, __fadd_rn(__fmul_rn(x2, co), __fmul_rn(-x1, si)));
    }
  }
}

// position_ids in [0, T), checked on the device; the error names the first bad one (as the CPU
// kernel's does). Inside a CUDA graph capture the host check runs after each replay.
Status check_positions(KernelCall &c, Check &ck, const char *name, const int32_t *pos, int64_t B, int64_t T) {
  const int64_t n = B * T;
  const bool deferred = graph::capturing();
  StatusOr<unsigned long long *> err = deferred ? graph::check_word() : g_rope_err.get<unsigned long long>(1);
  if (!err) return ck.error(err.message());
  if (Status s = cuda_status(cudaMemsetAsync(*err, 0xff, sizeof(unsigned long long), stream()), "cudaMemsetAsync");
      !s)
    return ck.error(s.message());
  rope_position_check_kernel<<<blocks_for(n, kEltThreads), kEltThreads, 0, stream()>>>(pos, n, T, *err);
  if (Status s = check_launch("rope_position_check_kernel"); !s) return ck.error(s.message());
  if (deferred) {
    const plan::Instr *instr = c.instr;
    unsigned long long *word = *err;
    graph::defer_check([instr, name, pos, word, T]() -> Status {
      if (*word == util::kNoError) return Status::ok();
      KernelCall call;
      call.instr = instr;
      const int64_t i = int64_t(*word);
      return util::fail(call, name, rope_position_error(pos[i], i / T, i % T, T));
    });
    return Status::ok();
  }
  if (Status s = sync_stream(); !s) return ck.error(s.message());
  const unsigned long long bad = **err;
  if (bad != util::kNoError) return ck.error(rope_position_error(pos[bad], int64_t(bad) / T, int64_t(bad) % T, T));
  return Status::ok();
}

Status rope(KernelCall &c, const char *name, bool backward) {
  Check ck(c, name);
  RopeArgs ra;
  if (!parse_rope_args(c, ck, backward, /*bf16_ok=*/true, &ra)) return ck.status();
  const Tensor &x = c.in[0], &y = c.out[0];
  const int64_t B = ra.B, H = ra.H, T = ra.T, Dh = ra.Dh;
  RopeTable tab;
  if (!rope_table(c, ck, T, Dh, &tab)) return ck.status();
  const int64_t half = Dh / 2, rows = B * H * T;
  if (rows * half == 0) return Status::ok();
  const int32_t *pos = ra.positions ? c.in[1].i32() : nullptr;
  if (pos && float_kind({&x, &y}) != FloatKind::Mixed)
    if (Status s = check_positions(c, ck, name, pos, B, T); !s) return s;
  switch (float_kind({&x, &y})) {
  case FloatKind::F32:
    rope_kernel<<<blocks_for(rows * half, kEltThreads), kEltThreads, 0, stream()>>>(
        x.f32(), y.f32(), tab.cos, tab.sin, rows, T, half, backward, pos, H);
    break;
  case FloatKind::BF16:
    rope_kernel<<<blocks_for(rows * half, kEltThreads), kEltThreads, 0, stream()>>>(
        static_cast<const bf16_t *>(x.data), static_cast<bf16_t *>(y.data), tab.cos, tab.sin, rows, T,
        half, backward, pos, H);
    break;
  case FloatKind::Mixed:
    return run_widened(c, backward ? rope_bwd : rope_fwd);
  }
  return check_launch(name);
}

//===--------------------------------------------------------------------===//
// swiglu, add, accumulate
//===--------------------------------------------------------------------===//

// y = silu(g) * u, silu(g) = g / (1 + exp(-g)) (torch's formula).
template <typename T>
__global__ void swiglu_fwd_kernel(const T *g, const T *u, T *y, int64_t n) {
  PARALLORA_GRID_LOOP(i, n) {
    const float x = ld(g, i);
    st(y, i, __fmul_rn(__fdiv_rn(x, __fadd_rn(1.0f, expf(-x))), ld(u, i)));
  }
}

// dup = dy * silu(g); dgate = dy * up * (sig * (1 + g (1 - sig))), left to right like the CPU.
template <typename T>
__global__ void swiglu_bwd_kernel(const T *dy, const T *g, const T *u, T *dg, T *du, int64_t n) {
  PARALLORA_GRID_LOOP(i, n) {
    const float x = ld(g, i), sig = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x)));
    const float d = ld(dy, i);
    st(du, i, __fmul_rn(d, __fmul_rn(x, sig)));
    const float inner = __fmul_rn(sig, __fadd_rn(1.0f, __fmul_rn(x, __fsub_rn(1.0f, sig))));
    st(dg, i, __fmul_rn(__fmul_rn(d, ld(u, i)), inner));
  }
}

template <typename TA, typename TB, typename TY>
__global__ void add_kernel(const TA *a, const TB *b, TY *y, int64_t n) {
  PARALLORA_GRID_LOOP(i, n) st(y, i, __fadd_rn(ld(a, i), ld(b, i)));
}

template <typename TX, typename TA>
__global__ void accumulate_kernel(const TX *x, TA *acc, int64_t n) {
  PARALLORA_GRID_LOOP(i, n) st(acc, i, __fadd_rn(ld(acc, i), ld(x, i)));
}

/// f32 or bf16 pointer of a float tensor (the kernels' template argument).
template <typename T> T *as(const Tensor &t) { return static_cast<T *>(t.data); }

//===--------------------------------------------------------------------===//
// transpose
//===--------------------------------------------------------------------===//

// y's dims after dropping size-1 dims and merging neighbours that are contiguous in x.
constexpr int kMaxTransposeRank = 12;
struct TransposeDims {
  int rank = 0;
  int64_t size[kMaxTransposeRank];     // y's (merged) dims
  int64_t xstride[kMaxTransposeRank];  // stride in x of each
};

// One thread per y element (coalesced writes); the x offset from y's index, innermost first.
template <typename E>
__global__ void transpose_kernel(const E *x, E *y, int64_t n, TransposeDims d) {
  PARALLORA_GRID_LOOP(k, n) {
    int64_t rem = k, off = 0;
    for (int i = d.rank - 1; i >= 0; --i) {
      const int64_t idx = rem % d.size[i];
      rem /= d.size[i];
      off += idx * d.xstride[i];
    }
    y[k] = x[off];
  }
}

} // namespace

//===--------------------------------------------------------------------===//
// Entry points
//===--------------------------------------------------------------------===//

// ids (B,T) i32, table (V,D) -> y (B,T,D); vocab_group: table is shard c of the vocabulary,
// other shards' ids give zero rows. A bad id is found on the device, then reported here.
Status embedding_fwd(KernelCall &c) {
  Check ck(c, "embedding_fwd");
  EmbeddingArgs ea;  // shapes, and this table's first row and the whole vocabulary's size
  if (!parse_embedding_args(c, ck, /*bf16_ok=*/true, &ea)) return ck.status();
  const Tensor &ids = c.in[0], &table = c.in[1], &y = c.out[0];
  const int64_t B = ea.B, T = ea.T, V = ea.V, D = ea.D;
  const int64_t lo = ea.vocab.lo, vocab = ea.vocab.vocab;
  const int64_t n = B * T;
  if (n == 0) return Status::ok();

  // The id check's error word. Captured into a CUDA graph (graph.cuh), the word belongs to the
  // graph and the host check runs after every replay instead of here (the gather below writes
  // zero rows for out-of-range ids, so nothing is read out of bounds meanwhile).
  const bool deferred = graph::capturing();
  StatusOr<unsigned long long *> err =
      deferred ? graph::check_word() : g_embed_err.get<unsigned long long>(1);
  if (!err) return ck.error(err.message());
  if (Status s = cuda_status(cudaMemsetAsync(*err, 0xff, sizeof(unsigned long long), stream()),
                             "cudaMemsetAsync");
      !s)
    return ck.error(s.message());
  embedding_check_kernel<<<blocks_for(n, kEltThreads), kEltThreads, 0, stream()>>>(
      ids.i32(), n, vocab, *err);
  if (Status s = check_launch("embedding_check_kernel"); !s) return ck.error(s.message());
  auto bad_id = [](const int32_t *id, unsigned long long bad, int64_t T_, int64_t vocab_) {
    const int64_t i = int64_t(bad);
    return "token id " + std::to_string(id[i]) + " at position (b=" + std::to_string(i / T_) +
           ", t=" + std::to_string(i % T_) + ") is outside the vocabulary [0, " +
           std::to_string(vocab_) + ")";
  };
  if (deferred) {
    const plan::Instr *instr = c.instr;
    const int32_t *idp = ids.i32();
    unsigned long long *word = *err;
    graph::defer_check([instr, idp, word, T, vocab, bad_id]() -> Status {
      if (*word == util::kNoError) return Status::ok();
      KernelCall call;
      call.instr = instr;
      return util::fail(call, "embedding_fwd", bad_id(idp, *word, T, vocab));
    });
  } else {
    if (Status s = sync_stream(); !s) return ck.error(s.message());
    const unsigned long long bad = **err;
    if (bad != util::kNoError) return ck.error(bad_id(ids.i32(), bad, T, vocab));
  }
  const int grid = blocks_for(n * D, kEltThreads);
  if (is_bf16(table) && is_bf16(y))
    embedding_gather_kernel<<<grid, kEltThreads, 0, stream()>>>(ids.i32(), as<bf16_t>(table), as<bf16_t>(y),
                                                               n, D, lo, V);
  else if (is_bf16(table))
    embedding_gather_kernel<<<grid, kEltThreads, 0, stream()>>>(ids.i32(), as<bf16_t>(table), y.f32(), n, D,
                                                               lo, V);
  else if (is_bf16(y))
    embedding_gather_kernel<<<grid, kEltThreads, 0, stream()>>>(ids.i32(), table.f32(), as<bf16_t>(y), n, D,
                                                               lo, V);
  else
    embedding_gather_kernel<<<grid, kEltThreads, 0, stream()>>>(ids.i32(), table.f32(), y.f32(), n, D, lo, V);
  return check_launch("embedding_gather_kernel");
}

Status rms_norm_fwd(KernelCall &c) {
  Check ck(c, "rms_norm_fwd");
  RmsNormArgs args;  // runtime/kernel_check: the CPU kernel's checks and messages
  if (!parse_rms_norm_args(c, ck, /*backward=*/false, /*bf16_ok=*/true, &args)) return ck.status();
  const Tensor &x = c.in[0], &w = c.in[1], &y = c.out[0];
  const int64_t D = args.D, M = args.M;
  if (!ck.expect(M <= 0x7fffffff, "x has too many rows for one grid: " + std::to_string(M)))
    return ck.status();
  if (M == 0) return Status::ok();
  const double eps = args.eps;
  switch (float_kind({&x, &w, &y})) {
  case FloatKind::F32:
    rms_norm_fwd_kernel<<<unsigned(M), kRowThreads, 0, stream()>>>(x.f32(), w.f32(), y.f32(), D, eps);
    break;
  case FloatKind::BF16:
    rms_norm_fwd_kernel<<<unsigned(M), kRowThreads, 0, stream()>>>(as<bf16_t>(x), as<bf16_t>(w),
                                                                    as<bf16_t>(y), D, eps);
    break;
  case FloatKind::Mixed:
    return run_widened(c, rms_norm_fwd);
  }
  return check_launch("rms_norm_fwd");
}

Status rms_norm_bwd(KernelCall &c) {
  Check ck(c, "rms_norm_bwd");
  RmsNormArgs args;
  if (!parse_rms_norm_args(c, ck, /*backward=*/true, /*bf16_ok=*/true, &args)) return ck.status();
  const Tensor &dy = c.in[0], &x = c.in[1], &w = c.in[2], &dx = c.out[0];
  const int64_t D = args.D, M = args.M;
  if (!ck.expect(M <= 0x7fffffff, "x has too many rows for one grid: " + std::to_string(M)))
    return ck.status();
  if (M == 0) return Status::ok();
  const double eps = args.eps;
  switch (float_kind({&dy, &x, &w, &dx})) {
  case FloatKind::F32:
    rms_norm_bwd_kernel<<<unsigned(M), kRowThreads, 0, stream()>>>(dy.f32(), x.f32(), w.f32(), dx.f32(), D,
                                                                    eps);
    break;
  case FloatKind::BF16:
    rms_norm_bwd_kernel<<<unsigned(M), kRowThreads, 0, stream()>>>(as<bf16_t>(dy), as<bf16_t>(x),
                                                                    as<bf16_t>(w), as<bf16_t>(dx), D, eps);
    break;
  case FloatKind::Mixed:
    return run_widened(c, rms_norm_bwd);
  }
  return check_launch("rms_norm_bwd");
}

Status rope_fwd(KernelCall &c) { return rope(c, "rope_fwd", false); }
Status rope_bwd(KernelCall &c) { return rope(c, "rope_bwd", true); }

Status swiglu_fwd(KernelCall &c) {
  Check ck(c, "swiglu_fwd");
  if (!parse_swiglu_args(c, ck, /*backward=*/false, /*bf16_ok=*/true)) return ck.status();
  const Tensor &g = c.in[0], &u = c.in[1], &y = c.out[0];
  const int64_t n = g.numel();
  if (n == 0) return Status::ok();
  const int grid = blocks_for(n, kEltThreads);
  switch (float_kind({&g, &u, &y})) {
  case FloatKind::F32:
    swiglu_fwd_kernel<<<grid, kEltThreads, 0, stream()>>>(g.f32(), u.f32(), y.f32(), n);
    break;
  case FloatKind::BF16:
    swiglu_fwd_kernel<<<grid, kEltThreads, 0, stream()>>>(as<bf16_t>(g), as<bf16_t>(u), as<bf16_t>(y), n);
    break;
  case FloatKind::Mixed:
    return run_widened(c, swiglu_fwd);
  }
  return check_launch("swiglu_fwd");
}

Status swiglu_bwd(KernelCall &c) {
  Check ck(c, "swiglu_bwd");
  if (!parse_swiglu_args(c, ck, /*backward=*/true, /*bf16_ok=*/true)) return ck.status();
  const Tensor &dy = c.in[0], &g = c.in[1], &u = c.in[2], &dg = c.out[0], &du = c.out[1];
  const int64_t n = g.numel();
  if (n == 0) return Status::ok();
  const int grid = blocks_for(n, kEltThreads);
  switch (float_kind({&dy, &g, &u, &dg, &du})) {
  case FloatKind::F32:
    swiglu_bwd_kernel<<<grid, kEltThreads, 0, stream()>>>(dy.f32(), g.f32(), u.f32(), dg.f32(), du.f32(), n);
    break;
  case FloatKind::BF16:
    swiglu_bwd_kernel<<<grid, kEltThreads, 0, stream()>>>(as<bf16_t>(dy), as<bf16_t>(g), as<bf16_t>(u),
                                                          as<bf16_t>(dg), as<bf16_t>(du), n);
    break;
  case FloatKind::Mixed:
    return run_widened(c, swiglu_bwd);
  }
  return check_launch("swiglu_bwd");
}

// a (..), b (..) -> y = a + b; all three of one shape (no broadcasting).
Status add(KernelCall &c) {
  Check ck(c, "add");
  if (!parse_add_args(c, ck, /*bf16_ok=*/true)) return ck.status();
  const Tensor &a = c.in[0], &b = c.in[1], &y = c.out[0];
  const int64_t n = a.numel();
  if (n == 0) return Status::ok();
  // Every combination of f32 / bf16 (a residual add may meet an f32 operand).
  const int grid = blocks_for(n, kEltThreads);
  const int combo = (is_bf16(a) ? 4 : 0) | (is_bf16(b) ? 2 : 0) | (is_bf16(y) ? 1 : 0);
#define PARALLORA_ADD(TA, TB, TY) \
  add_kernel<<<grid, kEltThreads, 0, stream()>>>(as<const TA>(a), as<const TB>(b), as<TY>(y), n)
  switch (combo) {
  case 0: PARALLORA_ADD(float, float, float); break;
  case 1: PARALLORA_ADD(float, float, bf16_t); break;
  case 2: PARALLORA_ADD(float, bf16_t, float); break;
  case 3: PARALLORA_ADD(float, bf16_t, bf16_t); break;
  case 4: PARALLORA_ADD(bf16_t, float, float); break;
  case 5: PARALLORA_ADD(bf16_t, float, bf16_t); break;
  case 6: PARALLORA_ADD(bf16_t, bf16_t, float); break;
  default: PARALLORA_ADD(bf16_t, bf16_t, bf16_t); break;
  }
#undef PARALLORA_ADD
  return check_launch("add");
}

// x -> y with y.dim(i) = x.dim(perm[i]); f32, i32 or bf16 (x and y alike; f32 <-> bf16 is a
// conversion through run_widened, as every backend's widening wrapper does it).
Status transpose(KernelCall &c) {
  Check ck(c, "transpose");
  if (!ck.operands(1, 1, 1)) return ck.status();
  const Tensor &x = c.in[0], &y = c.out[0];
  if (!ck.expect(x.present(), "operand x is absent") ||
      !ck.expect(y.present(), "operand y is absent"))
    return ck.status();
  if (x.dtype != y.dtype && float_kind({&x, &y}) == FloatKind::Mixed) return run_widened(c, transpose);
  if (!ck.expect(x.dtype == y.dtype, "x and y have different element types")) return ck.status();
  std::vector<int64_t> perm;
  if (!parse_transpose_perm(c, ck, x, y, &perm)) return ck.status();
  const int R = x.rank();
  const std::vector<int64_t> &yshape = y.shape;  // x.dim(perm[i]), checked

  const int64_t n = x.numel();
  if (n == 0) return Status::ok();
  std::vector<int64_t> xstride(static_cast<size_t>(R));
  int64_t st = 1;
  for (int i = R - 1; i >= 0; --i) {
    xstride[i] = st;
    st *= x.shape[size_t(i)];
  }
  // y's dims with their x strides; size-1 dims dropped, and dim i merged into the previous
  // one when the previous one steps over exactly dim i's extent in x.
  std::vector<int64_t> sz, xs;
  for (int i = 0; i < R; ++i) {
    const int64_t s = yshape[size_t(i)], str = xstride[size_t(perm[i])];
    if (s == 1) continue;
    if (!sz.empty() && xs.back() == str * s) {
      sz.back() *= s;
      xs.back() = str;
    } else {
      sz.push_back(s);
      xs.push_back(str);
    }
  }
  if (sz.empty()) {  // a single element (also rank 0)
    sz.push_back(1);
    xs.push_back(1);
  }
  if (!ck.expect(int(sz.size()) <= kMaxTransposeRank,
                 "perm " + shape_str(perm) + " moves more than " +
                     std::to_string(kMaxTransposeRank) + " separate dims (unsupported on CUDA)"))
    return ck.status();
  TransposeDims d;
  d.rank = int(sz.size());
  for (int i = 0; i < d.rank; ++i) {
    d.size[i] = sz[size_t(i)];
    d.xstride[i] = xs[size_t(i)];
  }
  if (d.rank == 1 && d.xstride[0] == 1)  // the identity permutation (after merging)
    return cuda_status(cudaMemcpyAsync(y.data, x.data, size_t(x.nbytes()), cudaMemcpyDefault, stream()),
                       "transpose: cudaMemcpyAsync");
  if (plan::elem_size(x.dtype) == 2)
    transpose_kernel<<<blocks_for(n, kEltThreads), kEltThreads, 0, stream()>>>(
        static_cast<const uint16_t *>(x.data), static_cast<uint16_t *>(y.data), n, d);
  else
    transpose_kernel<<<blocks_for(n, kEltThreads), kEltThreads, 0, stream()>>>(
        static_cast<const uint32_t *>(x.data), static_cast<uint32_t *>(y.data), n, d);
  return check_launch("transpose");
}

// x -> y with the same number of elements (a reshape that needs its own bytes).
Status copy(KernelCall &c) {
  Check ck(c, "copy");
  if (!ck.operands(1, 1, 1)) return ck.status();
  const Tensor &x = c.in[0], &y = c.out[0];
  if (!ck.expect(x.present(), "operand x is absent") ||
      !ck.expect(y.present(), "operand y is absent"))
    return ck.status();
  if (x.dtype != y.dtype && float_kind({&x, &y}) == FloatKind::Mixed) return run_widened(c, copy);
  if (!ck.expect(x.dtype == y.dtype, "x and y have different element types") ||
      !ck.expect(x.numel() == y.numel(), "x " + shape_str(x.shape) + " has " +
                                             std::to_string(x.numel()) + " elements but y " +
                                             shape_str(y.shape) + " has " +
                                             std::to_string(y.numel())))
    return ck.status();
  const int64_t n = x.numel();
  if (x.data == y.data || n == 0) return Status::ok();
  return cuda_status(cudaMemcpyAsync(y.data, x.data, size_t(x.nbytes()), cudaMemcpyDefault, stream()),
                     "copy: cudaMemcpyAsync");
}

// x (..) -> acc (..) += x, same shape.
Status accumulate(KernelCall &c) {
  Check ck(c, "accumulate");
  if (!parse_accumulate_args(c, ck, /*bf16_ok=*/true)) return ck.status();
  const Tensor &x = c.in[0], &acc = c.out[0];
  const int64_t n = x.numel();
  if (n == 0) return Status::ok();
  // Every combination (bf16 activation gradients may accumulate into f32 ones and back).
  const int grid = blocks_for(n, kEltThreads);
  if (is_bf16(x) && is_bf16(acc))
    accumulate_kernel<<<grid, kEltThreads, 0, stream()>>>(as<const bf16_t>(x), as<bf16_t>(acc), n);
  else if (is_bf16(x))
    accumulate_kernel<<<grid, kEltThreads, 0, stream()>>>(as<const bf16_t>(x), acc.f32(), n);
  else if (is_bf16(acc))
    accumulate_kernel<<<grid, kEltThreads, 0, stream()>>>(x.f32(), as<bf16_t>(acc), n);
  else
    accumulate_kernel<<<grid, kEltThreads, 0, stream()>>>(x.f32(), acc.f32(), n);
  return check_launch("accumulate");
}

} // namespace parallora::rt::cuda::impl
