//===- loss_optim.cu - cross_entropy_fwd / _bwd, adamw_step -----------------===//
//
// CUDA twins of runtime/cpu/cross_entropy.cpp and runtime/cpu/adamw.cpp: same operands,
// attributes, checks, error messages and collectives (runtime/cpu/kernels.h is the contract).
//
// cross_entropy: logits and dlogits are f32 or bf16 (templated loads / stores: bf16 logits
// are read widened in place, never copied; dlogits rounded once on store); the loss is f32 (or
// bf16, rounded once from the f32 mean). A setup kernel resolves each logits row's target (the label, or -1 when the row
// does not count), counts the counted rows (a device word the mean and the gradient kernels
// read: no host value per call, so CUDA graphs can replay them) and finds the first bad label;
// the host waits for it (a bad label is an error naming its value and position). Inside a CUDA
// graph that host check runs after each replay instead (graph.cu).
// Row statistics use one block per row: the max in float (exact in any order), the sum of
// exp(x - max) in double, grouped by block_reduce's fixed tree, so results are reproducible.
// The loss is the mean of per-row double losses, summed by one block in a fixed order.
// vocab_group (Megatron's vocabulary-parallel softmax) sends exactly the CPU kernel's messages:
//   fwd: all_reduce(max, N row maxima), all_reduce(sum, 2N: N sums of exp, N target logits)
//   bwd: all_reduce(max, N), all_reduce(sum, N)          (N = B*T rows, uncounted rows send 0)
// each on managed scratch after waiting for the stream.
//
// adamw_step: the gradients are cut into the CPU kernel's 32768-element chunks; one block per
// chunk sums g^2 in double, the host adds the chunk sums in order (with the norm_divisors) after
// waiting, exactly as the CPU does, all-reduces the f32 sum over norm_group when that has more
// than one rank, and writes StepState. The update is one kernel over the same chunks, op by op
// in fp32 with explicit-rounding intrinsics (no FMA contraction except torch's lerp fma), so it
// matches the CPU kernel bit for bit given the same norm.
//
//===----------------------------------------------------------------------===//
#include <algorithm>
#include <cmath>
#include <string>
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

namespace {

//===--------------------------------------------------------------------===//
// cross entropy: kernels
//===--------------------------------------------------------------------===//

// target[r] for row r = b*T + t: labels[b, t + shift], or -1 (t + shift >= T, or ignore_index).
// *bad = the first row with a label outside [0, vocab) (atomicMin), *count = the number of
// counted rows (integer atomics: exact in any order).
__global__ void ce_targets_kernel(const int32_t *labels, int64_t rows, int64_t T, int64_t shift,
                                  int64_t ignore, int64_t vocab, int32_t *target,
                                  unsigned long long *bad, unsigned long long *count) {
  PARALLORA_GRID_LOOP(r, rows) {
    const int64_t t = r % T;
    int32_t tg = -1;
    if (t + shift < T) {
      const int64_t l = labels[r + shift];
      if (l != ignore) {
        if (l < 0 || l >= vocab)
          atomicMin(bad, (unsigned long long)r);
        else
          tg = int32_t(l);
      }
    }
    target[r] = tg;
    if (tg >= 0) atomicAdd(count, 1ull);
  }
}

// Block-wide max of row x (float compare, the CPU's `x[j] > m ? x[j] : m`).
template <typename TL> __device__ float row_max(const TL *x, int64_t V) {
  float m = ld(x, 0);
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float xj = ld(x, j);
    m = xj > m ? xj : m;
  }
  return util::block_reduce(m, util::MaxOp(), m);
}

// Block-wide sum of exp(x - m) in double (thread-strided partial sums, then the fixed tree).
template <typename TL> __device__ double row_sum_exp(const TL *x, int64_t V, float m) {
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += double(expf(ld(x, j) - m));
  return util::block_reduce(s, util::SumOp(), 0.0);
}

// One block per row: row_loss[r] = max + log(sum exp(x - max)) - x[target] (double), 0 for
// rows that do not count.
template <typename TL>
__global__ void ce_row_loss_kernel(const TL *logits, const int32_t *target, int64_t V,
                                   double *row_loss) {
  const int64_t r = blockIdx.x;
  const int32_t l = target[r];
  if (l < 0) {
    if (threadIdx.x == 0) row_loss[r] = 0.0;
    return;
  }
  const TL *x = logits + r * V;
  const float m = row_max(x, V);
  const double sum = row_sum_exp(x, V, m);
  if (threadIdx.x == 0) row_loss[r] = double(m) + log(sum) - double(ld(x, l));
}

