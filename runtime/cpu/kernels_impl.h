//===- kernels_impl.h - the CPU kernel functions (private to runtime/cpu) ---===//
//
// One function per kernel of the contract in kernels.h; registry.cpp registers them.
//
//===----------------------------------------------------------------------===//
#pragma once

#include "runtime/kernel.h"

namespace parallora::rt::cpu::impl {

Status embedding_fwd(KernelCall &c);
Status rms_norm_fwd(KernelCall &c);
Status rms_norm_bwd(KernelCall &c);
Status linear_fwd(KernelCall &c);
Status linear_bwd_input(KernelCall &c);
Status lora_linear_fwd(KernelCall &c);
Status lora_linear_bwd(KernelCall &c);
Status rope_fwd(KernelCall &c);
Status rope_bwd(KernelCall &c);
Status attention_fwd(KernelCall &c);
Status attention_bwd(KernelCall &c);
Status swiglu_fwd(KernelCall &c);
Status swiglu_bwd(KernelCall &c);
Status add(KernelCall &c);
Status transpose(KernelCall &c);
Status copy(KernelCall &c);
Status accumulate(KernelCall &c);
Status fill_zero(KernelCall &c);
Status cross_entropy_fwd(KernelCall &c);
Status cross_entropy_bwd(KernelCall &c);
Status adamw_step(KernelCall &c);

} // namespace parallora::rt::cpu::impl
