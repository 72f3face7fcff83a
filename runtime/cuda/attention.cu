//===- attention.cu - attention_fwd, attention_bwd (causal GQA, f32 math) --===//
//
// Operands, attrs and checks as runtime/cpu/attention.cpp: q (B,Hq,T,Dh), k/v (B,Hkv,S,Dh),
// query head h reads kv head h / (Hq/Hkv); causal masks s > t (needs T == S). Packing: the
// optional segment_ids (B, T) i32 (T == S) also mask s where seg[b, s] != seg[b, t]; every
// kernel below applies that test where it applies the causal one (`seg` null: no packing).
//
// Element types (runtime/cuda/bf16.cuh): q, k, v, o, do, dq, dk, dv all f32 or all bf16. bf16
// operands are widened on load (into the f32 shared-memory tiles / registers) and o is rounded
// once on store; the backward accumulates dq, dk, dv in f32 scratch and rounds them once at the
// end. Other mixes run the f32 kernels on widened copies (run_widened).
//
// FORWARD: a tiled flash-style kernel. One block per (batch, query head, tile of 32 query
// rows), 8 warps of 4 rows each. The block holds its Q tile, and one K tile and one V tile of
// 32 keys at a time, in shared memory (K rows padded to Dh+1 floats: lane j reads key j's row
// without bank conflicts). Per row and key tile: lane j scores key j (a dot over Dh), the warp
// takes the tile max and runs the online softmax (running max m, running sum l, the output
// accumulator rescaled by exp(m_old - m_new)); lane j also owns output dims j, j+32, ..
// (registers, DPL = ceil(Dh/32) <= 8, so Dh <= 256). Causal blocks stop at the key tile that
// holds their last row. o = acc / l. Probabilities are never stored.
//
// BACKWARD: correctness first, no atomics, two kernels like the CPU twin:
//   pass 1, one warp per query row: recomputes the row's max m and 1/sum(exp) from q and k, then
//     D = sum_s p_s dp_s (dp_s = do . v_s) and dq = scale * sum_s p_s (dp_s - D) k_s (lanes over
//     keys for the scores, over dims for dq); keeps (m, 1/l, D) per row in scratch.
//   pass 2, one warp per kv row (b, hk, s): dk_s = scale * sum ds_ts q_t and dv_s = sum p_ts do_t
//     over the group's query heads and the rows t that see key s, recomputing p_ts from (m, 1/l).
// What would make it fast (FlashAttention-2 backward): one block per (b, kv head, key tile)
// with K/V tiles in shared memory and dK/dV accumulated in registers while it streams the query
// tiles of all heads of the group; D = rowsum(do * o) from the forward output (saves a pass);
// dq accumulated with atomics (or a separate dq kernel per query tile); a tensor-core (TF32 or
// bf16) mma for the tile products once the tolerance budget allows it.
//
//===----------------------------------------------------------------------===//
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "runtime/cuda/bf16.cuh"
#include "runtime/cuda/common.cuh"
#include "runtime/cuda/device_util.cuh"
#include "runtime/cuda/kernels_impl.h"

namespace parallora::rt::cuda::impl {

using util::Check;

namespace {

constexpr int kBr = 32;          // query rows per forward block
constexpr int kBc = 32;          // keys per tile (= lanes)
constexpr int kFwdWarps = 8;     // forward block: 8 warps x 4 rows
constexpr int kRowsPerWarp = kBr / kFwdWarps;
constexpr int kMaxDh = 256;      // forward register accumulators: Dh/32 <= 8 per lane
constexpr int kBwdWarps = 4;     // backward blocks: 4 warps, one row each
constexpr unsigned kFull = 0xffffffffu;

using Dims = AttentionArgs;  // parse_attention_qkv (runtime/kernel_check.h)

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, off));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}
template <typename TA, typename TB> __device__ __forceinline__ float dot(const TA *a, const TB *b, int n) {
  float acc = 0.0f;
  for (int i = 0; i < n; ++i) acc += ld(a, i) * ld(b, i);
  return acc;
}

/// Zeroes a float tensor of either type (0.0 is all-zero bits in f32 and bf16).
Status zero(const Tensor &t, const char *what) {
  if (t.numel() <= 0) return Status::ok();
  return cuda_status(cudaMemsetAsync(t.data, 0, size_t(t.nbytes()), stream()), what);
}

