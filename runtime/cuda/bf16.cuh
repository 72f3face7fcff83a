//===- bf16.cuh - bf16 storage in the CUDA kernels ---------------------------===//
//
// Plans compiled with --precision bf16 store frozen weights and activations as bf16
// (plan::ElemType::BF16; runtime/base/bf16.h). Every kernel reads bf16 operands widened to f32,
// computes in f32 exactly as its f32 version, and rounds each output element once on store
// (round to nearest even: __float2bfloat16_rn, the host's f32_to_bf16). A kernel with
// accumulate = 1 into a bf16 output widens the old value, adds in f32 and rounds once.
//
// Two ways a CUDA kernel meets that contract:
//   native   the kernel is templated on its element types (load<T> widens, store<T> rounds):
//            embedding, rms_norm, rope, swiglu, add, accumulate, transpose, copy, fill_zero,
//            attention, cross_entropy, and the GEMMs (cuBLASLt bf16 x bf16 -> f32 or bf16, f32
//            compute; matmul.cu). A native kernel whose operands mix f32 and bf16 in a way it
//            does not instantiate calls run_widened on itself.
//   fallback run_widened(call, f32 kernel): every bf16 operand (inputs, and outputs with their
//            current values) is widened into f32 device scratch, the f32 kernel runs on those,
//            and the bf16 outputs are narrowed back (one rounding). Exact by construction; costs
//            two extra passes over the bf16 operands. with_bf16_fallback() wraps a kernel so.
//
// Scratch: ScratchPool, per-thread grow-only device blocks, one per "slot", allocated and
// freed stream-ordered on stream() (cudaMallocAsync / cudaFreeAsync): reuse across calls is
// ordered by the stream, growing never waits for the GPU, and the steady state (a training step
// repeats the same shapes) allocates nothing.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "runtime/cuda/common.cuh"
#include "runtime/kernel.h"

namespace parallora::rt::cuda {

using bf16_t = __nv_bfloat16;

// ------------------------------------------------------------------ device load / store

__device__ __forceinline__ float ld(const float *p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t *p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16_t *p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// ------------------------------------------------------------------ host helpers

inline bool is_bf16(const Tensor &t) { return t.dtype == plan::ElemType::BF16; }
inline bool is_f32(const Tensor &t) { return t.dtype == plan::ElemType::F32; }

/// The float element types of a set of (present) tensors.
enum class FloatKind { F32, BF16, Mixed };
inline FloatKind float_kind(std::initializer_list<const Tensor *> ts) {
  bool any_f32 = false, any_bf16 = false;
  for (const Tensor *t : ts) {
    if (!t || !t->present()) continue;
    any_f32 |= is_f32(*t);
    any_bf16 |= is_bf16(*t);
  }
  if (any_f32 && any_bf16) return FloatKind::Mixed;
  return any_bf16 ? FloatKind::BF16 : FloatKind::F32;
}

/// Any bf16 operand (input or output) in the call.
bool has_bf16(const KernelCall &c);

/// Per-thread (declare instances thread_local) grow-only device scratch, one block per slot.
class ScratchPool {
public:
  /// At least `bytes` bytes for `slot` (256-byte aligned, never null on success). The block
  /// stays valid until the next get() of the same slot.
  StatusOr<void *> get(size_t slot, size_t bytes);
  template <typename T> StatusOr<T *> get_as(size_t slot, size_t count) {
    StatusOr<void *> p = get(slot, count * sizeof(T));
    if (!p) return p.status();
    return static_cast<T *>(*p);
  }

private:
  struct Block {
    void *p = nullptr;
    size_t bytes = 0;
  };
  std::vector<Block> blocks_;
};

/// dst (f32) = src (bf16), n elements, on stream(). Exact.
Status widen(const void *src_bf16, float *dst, int64_t n);
/// dst (bf16) = src (f32) rounded to nearest even, n elements, on stream().
Status narrow(const float *src, void *dst_bf16, int64_t n);

/// The fallback (file comment): calls fn with every bf16 operand widened to f32 device
/// scratch and narrows the bf16 outputs back; without bf16 operands calls fn as is. Operands
/// that share memory share their widened copy (in-place kernels stay in place). Not for
/// kernels that update their inputs in place (adamw_step) or read operands on the host.
Status run_widened(KernelCall &c, const KernelFn &fn);

/// A kernel wrapped with run_widened (registration of kernels without a native bf16 path).
KernelFn with_bf16_fallback(KernelFn fn);

} // namespace parallora::rt::cuda