// One block: loss = sum of row_loss / count (0 when nothing counts), summed in a fixed order.
// The count is read on the device (a CUDA graph replays this launch: graph.cu).
// The divisor of the summed loss: label_count / shares from the executor's denominator operand
// (kernel_check.h's ce_divisor; read on the device, so graph replays see each step's value), else
// the local count.
__device__ inline double ce_divisor_dev(int64_t count, const int32_t *denom) {
  if (denom && denom[0] > 0 && denom[1] > 0) return double(denom[0]) / double(denom[1]);
  return double(count);
}

template <typename TO>
__global__ void ce_mean_kernel(const double *row_loss, int64_t rows, const unsigned long long *count_p,
                               const int32_t *denom, TO *loss) {
  double s = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) s += row_loss[r];
  s = util::block_reduce(s, util::SumOp(), 0.0);
  const int64_t count = rows > 0 ? int64_t(*count_p) : 0;
  if (threadIdx.x == 0) st(loss, 0, count > 0 ? float(s / ce_divisor_dev(count, denom)) : 0.0f);
}

// loss = the mean of row_loss, into an f32 or bf16 scalar.
Status ce_mean(const double *row_loss, int64_t rows, const unsigned long long *count, const int32_t *denom,
               const Tensor &loss) {
  if (is_bf16(loss))
    ce_mean_kernel<<<1, kRowThreads, 0, stream()>>>(row_loss, rows, count, denom, static_cast<bf16_t *>(loss.data));
  else
    ce_mean_kernel<<<1, kRowThreads, 0, stream()>>>(row_loss, rows, count, denom, loss.f32());
  return check_launch("ce_mean_kernel");
}

// Sharded: one block per row, the shard's row max (0 for rows that do not count).
template <typename TL>
__global__ void ce_shard_max_kernel(const TL *logits, const int32_t *target, int64_t V,
                                    float *mx) {
  const int64_t r = blockIdx.x;
  if (target[r] < 0) {
    if (threadIdx.x == 0) mx[r] = 0.0f;
    return;
  }
  const float m = row_max(logits + r * V, V);
  if (threadIdx.x == 0) mx[r] = m;
}

// Sharded: one block per row, red[r] = float(sum over the shard of exp(x - mx[r])) and, when
// `tgt` is set, tgt[r] = the target logit if the target column lo + j is in this shard, else 0.
template <typename TL>
__global__ void ce_shard_sums_kernel(const TL *logits, const int32_t *target, int64_t V,
                                     int64_t lo, const float *mx, float *sums, float *tgt) {
  const int64_t r = blockIdx.x;
  const int32_t l = target[r];
  const TL *x = logits + r * V;
  if (l < 0) {
    if (threadIdx.x == 0) {
      sums[r] = 0.0f;
      if (tgt) tgt[r] = 0.0f;
    }
    return;
  }
  const double s = row_sum_exp(x, V, mx[r]);
  if (threadIdx.x == 0) {
    sums[r] = float(s);
    if (tgt) {
      const int64_t t = int64_t(l) - lo;
      tgt[r] = (t >= 0 && t < V) ? ld(x, t) : 0.0f;
    }
  }
}

// Sharded: per-row loss from the reduced statistics, mx + log(sum) - target logit (double).
__global__ void ce_shard_row_loss_kernel(const int32_t *target, const float *mx,
                                         const float *sums, const float *tgt, int64_t rows,
                                         double *row_loss) {
  PARALLORA_GRID_LOOP(r, rows) {
    row_loss[r] = target[r] < 0 ? 0.0
                                : double(mx[r]) + log(double(sums[r])) - double(tgt[r]);
  }
}