// ---------------------------------------------------------------- forward

// grid (B*Hq, ceil(T/kBr)), block kFwdWarps*32, dynamic smem (kBr*Dh + kBc*(Dh+1) + kBc*Dh) floats.
template <int DPL, typename E>
__global__ void __launch_bounds__(kFwdWarps * 32)
    attention_fwd_kernel(const E *__restrict__ q, const E *__restrict__ k, const E *__restrict__ v,
                         E *__restrict__ o, int Hq, int Hkv, int group, int T, int S, int Dh, float scale,
                         bool causal, const int32_t *__restrict__ seg) {
  extern __shared__ float smem[];
  float *Qs = smem;                      // kBr x Dh
  float *Ks = Qs + kBr * Dh;             // kBc x (Dh+1)
  float *Vs = Ks + kBc * (Dh + 1);       // kBc x Dh
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t bh = blockIdx.x;
  const int h = int(bh % Hq), b = int(bh / Hq);
  const int64_t kvh = int64_t(b) * Hkv + h / group;
  const int t0 = blockIdx.y * kBr;
  const E *qb = q + (bh * T + t0) * Dh;
  const E *kb = k + kvh * int64_t(S) * Dh, *vb = v + kvh * int64_t(S) * Dh;
  const int32_t *segb = seg ? seg + int64_t(b) * T : nullptr;  // this row's segments (T == S)

  const int qrows = min(kBr, T - t0);
  for (int i = threadIdx.x; i < kBr * Dh; i += blockDim.x) Qs[i] = i / Dh < qrows ? ld(qb, i) : 0.0f;

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][DPL];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[r][i] = 0.0f;
  }
  const int s_end = causal ? min(S, t0 + kBr) : S;
  for (int s0 = 0; s0 < s_end; s0 += kBc) {
    __syncthreads();  // the previous tile is no longer read (and Qs is written, first time)
    const int kn = min(kBc, S - s0);
    for (int i = threadIdx.x; i < kBc * Dh; i += blockDim.x) {
      const int j = i / Dh, d = i % Dh;
      const bool in = j < kn;
      Ks[j * (Dh + 1) + d] = in ? ld(kb, int64_t(s0 + j) * Dh + d) : 0.0f;
      Vs[i] = in ? ld(vb, int64_t(s0) * Dh + i) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r, t = t0 + row;
      if (t >= T) continue;  // warp-uniform
      const int s = s0 + lane;
      const bool valid = s < S && (!causal || s <= t) && (!segb || segb[s] == segb[t]);
      const float sc = valid ? dot(Qs + row * Dh, Ks + lane * (Dh + 1), Dh) * scale : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(sc));
      if (m_new == -INFINITY) continue;  // no visible key yet (warp-uniform)
      const float p = valid ? expf(sc - m_new) : 0.0f;
      const float corr = expf(m[r] - m_new);  // 0 when m[r] = -inf
      l[r] = l[r] * corr + warp_sum(p);
      m[r] = m_new;
#pragma unroll
      for (int i = 0; i < DPL; ++i) acc[r][i] *= corr;
      for (int j = 0; j < kBc; ++j) {
        const float pj = __shfl_sync(kFull, p, j);
        const float *vr = Vs + j * Dh;
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
          const int d = lane + 32 * i;
          if (d < Dh) acc[r][i] += pj * vr[d];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = warp * kRowsPerWarp + r, t = t0 + row;
    if (t >= T) continue;
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    E *orow = o + (bh * T + t) * Dh;
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + 32 * i;
      if (d < Dh) st(orow, d, acc[r][i] * inv);
    }
  }
}

template <int DPL, typename E>
Status launch_fwd(const Dims &d, const E *q, const E *k, const E *v, E *o, size_t smem, const int32_t *seg) {
  auto kernel = attention_fwd_kernel<DPL, E>;
  // Raised once per size (not on every launch: keeps the call out of CUDA graph captures, whose
  // warm-up run did it).
  static size_t smem_set = 48 * 1024;
  if (smem > smem_set) {
    if (Status s = cuda_status(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
                               "attention_fwd: cudaFuncSetAttribute");
        !s)
      return s;
    smem_set = smem;
  }
  dim3 grid(unsigned(d.B * d.Hq), unsigned((d.T + kBr - 1) / kBr));
  kernel<<<grid, kFwdWarps * 32, smem, stream()>>>(q, k, v, o, int(d.Hq), int(d.Hkv), int(d.group), int(d.T),
                                                    int(d.S), int(d.Dh), d.scale, d.causal, seg);
  return check_launch("attention_fwd");
}

