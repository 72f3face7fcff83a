//===- registry.cpp - register_kernels, set_num_threads -------------------===//
#include <omp.h>

#include "runtime/cpu/kernels.h"
#include "runtime/cpu/kernels_impl.h"

// OpenBLAS's thread-count setter, declared weak so a build against another CBLAS (without
// this symbol) still links; then only OpenMP's count is set.
extern "C" void openblas_set_num_threads(int num_threads) __attribute__((weak));

namespace parallora::rt::cpu {

void register_kernels(KernelRegistry &registry) {
  registry.add("embedding_fwd", impl::embedding_fwd);
  registry.add("rms_norm_fwd", impl::rms_norm_fwd);
  registry.add("rms_norm_bwd", impl::rms_norm_bwd);
  registry.add("linear_fwd", impl::linear_fwd);
  registry.add("linear_bwd_input", impl::linear_bwd_input);
  registry.add("lora_linear_fwd", impl::lora_linear_fwd);
  registry.add("lora_linear_bwd", impl::lora_linear_bwd);
  registry.add("rope_fwd", impl::rope_fwd);
  registry.add("rope_bwd", impl::rope_bwd);
  registry.add("attention_fwd", impl::attention_fwd);
  registry.add("attention_bwd", impl::attention_bwd);
  registry.add("swiglu_fwd", impl::swiglu_fwd);
  registry.add("swiglu_bwd", impl::swiglu_bwd);
  registry.add("add", impl::add);
  registry.add("transpose", impl::transpose);
  registry.add("copy", impl::copy);
  registry.add("accumulate", impl::accumulate);
  registry.add("fill_zero", impl::fill_zero);
  registry.add("cross_entropy_fwd", impl::cross_entropy_fwd);
  registry.add("cross_entropy_bwd", impl::cross_entropy_bwd);
  registry.add("adamw_step", impl::adamw_step);
}

void set_num_threads(int n) {
  const int threads = n > 0 ? n : omp_get_num_procs();
  omp_set_num_threads(threads);
  if (openblas_set_num_threads) openblas_set_num_threads(threads);
}

} // namespace parallora::rt::cpu
