//===- kernels_impl.h - the CUDA kernel entry points (one per contract name) ---===//
//
// Host functions (compiled by nvcc) that check operands like the CPU twins and launch on
// stream(). Registered by register_kernels() (backend.cu).
//
//===----------------------------------------------------------------------===//
#pragma once

#include "runtime/kernel.h"

namespace parallora::rt::cuda::impl {

// pointwise.cu
Status embedding_fwd(KernelCall &c);
Status rms_norm_fwd(KernelCall &c);
Status rms_norm_bwd(KernelCall &c);
Status rope_fwd(KernelCall &c);
Status rope_bwd(KernelCall &c);
Status swiglu_fwd(KernelCall &c);
Status swiglu_bwd(KernelCall &c);
Status add(KernelCall &c);
Status transpose(KernelCall &c);
Status copy(KernelCall &c);
Status accumulate(KernelCall &c);
// loss_optim.cu
Status cross_entropy_fwd(KernelCall &c);
Status cross_entropy_bwd(KernelCall &c);
Status adamw_step(KernelCall &c);
// matmul.cu (cuBLASLt)
Status linear_fwd(KernelCall &c);
Status linear_bwd_input(KernelCall &c);
Status lora_linear_fwd(KernelCall &c);
Status lora_linear_bwd(KernelCall &c);
// attention.cu
Status attention_fwd(KernelCall &c);
Status attention_bwd(KernelCall &c);

} // namespace parallora::rt::cuda::impl