template <typename E>
Status launch_fwd_dh(const Dims &d, const E *q, const E *k, const E *v, E *o, size_t smem, const int32_t *seg) {
  if (d.Dh <= 32) return launch_fwd<1>(d, q, k, v, o, smem, seg);
  if (d.Dh <= 64) return launch_fwd<2>(d, q, k, v, o, smem, seg);
  if (d.Dh <= 128) return launch_fwd<4>(d, q, k, v, o, smem, seg);
  return launch_fwd<8>(d, q, k, v, o, smem, seg);
}

// ---------------------------------------------------------------- backward

// Pass 1: one warp per query row. smem per warp: q row, do row (Dh each), 32 ds values.
template <typename E>
__global__ void __launch_bounds__(kBwdWarps * 32)
    attention_bwd_rows_kernel(const E *__restrict__ q, const E *__restrict__ k, const E *__restrict__ v,
                              const E *__restrict__ dO, float *__restrict__ dq, float *__restrict__ row_m,
                              float *__restrict__ row_inv, float *__restrict__ row_D, int64_t rows, int Hq, int Hkv,
                              int group, int T, int S, int Dh, float scale, bool causal,
                              const int32_t *__restrict__ seg) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float *qs = smem + warp * (2 * Dh + 32), *dos = qs + Dh, *dsw = dos + Dh;
  const int64_t row = int64_t(blockIdx.x) * kBwdWarps + warp;
  if (row >= rows) return;  // whole warp; no block-level barrier below
  const int t = int(row % T);
  const int64_t bh = row / T;
  const int h = int(bh % Hq), b = int(bh / Hq);
  const int64_t kvh = int64_t(b) * Hkv + h / group;
  const E *kb = k + kvh * int64_t(S) * Dh, *vb = v + kvh * int64_t(S) * Dh;
  for (int i = lane; i < Dh; i += 32) {
    qs[i] = ld(q, row * Dh + i);
    dos[i] = ld(dO, row * Dh + i);
  }
  __syncwarp();
  const int n = causal ? t + 1 : S;
  const int32_t *segb = seg ? seg + int64_t(b) * T : nullptr;
  const int32_t qseg = segb ? segb[t] : 0;
  auto visible = [&](int s) { return !segb || segb[s] == qseg; };  // s < n already
  float m = -INFINITY;
  for (int s = lane; s < n; s += 32)
    if (visible(s)) m = fmaxf(m, dot(qs, kb + int64_t(s) * Dh, Dh) * scale);
  m = warp_max(m);
  float l = 0.0f, ed = 0.0f;
  for (int s = lane; s < n; s += 32) {
    if (!visible(s)) continue;
    const float e = expf(dot(qs, kb + int64_t(s) * Dh, Dh) * scale - m);
    l += e;
    ed += e * dot(dos, vb + int64_t(s) * Dh, Dh);
  }
  l = warp_sum(l);
  ed = warp_sum(ed);
  const float inv = 1.0f / l;
  const float D = ed * inv;
  float *dqr = dq + row * Dh;
  for (int i = lane; i < Dh; i += 32) dqr[i] = 0.0f;
  for (int s0 = 0; s0 < n; s0 += 32) {
    const int s = s0 + lane;
    float ds = 0.0f;
    if (s < n && visible(s)) {
      const E *kr = kb + int64_t(s) * Dh;
      const float p = expf(dot(qs, kr, Dh) * scale - m) * inv;
      ds = p * (dot(dos, vb + int64_t(s) * Dh, Dh) - D);
    }
    dsw[lane] = ds;
    __syncwarp();
    const int cnt = min(32, n - s0);
    for (int i = lane; i < Dh; i += 32) {
      float a = 0.0f;
      for (int j = 0; j < cnt; ++j) a += dsw[j] * ld(kb, int64_t(s0 + j) * Dh + i);
      dqr[i] += a;
    }
    __syncwarp();
  }
  for (int i = lane; i < Dh; i += 32) dqr[i] *= scale;
  if (lane == 0) {
    row_m[row] = m;
    row_inv[row] = inv;
    row_D[row] = D;
  }
}