// One block per row: d[j] = float(coef * (p_j - [j == target column])), p_j in double,
// p_j = double(exp(x_j - max)) / sum; zeros for rows that do not count. Unsharded (gmax null)
// the block computes max and sum itself; sharded it uses the group's (gmax, gsum) and the
// target column is label - lo (outside [0, V) when another shard holds it).
// coef = grad_scale / count (0 when nothing counts), the count read on the device (graph.cu):
// the same IEEE double division the host did.
template <typename TL, typename TD>
__global__ void ce_grad_kernel(const TL *logits, const int32_t *target, int64_t V, int64_t lo,
                               const float *gmax, const float *gsum, const unsigned long long *count,
                               const int32_t *denom, double grad_scale, TD *dl) {
  const int64_t r = blockIdx.x;
  const int32_t l = target[r];
  TD *d = dl + r * V;
  if (l < 0) {
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) st(d, j, 0.0f);
    return;
  }
  const int64_t n = int64_t(*count);
  const double coef = n > 0 ? grad_scale / ce_divisor_dev(n, denom) : 0.0;
  const TL *x = logits + r * V;
  float m;
  double inv;
  if (gmax) {
    m = gmax[r];
    inv = 1.0 / double(gsum[r]);
  } else {
    m = row_max(x, V);
    inv = 1.0 / row_sum_exp(x, V, m);
  }
  const int64_t t = int64_t(l) - lo;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const double p = double(expf(ld(x, j) - m)) * inv;
    st(d, j, float(coef * (j == t ? p - 1.0 : p)));
  }
}

//===--------------------------------------------------------------------===//
// cross entropy: host side
//===--------------------------------------------------------------------===//

// Launches of the templated kernels for the logits' (and dlogits') element types.
void launch_row_loss(const Tensor &logits, const int32_t *target, int64_t rows, int64_t V, double *row_loss) {
  if (is_bf16(logits))
    ce_row_loss_kernel<<<unsigned(rows), kRowThreads, 0, stream()>>>(static_cast<const bf16_t *>(logits.data),
                                                                     target, V, row_loss);
  else
    ce_row_loss_kernel<<<unsigned(rows), kRowThreads, 0, stream()>>>(logits.f32(), target, V, row_loss);
}
void launch_shard_max(const Tensor &logits, const int32_t *target, int64_t rows, int64_t V, float *mx) {
  if (is_bf16(logits))
    ce_shard_max_kernel<<<unsigned(rows), kRowThreads, 0, stream()>>>(static_cast<const bf16_t *>(logits.data),
                                                                      target, V, mx);
  else
    ce_shard_max_kernel<<<unsigned(rows), kRowThreads, 0, stream()>>>(logits.f32(), target, V, mx);
}
void launch_shard_sums(const Tensor &logits, const int32_t *target, int64_t rows, int64_t V, int64_t lo,
                       const float *mx, float *sums, float *tgt) {
  if (is_bf16(logits))
    ce_shard_sums_kernel<<<unsigned(rows), kRowThreads, 0, stream()>>>(
        static_cast<const bf16_t *>(logits.data), target, V, lo, mx, sums, tgt);
  else
    ce_shard_sums_kernel<<<unsigned(rows), kRowThreads, 0, stream()>>>(logits.f32(), target, V, lo, mx, sums, tgt);
}
void launch_grad(const Tensor &logits, const int32_t *target, int64_t rows, int64_t V, int64_t lo,
                 const float *gmax, const float *gsum, const unsigned long long *count, const int32_t *denom,
                 double grad_scale, const Tensor &dl) {
  const unsigned grid = unsigned(rows);
  const auto *lb = static_cast<const bf16_t *>(logits.data);
  auto *db = static_cast<bf16_t *>(dl.data);
  if (is_bf16(logits) && is_bf16(dl))
    ce_grad_kernel<<<grid, kRowThreads, 0, stream()>>>(lb, target, V, lo, gmax, gsum, count, denom, grad_scale, db);
  else if (is_bf16(logits))
    ce_grad_kernel<<<grid, kRowThreads, 0, stream()>>>(lb, target, V, lo, gmax, gsum, count, denom, grad_scale, dl.f32());
  else if (is_bf16(dl))
    ce_grad_kernel<<<grid, kRowThreads, 0, stream()>>>(logits.f32(), target, V, lo, gmax, gsum, count, denom, grad_scale, db);
  else
    ce_grad_kernel<<<grid, kRowThreads, 0, stream()>>>(logits.f32(), target, V, lo, gmax, gsum, count, denom, grad_scale, dl.f32());
}

// Scratch of the cross-entropy kernels (per thread; see ManagedScratch).
thread_local util::ManagedScratch g_ce_words, g_ce_target, g_ce_rowloss, g_ce_max, g_ce_red;

struct CeSetup : CrossEntropyArgs {
  int32_t *target = nullptr;           // managed, B*T: the label of each logits row, or -1
  unsigned long long *count = nullptr;  // managed: the number of counted rows (device-side)
};

