//===- kernel_list.h - the names of the kernel contract, once --------------===//
//
// X-macro over the compute kernels of the contract (runtime/cpu/kernels.h) that every backend
// implements as impl::<name>(KernelCall &): each backend's registry expands it, so the CPU and
// CUDA registries cannot drift apart. fill_zero and the collectives are registered separately
// (their implementations live outside the backends' impl namespaces).
//
//===----------------------------------------------------------------------===//
#pragma once

#define PARALLORA_CONTRACT_KERNELS(X)                                                              \
  X(embedding_fwd) X(rms_norm_fwd) X(rms_norm_bwd) X(linear_fwd) X(linear_bwd_input)               \
  X(lora_linear_fwd) X(lora_linear_bwd) X(rope_fwd) X(rope_bwd) X(attention_fwd) X(attention_bwd)  \
  X(swiglu_fwd) X(swiglu_bwd) X(add) X(transpose) X(copy) X(accumulate) X(cross_entropy_fwd)       \
  X(cross_entropy_bwd) X(adamw_step)