// Pass 2: one warp per kv row (b, hk, s). smem per warp: k row, v row (Dh each), 32 p, 32 ds.
template <typename E>
__global__ void __launch_bounds__(kBwdWarps * 32)
    attention_bwd_kv_kernel(const E *__restrict__ q, const E *__restrict__ k, const E *__restrict__ v,
                            const E *__restrict__ dO, const float *__restrict__ row_m,
                            const float *__restrict__ row_inv, const float *__restrict__ row_D, float *__restrict__ dk,
                            float *__restrict__ dv, int64_t kv_rows, int Hq, int Hkv, int group, int T, int S, int Dh,
                            float scale, bool causal, const int32_t *__restrict__ seg) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float *ks = smem + warp * (2 * Dh + 64), *vs = ks + Dh, *pw = vs + Dh, *dsw = pw + 32;
  const int64_t kr = int64_t(blockIdx.x) * kBwdWarps + warp;
  if (kr >= kv_rows) return;
  const int s = int(kr % S);
  const int64_t bhk = kr / S;
  const int hk = int(bhk % Hkv), b = int(bhk / Hkv);
  const int32_t *segb = seg ? seg + int64_t(b) * T : nullptr;
  const int32_t kseg = segb ? segb[s] : 0;
  for (int i = lane; i < Dh; i += 32) {
    ks[i] = ld(k, kr * Dh + i);
    vs[i] = ld(v, kr * Dh + i);
  }
  __syncwarp();
  float *dkr = dk + kr * Dh, *dvr = dv + kr * Dh;
  for (int i = lane; i < Dh; i += 32) dkr[i] = dvr[i] = 0.0f;
  for (int g = 0; g < group; ++g) {
    const int h = hk * group + g;
    const int64_t rowbase = (int64_t(b) * Hq + h) * T;
    for (int tb = causal ? s : 0; tb < T; tb += 32) {
      const int t = tb + lane;
      float p = 0.0f, ds = 0.0f;
      if (t < T && (!segb || segb[t] == kseg)) {
        const int64_t row = rowbase + t;
        p = expf(dot(q + row * Dh, ks, Dh) * scale - row_m[row]) * row_inv[row];
        ds = p * (dot(dO + row * Dh, vs, Dh) - row_D[row]);
      }
      pw[lane] = p;
      dsw[lane] = ds;
      __syncwarp();
      const int cnt = min(32, T - tb);
      for (int i = lane; i < Dh; i += 32) {
        float ak = 0.0f, av = 0.0f;
        for (int j = 0; j < cnt; ++j) {
          const int64_t row = rowbase + tb + j;
          ak += dsw[j] * ld(q, row * Dh + i);
          av += pw[j] * ld(dO, row * Dh + i);
        }
        dkr[i] += ak;
        dvr[i] += av;
      }
      __syncwarp();
    }
  }
  for (int i = lane; i < Dh; i += 32) dkr[i] *= scale;
}

/// Stream-ordered grow-only device scratch for the per-row (m, 1/l, D).
StatusOr<float *> row_scratch(size_t floats) {
  static thread_local void *ptr = nullptr;
  static thread_local size_t have = 0;
  const size_t bytes = std::max<size_t>(floats * sizeof(float), 256);
  if (bytes > have) {
    if (graph::capturing()) return graph::refuse_capture("the attention row scratch would grow");
    if (ptr && graph::graphs_exist())
      graph::retire(ptr, false);  // a captured graph may use it
    else if (ptr)
      cudaFreeAsync(ptr, stream());
    ptr = nullptr;
    have = 0;
    if (Status s = cuda_status(cudaMallocAsync(&ptr, bytes, stream()), "cudaMallocAsync (attention scratch)"); !s)
      return s;
    have = bytes;
  }
  return static_cast<float *>(ptr);
}

bool fits_launch(Check &ck, const Dims &d) {
  return ck.expect(d.B * d.Hq <= INT32_MAX && d.T <= INT32_MAX && d.S <= INT32_MAX && d.Dh <= INT32_MAX &&
                       d.Hkv <= INT32_MAX,
                   "attention dimensions exceed the CUDA kernels' 32-bit index range");
}

} // namespace