// Operands and attrs checked by parse_cross_entropy_args (runtime/kernel_check: the CPU kernel's
// checks, order and messages), then the targets resolved on the device and waited for; a label
// outside the whole vocabulary (vocab.vocab) is ce_label_error. On failure returns false with
// the error (also a CUDA error) in ck.
bool ce_setup(const KernelCall &c, Check &ck, bool backward, CeSetup *cs) {
  if (!parse_cross_entropy_args(c, ck, backward, /*bf16_ok=*/true, cs)) return false;
  const Tensor &labels = c.in[1];
  const int64_t rows = cs->B * cs->T, V = cs->vocab.vocab;
  if (!ck.expect(rows <= 0x7fffffff, "logits have too many rows for one grid: " +
                                         std::to_string(rows)))
    return false;
  // Sharded: host-staged all-reduces of the row statistics follow (graph.cu's audit).
  if (cs->vocab.sharded && graph::capturing())
    return ck.expect(false, graph::refuse_capture("vocabulary-parallel cross entropy (host-staged all-reduces)").message());
  StatusOr<unsigned long long *> words = g_ce_words.get<unsigned long long>(2);
  if (!words) return ck.expect(false, words.message());
  StatusOr<int32_t *> target = g_ce_target.get<int32_t>(size_t(rows));
  if (!target) return ck.expect(false, target.message());
  cs->target = *target;
  cs->count = *words + 1;
  if (rows == 0) return true;
  // The bad-label word: words[0], or, captured into a CUDA graph, a word of the graph checked
  // on the host after every replay (graph.cuh); the targets of a bad label are -1 meanwhile.
  const bool deferred = graph::capturing();
  StatusOr<unsigned long long *> bad_word = deferred ? graph::check_word() : StatusOr<unsigned long long *>(*words);
  if (!bad_word) return ck.expect(false, bad_word.message());
  if (Status s = cuda_status(cudaMemsetAsync(*bad_word, 0xff, sizeof(unsigned long long), stream()),
                             "cudaMemsetAsync");
      !s)
    return ck.expect(false, s.message());
  if (Status s = cuda_status(cudaMemsetAsync(cs->count, 0, sizeof(unsigned long long), stream()),
                             "cudaMemsetAsync");
      !s)
    return ck.expect(false, s.message());
  ce_targets_kernel<<<blocks_for(rows, kEltThreads), kEltThreads, 0, stream()>>>(
      labels.i32(), rows, cs->T, cs->shift, cs->ignore, V, cs->target, *bad_word, cs->count);
  if (Status s = check_launch("ce_targets_kernel"); !s) return ck.expect(false, s.message());
  auto label_error = [](const int32_t *lab, unsigned long long bad, const CrossEntropyArgs &a) {
    const int64_t r = int64_t(bad), b = r / a.T, t = r % a.T + a.shift;
    return ce_label_error(lab[b * a.T + t], b, t, a);
  };
  if (deferred) {
    const plan::Instr *instr = c.instr;
    const int32_t *lab = labels.i32();
    unsigned long long *word = *bad_word;
    const CrossEntropyArgs args = *cs;
    const char *kernel = backward ? "cross_entropy_bwd" : "cross_entropy_fwd";
    graph::defer_check([instr, lab, word, args, kernel, label_error]() -> Status {
      if (*word == util::kNoError) return Status::ok();
      KernelCall call;
      call.instr = instr;
      return util::fail(call, kernel, label_error(lab, *word, args));
    });
    return true;
  }
  if (Status s = sync_stream(); !s) return ck.expect(false, s.message());
  const unsigned long long bad = (*words)[0];
  if (bad != util::kNoError) return ck.expect(false, label_error(labels.i32(), bad, *cs));
  return true;
}

// Sharded: the group's row maxima in *mx (managed, N floats): kernel, wait, all_reduce(max, N).
Status global_row_max(KernelCall &c, Check &ck, const CeSetup &cs, const VocabShard &vs,
                      float **mx) {
  const int64_t rows = cs.B * cs.T;
  StatusOr<float *> buf = g_ce_max.get<float>(size_t(rows));
  if (!buf) return ck.error(buf.message());
  *mx = *buf;
  if (rows > 0) {
    launch_shard_max(c.in[0], cs.target, rows, cs.V, *mx);
    if (Status s = check_launch("ce_shard_max_kernel"); !s) return ck.error(s.message());
  }
  if (Status s = sync_stream(); !s) return ck.error(s.message());
  if (Status s = c.comm->all_reduce(vs.group, *mx, rows, ReduceOp::Max); !s)
    return ck.error(s.message());
  return Status::ok();
}

