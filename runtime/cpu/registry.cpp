//===- registry.cpp - register_kernels, set_num_threads -------------------===//
#include <atomic>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "runtime/base/bf16.h"
#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cpu/kernels_impl.h"
#include "runtime/kernel_list.h"

// OpenBLAS's thread-count setter, declared weak so a build against another CBLAS (without
// this symbol) still links; then only OpenMP's count is set.
extern "C" void openblas_set_num_threads(int num_threads) __attribute__((weak));

namespace parallora::rt::cpu {

namespace {

bool is_bf16(const Tensor &t) { return t.present() && t.dtype == plan::ElemType::BF16; }

void widen(const uint16_t *src, float *dst, int64_t n) {
#pragma omp parallel for schedule(static) if (n > detail::kParallelWork)
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}
void narrow(const float *src, uint16_t *dst, int64_t n) {
#pragma omp parallel for schedule(static) if (n > detail::kParallelWork)
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

/// True when kernel `c` reads its outputs before writing them (`accumulate`).
bool reads_outputs(const KernelCall &c) {
  return c.instr->op == "accumulate" || c.attr_i("accumulate", 0) != 0;
}

/// Bytes of bf16 widening scratch held over all threads (only grows: the high-water mark).
std::atomic<int64_t> g_scratch_bytes{0};
void note_scratch_growth(int64_t bytes) { g_scratch_bytes.fetch_add(bytes, std::memory_order_relaxed); }

/// bf16 storage (--precision bf16) for an f32 kernel: the operands stored as bf16 are widened
/// into f32 scratch (each storage once, so aliased operands stay aliased), the f32 kernel runs
/// unchanged, and its bf16 outputs are rounded back once (runtime/base/bf16.h). This is the reference
/// semantics of every backend: f32 math on the widened values, one rounding per stored element.
/// The scratch is per thread and only grows: no allocation in steady state.
KernelFn widen_bf16(KernelFn f) {
  return [f = std::move(f)](KernelCall &c) -> Status {
    if (std::none_of(c.in.begin(), c.in.end(), is_bf16) && std::none_of(c.out.begin(), c.out.end(), is_bf16))
      return f(c);
    struct Scratch {
      KernelCall call;
      std::vector<std::vector<float>> pool;
      std::vector<const void *> keys;  // keys[i]: the bf16 storage pool[i] widens
    };
    thread_local Scratch w;
    w.call.instr = c.instr;
    w.call.step = c.step;
    w.call.comm = c.comm;
    w.call.in = c.in;
    w.call.out = c.out;
    w.keys.clear();
    auto widened = [&](Tensor &t, bool load) {
      for (size_t i = 0; i < w.keys.size(); ++i)
        if (w.keys[i] == t.data) return w.pool[i].data();
      const size_t k = w.keys.size();
      if (w.pool.size() <= k) w.pool.emplace_back();
      const size_t before = w.pool[k].capacity();
      w.pool[k].resize(static_cast<size_t>(t.numel()));
      if (w.pool[k].capacity() > before)  // capacity only grows: count what was added
        note_scratch_growth(static_cast<int64_t>(w.pool[k].capacity() - before) * 4);
      w.keys.push_back(t.data);
      if (load) widen(t.bf16(), w.pool[k].data(), t.numel());
      return w.pool[k].data();
    };
    for (Tensor &t : w.call.in)
      if (is_bf16(t)) t.data = widened(t, true), t.dtype = plan::ElemType::F32;
    const bool load_out = reads_outputs(c);
    for (Tensor &t : w.call.out)
      if (is_bf16(t)) t.data = widened(t, load_out), t.dtype = plan::ElemType::F32;
    Status s = f(w.call);
    if (!s) return s;
    for (size_t i = 0; i < c.out.size(); ++i)
      if (is_bf16(c.out[i])) narrow(w.call.out[i].f32(), c.out[i].bf16(), c.out[i].numel());
    return s;
  };
}

} // namespace

void register_kernels(KernelRegistry &registry) {
  KernelRegistry f32;
  register_f32_kernels(f32);
  for (const std::string &name : f32.names()) {
    const KernelFn &fn = *f32.find(name);
    // adamw_step and fill_zero work on the f32 master state only.
    registry.add(name, name == "adamw_step" || name == "fill_zero" ? fn : widen_bf16(fn));
  }
}

void register_f32_kernels(KernelRegistry &registry) {
#define PARALLORA_ADD(name) registry.add(#name, impl::name);
  PARALLORA_CONTRACT_KERNELS(PARALLORA_ADD)
#undef PARALLORA_ADD
  registry.add("fill_zero", impl::fill_zero);
}

int64_t scratch_bytes() { return g_scratch_bytes.load(std::memory_order_relaxed); }

void set_num_threads(int n) {
  const int threads = n > 0 ? n : omp_get_num_procs();
  omp_set_num_threads(threads);
  if (openblas_set_num_threads) openblas_set_num_threads(threads);
}

} // namespace parallora::rt::cpu