// q (B,Hq,T,Dh), k (B,Hkv,S,Dh), v (B,Hkv,S,Dh) [, segment_ids (B,T)] -> o (B,Hq,T,Dh);
// attrs scale, causal.
Status attention_fwd(KernelCall &c) {
  Check ck(c, "attention_fwd");
  if (!ck.operands(3, 4, 1)) return ck.status();
  const Tensor &q = c.in[0], &k = c.in[1], &v = c.in[2], &o = c.out[0];
  Dims d;
  if (!parse_attention_qkv(c, ck, q, k, v, /*bf16_ok=*/true, &d) || !ck.flt(o, "o") || !ck.same_shape(o, "o", q, "q") || !fits_launch(ck, d))
    return ck.status();
  if (c.in.size() == 4 && !parse_attention_segments(ck, c.in[3], d)) return ck.status();
  const int32_t *seg = c.in.size() == 4 ? c.in[3].i32() : nullptr;
  const FloatKind kind = float_kind({&q, &k, &v, &o});
  if (kind == FloatKind::Mixed) return run_widened(c, attention_fwd);
  const int64_t rows = d.B * d.Hq * d.T;
  if (rows == 0) return Status::ok();
  if (d.S == 0) {  // no keys: an empty sum
    if (Status s = zero(o, "attention_fwd"); !s) return ck.error(s.message());
    return Status::ok();
  }
  if (!ck.expect(d.Dh <= kMaxDh, "head dim Dh = " + std::to_string(d.Dh) + " is above the CUDA kernel's limit " +
                                     std::to_string(kMaxDh)))
    return ck.status();
  if (!ck.expect(d.T / kBr < 65535, "T = " + std::to_string(d.T) + " is too long for the CUDA kernel's grid"))
    return ck.status();
  const size_t smem = size_t(kBr * d.Dh + kBc * (d.Dh + 1) + kBc * d.Dh) * sizeof(float);
  Status s = kind == FloatKind::BF16 ? launch_fwd_dh(d, static_cast<const bf16_t *>(q.data),
                                                      static_cast<const bf16_t *>(k.data),
                                                      static_cast<const bf16_t *>(v.data),
                                                      static_cast<bf16_t *>(o.data), smem, seg)
                                     : launch_fwd_dh(d, q.f32(), k.f32(), v.f32(), o.f32(), smem, seg);
  return s ? s : ck.error(s.message());
}

namespace {

// The two backward passes for one element type E; dq, dk, dv are f32 (the outputs themselves,
// or f32 scratch that the caller rounds into bf16 outputs).
template <typename E>
Status launch_bwd(Check &ck, const Dims &d, const E *q, const E *k, const E *v, const E *dO, float *dq, float *dk,
                  float *dv, const int32_t *seg) {
  const int64_t rows = d.B * d.Hq * d.T, kv_rows = d.B * d.Hkv * d.S;
  auto scratch = row_scratch(size_t(3 * rows));
  if (!scratch) return ck.error(scratch.message());
  float *row_m = *scratch, *row_inv = row_m + rows, *row_D = row_inv + rows;
  const size_t smem1 = size_t(kBwdWarps * (2 * d.Dh + 32)) * sizeof(float);
  const size_t smem2 = size_t(kBwdWarps * (2 * d.Dh + 64)) * sizeof(float);
  static size_t smem_set = 48 * 1024;  // raised once per size (see launch_fwd)
  if (smem2 > smem_set) {
    if (Status s = cuda_status(cudaFuncSetAttribute(attention_bwd_rows_kernel<E>,
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem1)),
                               "cudaFuncSetAttribute");
        !s)
      return ck.error(s.message());
    if (Status s = cuda_status(cudaFuncSetAttribute(attention_bwd_kv_kernel<E>,
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem2)),
                               "cudaFuncSetAttribute");
        !s)
      return ck.error(s.message());
    smem_set = smem2;
  }
  const int64_t blocks1 = (rows + kBwdWarps - 1) / kBwdWarps, blocks2 = (kv_rows + kBwdWarps - 1) / kBwdWarps;
  if (!ck.expect(blocks1 <= INT32_MAX && blocks2 <= INT32_MAX, "attention too large for the CUDA kernels' grid"))
    return ck.status();
  attention_bwd_rows_kernel<E><<<unsigned(blocks1), kBwdWarps * 32, smem1, stream()>>>(
      q, k, v, dO, dq, row_m, row_inv, row_D, rows, int(d.Hq), int(d.Hkv), int(d.group), int(d.T), int(d.S),
      int(d.Dh), d.scale, d.causal, seg);
  if (Status s = check_launch("attention_bwd (rows)"); !s) return ck.error(s.message());
  if (kv_rows == 0) return Status::ok();
  attention_bwd_kv_kernel<E><<<unsigned(blocks2), kBwdWarps * 32, smem2, stream()>>>(
      q, k, v, dO, row_m, row_inv, row_D, dk, dv, kv_rows, int(d.Hq), int(d.Hkv), int(d.group), int(d.T),
      int(d.S), int(d.Dh), d.scale, d.causal, seg);
  if (Status s = check_launch("attention_bwd (kv)"); !s) return ck.error(s.message());
  return Status::ok();
}

} // namespace