Status sharded_fwd(KernelCall &c, Check &ck, const CeSetup &cs, const VocabShard &vs) {
  const int64_t rows = cs.B * cs.T;
  float *mx = nullptr;
  if (Status s = global_row_max(c, ck, cs, vs, &mx); !s) return s;
  // red: [0, rows) sums of exp; [rows, 2 rows) target logits.
  StatusOr<float *> red = g_ce_red.get<float>(size_t(2 * rows));
  if (!red) return ck.error(red.message());
  if (rows > 0) {
    launch_shard_sums(c.in[0], cs.target, rows, cs.V, vs.lo, mx, *red, *red + rows);
    if (Status s = check_launch("ce_shard_sums_kernel"); !s) return ck.error(s.message());
  }
  if (Status s = sync_stream(); !s) return ck.error(s.message());
  if (Status s = c.comm->all_reduce(vs.group, *red, 2 * rows, ReduceOp::Sum); !s)
    return ck.error(s.message());
  StatusOr<double *> row_loss = g_ce_rowloss.get<double>(size_t(rows));
  if (!row_loss) return ck.error(row_loss.message());
  if (rows > 0) {
    ce_shard_row_loss_kernel<<<blocks_for(rows, kEltThreads), kEltThreads, 0, stream()>>>(
        cs.target, mx, *red, *red + rows, rows, *row_loss);
    if (Status s = check_launch("ce_shard_row_loss_kernel"); !s) return ck.error(s.message());
  }
  if (Status s = ce_mean(*row_loss, rows, cs.count, cs.denominator, c.out[0]); !s) return ck.error(s.message());
  return Status::ok();
}

Status sharded_bwd(KernelCall &c, Check &ck, const CeSetup &cs, const VocabShard &vs) {
  const int64_t rows = cs.B * cs.T;
  const double grad_scale = c.attr_f("grad_scale", 1.0);
  float *mx = nullptr;
  if (Status s = global_row_max(c, ck, cs, vs, &mx); !s) return s;
  StatusOr<float *> sums = g_ce_red.get<float>(size_t(rows));
  if (!sums) return ck.error(sums.message());
  if (rows > 0) {
    launch_shard_sums(c.in[0], cs.target, rows, cs.V, vs.lo, mx, *sums, nullptr);
    if (Status s = check_launch("ce_shard_sums_kernel"); !s) return ck.error(s.message());
  }
  if (Status s = sync_stream(); !s) return ck.error(s.message());
  if (Status s = c.comm->all_reduce(vs.group, *sums, rows, ReduceOp::Sum); !s)
    return ck.error(s.message());
  if (rows > 0) {
    launch_grad(c.in[0], cs.target, rows, cs.V, vs.lo, mx, *sums, cs.count, cs.denominator, grad_scale, c.out[0]);
    if (Status s = check_launch("ce_grad_kernel"); !s) return ck.error(s.message());
  }
  return Status::ok();
}

//===--------------------------------------------------------------------===//
// adamw: kernels
//===--------------------------------------------------------------------===//

// The CPU kernel's norm chunk (runtime/cpu/adamw.cpp): the host adds the chunk sums in order.
constexpr int64_t kNormChunk = 32768;

struct AdamChunk {
  float *p, *g, *m, *v;  // chunk starts
  int64_t len;
  int64_t grad;  // index i of g_i
};

// One block per chunk: partial[k] = sum of g^2 in double (thread-strided, fixed tree).
__global__ void adamw_sumsq_kernel(const AdamChunk *chunks, double *partial) {
  const AdamChunk ch = chunks[blockIdx.x];
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < ch.len; j += blockDim.x) {
    const double g = double(ch.g[j]);
    s += g * g;
  }
  s = util::block_reduce(s, util::SumOp(), 0.0);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void adamw_zero_grads_kernel(const AdamChunk *chunks) {
  const AdamChunk ch = chunks[blockIdx.x];
  for (int64_t j = threadIdx.x; j < ch.len; j += blockDim.x) ch.g[j] = 0.0f;
}

