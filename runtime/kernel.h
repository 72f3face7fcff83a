//===- kernel.h - the kernel calling convention shared by all backends ----===//
//
// An instruction of the plan (runtime/plan/plan.h) runs as one kernel call. The executor
// resolves every buffer to a Tensor once at load time, so a kernel sees ready pointers.
// Kernels return a Status; they never exit or throw for bad data (an out-of-range token id,
// say, is an error naming the value and the instruction's module path).
//
// THE KERNEL CONTRACT (names, operand order, attributes) is documented in runtime/cpu/kernels.h
// and is the same for every backend.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/plan/plan.h"

namespace parallora::rt {

struct Tensor {
  void *data = nullptr;                 // nullptr for an absent optional operand
  plan::ElemType dtype = plan::ElemType::F32;
  std::vector<int64_t> shape;

  bool present() const { return data != nullptr; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  int rank() const { return static_cast<int>(shape.size()); }
  float *f32() const { return static_cast<float *>(data); }
  int32_t *i32() const { return static_cast<int32_t *>(data); }
  uint16_t *bf16() const { return static_cast<uint16_t *>(data); }  // runtime/base/bf16.h
  int64_t nbytes() const { return numel() * plan::elem_size(dtype); }
};

/// Per-step values the runtime supplies to kernels that need them (the optimizer).
struct StepState {
  int64_t step = 0;          // 1-based optimizer step being applied
  double lr = 0;             // learning rate of this step (after the schedule)
  double grad_norm = 0;      // written by adamw_step: global L2 norm before clipping
  bool grad_norm_finite = true;  // written by adamw_step; a non-finite norm skips the update
  // micro_step / backward: false on every micro-batch but the optimizer step's last one
  // (all_reduce_start only starts the gradient sync after the last accumulation).
  bool last_micro = true;
  // LoRA dropout (runtime/lora_dropout.h): the run's seed and the global batch index of this
  // micro-batch's first sequence. Set for every training program (micro_step, forward,
  // backward); eval programs carry no dropout.
  uint64_t seed = 0;
  int64_t first_sample = 0;
};

class Communicator;  // runtime/comm/comm.h

struct KernelCall {
  const plan::Instr *instr = nullptr;
  std::vector<Tensor> in;    // in the instruction's input order
  std::vector<Tensor> out;   // in the instruction's output order
  StepState *step = nullptr;
  // The rank's communicator (nullptr in single-rank use without one): collective kernels and
  // kernels with a `vocab_group` / `norm_group` attribute reduce through it.
  Communicator *comm = nullptr;

  int64_t attr_i(const std::string &name, int64_t dflt) const;
  double attr_f(const std::string &name, double dflt) const;
  std::string attr_s(const std::string &name, const std::string &dflt) const;
  std::vector<int64_t> attr_ints(const std::string &name) const;
  bool has_attr(const std::string &name) const;
  /// True when attr `name` is an integer (or a double holding an integral value).
  bool has_int_attr(const std::string &name) const;
};

using KernelFn = std::function<Status(KernelCall &)>;

/// One registry per backend: kernel name -> function.
class KernelRegistry {
public:
  void add(const std::string &name, KernelFn fn) { kernels_[name] = std::move(fn); }
  const KernelFn *find(const std::string &name) const {
    auto it = kernels_.find(name);
    return it == kernels_.end() ? nullptr : &it->second;
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (auto &kv : kernels_) out.push_back(kv.first);
    return out;
  }

private:
  std::map<std::string, KernelFn> kernels_;
};

} // namespace parallora::rt