// do (B,Hq,T,Dh), q, k, v [, segment_ids (B,T)] -> dq (B,Hq,T,Dh), dk, dv (B,Hkv,S,Dh);
// attrs scale, causal.
Status attention_bwd(KernelCall &c) {
  Check ck(c, "attention_bwd");
  if (!ck.operands(4, 5, 3)) return ck.status();
  const Tensor &dO = c.in[0], &q = c.in[1], &k = c.in[2], &v = c.in[3];
  const Tensor &dq = c.out[0], &dk = c.out[1], &dv = c.out[2];
  Dims d;
  if (!parse_attention_qkv(c, ck, q, k, v, /*bf16_ok=*/true, &d) || !ck.flt(dO, "do") || !ck.same_shape(dO, "do", q, "q") ||
      !ck.flt(dq, "dq") || !ck.flt(dk, "dk") || !ck.flt(dv, "dv") || !ck.same_shape(dq, "dq", q, "q") ||
      !ck.same_shape(dk, "dk", k, "k") || !ck.same_shape(dv, "dv", v, "v") || !fits_launch(ck, d))
    return ck.status();
  if (c.in.size() == 5 && !parse_attention_segments(ck, c.in[4], d)) return ck.status();
  const int32_t *seg = c.in.size() == 5 ? c.in[4].i32() : nullptr;
  const FloatKind kind = float_kind({&dO, &q, &k, &v, &dq, &dk, &dv});
  if (kind == FloatKind::Mixed) return run_widened(c, attention_bwd);
  const int64_t rows = d.B * d.Hq * d.T;
  if (d.S == 0) {
    if (Status s = zero(dq, "attention_bwd"); !s) return ck.error(s.message());
    return Status::ok();
  }
  if (rows == 0) {  // no queries: dk = dv = 0
    Status s = zero(dk, "attention_bwd");
    if (s) s = zero(dv, "attention_bwd");
    return s ? s : ck.error(s.message());
  }
  if (kind == FloatKind::F32)
    return launch_bwd(ck, d, q.f32(), k.f32(), v.f32(), dO.f32(), dq.f32(), dk.f32(), dv.f32(), seg);
  // bf16: dq, dk, dv are summed in f32 scratch and rounded once.
  thread_local ScratchPool pool;
  StatusOr<float *> dq32 = pool.get_as<float>(0, size_t(dq.numel()));
  if (!dq32) return ck.error(dq32.message());
  StatusOr<float *> dk32 = pool.get_as<float>(1, size_t(dk.numel()));
  if (!dk32) return ck.error(dk32.message());
  StatusOr<float *> dv32 = pool.get_as<float>(2, size_t(dv.numel()));
  if (!dv32) return ck.error(dv32.message());
  const auto *qb = static_cast<const bf16_t *>(q.data), *kb = static_cast<const bf16_t *>(k.data),
             *vb = static_cast<const bf16_t *>(v.data), *dob = static_cast<const bf16_t *>(dO.data);
  if (Status s = launch_bwd(ck, d, qb, kb, vb, dob, *dq32, *dk32, *dv32, seg); !s) return s;
  Status s = narrow(*dq32, dq.data, dq.numel());
  if (s) s = narrow(*dk32, dk.data, dk.numel());
  if (s) s = narrow(*dv32, dv.data, dv.numel());
  return s ? s : ck.error(s.message());
}

} // namespace parallora::rt::cuda::impl