// The f32 scalars of one step, rounded on the host as torch rounds its Python scalars.
struct AdamScalars {
  bool clip, decay, zero_grads;
  float clip_f, decay_f, w1_f, b2_f, c2_f, bc2_sqrt_f, eps_f, neg_step_f;
};

// One block per chunk, element-wise, torch's single-tensor AdamW op by op (every operation an
// explicitly rounded fp32 op, as the CPU kernel computes with -ffp-contract=off):
//   g *= clip;  p *= 1 - lr wd;  m = fma(1-b1, g - m, m) (lerp);  v = v b2 + ((1-b2) g) g;
//   p = p + (-step_size m) / (sqrt(v) / sqrt(bc2) + eps)
__global__ void adamw_update_kernel(const AdamChunk *chunks, AdamScalars s) {
  const AdamChunk ch = chunks[blockIdx.x];
  for (int64_t j = threadIdx.x; j < ch.len; j += blockDim.x) {
    float g = ch.g[j];
    if (s.clip) g = __fmul_rn(g, s.clip_f);
    float p = ch.p[j];
    if (s.decay) p = __fmul_rn(p, s.decay_f);
    const float m0 = ch.m[j];
    const float m = __fmaf_rn(s.w1_f, __fsub_rn(g, m0), m0);
    float v = __fmul_rn(ch.v[j], s.b2_f);
    v = __fadd_rn(v, __fmul_rn(__fmul_rn(s.c2_f, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bc2_sqrt_f), s.eps_f);
    p = __fadd_rn(p, __fdiv_rn(__fmul_rn(s.neg_step_f, m), denom));
    ch.p[j] = p;
    ch.m[j] = m;
    ch.v[j] = v;
    ch.g[j] = s.zero_grads ? 0.0f : g;
  }
}

thread_local util::ManagedScratch g_adam_chunks, g_adam_partial;

} // namespace

//===--------------------------------------------------------------------===//
// Entry points
//===--------------------------------------------------------------------===//

// logits (B,T,V), labels (B,T) i32 -> loss () = mean over counted rows of lse - logit[label].
Status cross_entropy_fwd(KernelCall &c) {
  Check ck(c, "cross_entropy_fwd");
  CeSetup cs;
  if (!ce_setup(c, ck, /*backward=*/false, &cs)) return ck.status();
  const Tensor &logits = c.in[0], &loss = c.out[0];
  if (cs.vocab.sharded) return sharded_fwd(c, ck, cs, cs.vocab);
  const int64_t rows = cs.B * cs.T;
  StatusOr<double *> row_loss = g_ce_rowloss.get<double>(size_t(rows));
  if (!row_loss) return ck.error(row_loss.message());
  if (rows > 0) {
    launch_row_loss(logits, cs.target, rows, cs.V, *row_loss);
    if (Status s = check_launch("ce_row_loss_kernel"); !s) return ck.error(s.message());
  }
  if (Status s = ce_mean(*row_loss, rows, cs.count, cs.denominator, loss); !s) return ck.error(s.message());
  return Status::ok();
}

// logits, labels -> dlogits (B,T,V) = grad_scale * (softmax - onehot) / count at counted rows,
// 0 elsewhere.
Status cross_entropy_bwd(KernelCall &c) {
  Check ck(c, "cross_entropy_bwd");
  CeSetup cs;
  if (!ce_setup(c, ck, /*backward=*/true, &cs)) return ck.status();
  const Tensor &logits = c.in[0], &dl = c.out[0];
  if (cs.vocab.sharded) return sharded_bwd(c, ck, cs, cs.vocab);
  const int64_t rows = cs.B * cs.T;
  if (rows == 0) return Status::ok();
  launch_grad(logits, cs.target, rows, cs.V, 0, nullptr, nullptr, cs.count, cs.denominator, c.attr_f("grad_scale", 1.0), dl);
  if (Status s = check_launch("ce_grad_kernel"); !s) return ck.error(s.message());
  return Status::ok();
}

