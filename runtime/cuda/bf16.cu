//===- bf16.cu - widen / narrow kernels, scratch pool, the bf16 fallback ----===//
#include "runtime/cuda/bf16.cuh"

#include <algorithm>
#include <utility>

#include "runtime/cuda/device_util.cuh"

namespace parallora::rt::cuda {

namespace {

__global__ void widen_kernel(const bf16_t *src, float *dst, int64_t n) {
  PARALLORA_GRID_LOOP(i, n) dst[i] = __bfloat162float(src[i]);
}

__global__ void narrow_kernel(const float *src, bf16_t *dst, int64_t n) {
  PARALLORA_GRID_LOOP(i, n) dst[i] = __float2bfloat16_rn(src[i]);
}

} // namespace

bool has_bf16(const KernelCall &c) {
  for (const Tensor &t : c.in)
    if (t.present() && is_bf16(t)) return true;
  for (const Tensor &t : c.out)
    if (t.present() && is_bf16(t)) return true;
  return false;
}

StatusOr<void *> ScratchPool::get(size_t slot, size_t bytes) {
  if (slot >= blocks_.size()) blocks_.resize(slot + 1);
  Block &b = blocks_[slot];
  const size_t want = std::max<size_t>(bytes, 256);
  if (want > b.bytes) {
    // A CUDA graph must neither own nor free a block (graph.cuh): refuse the capture; once
    // graphs exist, the old block may be baked into one: keep it.
    if (graph::capturing()) return graph::refuse_capture("a scratch pool would grow");
    if (b.p && graph::graphs_exist())
      graph::retire(b.p, false);
    else if (b.p)
      cudaFreeAsync(b.p, stream());  // after the queued work that uses it
    b.p = nullptr;
    b.bytes = 0;
    if (Status s = cuda_status(cudaMallocAsync(&b.p, want, stream()), "cudaMallocAsync (bf16 scratch)"); !s) {
      b.p = nullptr;
      return s;
    }
    b.bytes = want;
  }
  return b.p;
}

Status widen(const void *src_bf16, float *dst, int64_t n) {
  if (n <= 0) return Status::ok();
  widen_kernel<<<blocks_for(n), 256, 0, stream()>>>(static_cast<const bf16_t *>(src_bf16), dst, n);
  return check_launch("bf16 widen");
}

Status narrow(const float *src, void *dst_bf16, int64_t n) {
  if (n <= 0) return Status::ok();
  narrow_kernel<<<blocks_for(n), 256, 0, stream()>>>(src, static_cast<bf16_t *>(dst_bf16), n);
  return check_launch("bf16 narrow");
}

Status run_widened(KernelCall &c, const KernelFn &fn) {
  if (!has_bf16(c)) return fn(c);
  thread_local ScratchPool pool;
  KernelCall w = c;
  struct Widened {
    const void *orig;
    int64_t n;
    float *copy;
  };
  std::vector<Widened> done;
  size_t slot = 0;
  auto widen_one = [&](Tensor &t) -> Status {
    if (!t.present() || !is_bf16(t)) return Status::ok();
    const int64_t n = t.numel();
    float *copy = nullptr;
    for (const Widened &d : done)
      if (d.orig == t.data && d.n >= n) copy = d.copy;  // an aliased operand: share its copy
    if (!copy) {
      StatusOr<float *> p = pool.get_as<float>(slot++, size_t(n));
      if (!p) return p.status();
      copy = *p;
      if (Status s = widen(t.data, copy, n); !s) return s;
      done.push_back({t.data, n, copy});
    }
    t.data = copy;
    t.dtype = plan::ElemType::F32;
    return Status::ok();
  };
  // Outputs too, with their current values: accumulate = 1 and in-place kernels read them.
  for (Tensor &t : w.in)
    if (Status s = widen_one(t); !s) return s;
  for (Tensor &t : w.out)
    if (Status s = widen_one(t); !s) return s;
  if (Status s = fn(w); !s) return s;
  for (size_t j = 0; j < c.out.size(); ++j)
    if (c.out[j].present() && is_bf16(c.out[j]))
      if (Status s = narrow(w.out[j].f32(), c.out[j].data, c.out[j].numel()); !s) return s;
  return Status::ok();
}

KernelFn with_bf16_fallback(KernelFn fn) {
  return [fn = std::move(fn)](KernelCall &c) { return run_widened(c, fn); };
}

} // namespace parallora::rt::cuda