Status adamw_step(KernelCall &c) {
  Check ck(c, "adamw_step");
  // lr / step from the host StepState, the norm summed on the host: never inside a CUDA graph
  // (graph.cu's audit).
  if (graph::capturing())
    return ck.error(graph::refuse_capture("adamw_step reads lr / step from the host each step").message());
  AdamwArgs args;  // operands and attributes, checked the same way on every backend
  if (!parse_adamw_args(c, ck, &args)) return ck.status();
  StepState &st = *c.step;
  const int64_t n = args.n;
  const double beta1 = args.beta1, beta2 = args.beta2, eps = args.eps, wd = args.weight_decay,
               max_norm = args.max_grad_norm, lr = st.lr;
  const bool zero_grads = args.zero_grads;
  const std::vector<int64_t> &divisors = args.divisors;

  // The chunk table (managed). Wait first: a previous adamw_step's update kernel may still be
  // reading the table (this kernel waits for the norm below anyway).
  std::vector<AdamChunk> host_chunks;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = c.in[size_t(n + i)].numel();
    float *pp = c.in[size_t(i)].f32(), *gp = c.in[size_t(n + i)].f32(),
          *mp = c.in[size_t(2 * n + i)].f32(), *vp = c.in[size_t(3 * n + i)].f32();
    for (int64_t off = 0; off < len; off += kNormChunk)
      host_chunks.push_back(
          {pp + off, gp + off, mp + off, vp + off, std::min(kNormChunk, len - off), i});
  }
  const int64_t nchunks = int64_t(host_chunks.size());
  if (!ck.expect(nchunks <= 0x7fffffff, "too many gradient chunks for one grid"))
    return ck.status();
  if (Status s = sync_stream(); !s) return ck.error(s.message());
  StatusOr<AdamChunk *> chunks = g_adam_chunks.get<AdamChunk>(size_t(nchunks));
  if (!chunks) return ck.error(chunks.message());
  StatusOr<double *> partial = g_adam_partial.get<double>(size_t(nchunks));
  if (!partial) return ck.error(partial.message());
  for (int64_t k = 0; k < nchunks; ++k) (*chunks)[k] = host_chunks[size_t(k)];

  // 1. Global gradient norm: chunk sums on the device, added in chunk order on the host.
  if (nchunks > 0) {
    adamw_sumsq_kernel<<<unsigned(nchunks), kRowThreads, 0, stream()>>>(*chunks, *partial);
    if (Status s = check_launch("adamw_sumsq_kernel"); !s) return ck.error(s.message());
    if (Status s = sync_stream(); !s) return ck.error(s.message());
  }
  double sumsq = 0.0;
  for (int64_t k = 0; k < nchunks; ++k) {
    const int64_t d = divisors.empty() ? 1 : divisors[size_t(host_chunks[size_t(k)].grad)];
    sumsq += d == 1 ? (*partial)[k] : (*partial)[k] / double(d);
  }
  double norm = 0;  // summed over norm_group; sets st.grad_norm / grad_norm_finite
  if (Status s = finish_grad_norm(c, args, sumsq, &norm); !s) return ck.error(s.message());

  if (!st.grad_norm_finite) {
    if (zero_grads && nchunks > 0) {
      adamw_zero_grads_kernel<<<unsigned(nchunks), kRowThreads, 0, stream()>>>(*chunks);
      if (Status s = check_launch("adamw_zero_grads_kernel"); !s) return ck.error(s.message());
    }
    return Status::ok();
  }

  // 2. Clipping factor (torch's clip_grad_norm_).
  AdamScalars sc{};
  sc.clip = false;
  sc.clip_f = 1.0f;
  if (max_norm > 0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
      sc.clip = true;
      sc.clip_f = float(coef);
    }
  }

  // 3. AdamW scalars, rounded as runtime/cpu/adamw.cpp rounds them; then the update.
  const int64_t t = st.step;
  const double bc1 = 1.0 - std::pow(beta1, double(t));
  const double bc2 = 1.0 - std::pow(beta2, double(t));
  sc.decay_f = float(1.0 - lr * wd);
  sc.decay = wd != 0.0;
  sc.zero_grads = zero_grads;
  sc.w1_f = float(1.0 - beta1);
  sc.b2_f = float(beta2);
  sc.c2_f = float(1.0 - beta2);
  sc.bc2_sqrt_f = float(std::sqrt(bc2));
  sc.eps_f = float(eps);
  sc.neg_step_f = float(-(lr / bc1));
  if (nchunks == 0) return Status::ok();
  adamw_update_kernel<<<unsigned(nchunks), kRowThreads, 0, stream()>>>(*chunks, sc);
  if (Status s = check_launch("adamw_update_kernel"); !s) return ck.error(s.message());
  return Status::ok();
}

} // namespace parallora::rt::cuda::impl
