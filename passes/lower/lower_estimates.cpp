//===- lower_estimates.cpp - predicted bytes, memory and FLOPs per rank -----===//
//
// What the plan records for the runtime to compare against (measured == predicted bytes
// is checked for every parallel strategy): bytes sent per collective kind and step, in
// runtime/plan/collective_bytes.h's convention, the peak memory and the FLOPs per step.
//
//===----------------------------------------------------------------------===//
#include "passes/lower/lowering.h"
#include "runtime/plan/collective_bytes.h"

namespace parallora::lowering {

/// Ranks in a collective group of the mesh ("dp,tp" -> dp * tp).
int Lowering::group_ranks(const std::string &group, const Mesh3 &m) {
  int g = 1;
  llvm::SmallVector<llvm::StringRef> axes;
  llvm::StringRef(group).split(axes, ',', -1, false);
  for (llvm::StringRef a : axes) g *= static_cast<int>(a == "dp" ? m.dp : a == "tp" ? m.tp : a == "pp" ? m.pp : 1);
  return g;
}

/// Bytes one execution of `in` sends (runtime/plan/collective_bytes.h's convention, per call).
void Lowering::bytes_sent(const Instr &in, const Mesh3 &m, std::map<std::string, int64_t> &by_kind, int64_t times) {
  auto group_of = [&](const char *key) {
    auto it = in.attrs.find(key);
    return it == in.attrs.end() ? std::string() : std::get<std::string>(it->second);
  };
  auto all_reduce = [&](int64_t bytes, const std::string &group) {
    by_kind["all_reduce"] += times * rt::all_reduce_bytes_sent(bytes, group_ranks(group, m));
  };
  if (in.op == "all_reduce_wait") return;  // counted at its all_reduce_start
  if (in.op == "all_reduce_start") times = 1;  // starts on the step's last micro-batch only
  if (in.op == "all_reduce" || in.op == "all_reduce_start") {
    int64_t n = 0;
    for (int32_t id : in.inputs) n += rank_.buffers[id].nbytes();
    all_reduce(n, group_of("group"));
  } else if (in.op == "send") {
    by_kind["send"] += times * rank_.buffers[in.inputs[0]].nbytes();
  } else if ((in.op == "cross_entropy_fwd" || in.op == "cross_entropy_bwd") && in.attrs.count("vocab_group")) {
    const Buffer &logits = rank_.buffers[in.inputs[0]];
    int64_t rows = logits.numel() / logits.shape.back();
    std::string g = group_of("vocab_group");
    all_reduce(rows * 4, g);                                          // row maxima
    all_reduce((in.op == "cross_entropy_fwd" ? 2 : 1) * rows * 4, g);  // sums of exp (+ target logits)
  } else if (in.op == "adamw_step" && !group_of("norm_group").empty()) {
    all_reduce(4, group_of("norm_group"));
  }
}

void Lowering::estimates(plan::Plan &p, const Mesh3 &mesh) {
  for (const Buffer &b : rank_.buffers) {
    switch (b.kind) {
    case BufferKind::Param:
    case BufferKind::Trainable: rank_.param_bytes += b.nbytes(); break;
    case BufferKind::Grad: rank_.grad_bytes += b.nbytes(); break;
    case BufferKind::OptState: rank_.optimizer_bytes += b.nbytes(); break;
    case BufferKind::Input:
    case BufferKind::Output: io_bytes_ += b.nbytes(); break;
    default: break;
    }
  }
  rank_.peak_bytes =
      rank_.param_bytes + rank_.grad_bytes + rank_.optimizer_bytes + (io_bytes_ + rank_.arena_bytes) * rank_.slots;
  double opt = 0, fwd = 0, bwd = 0;
  for (const plan::Program &prog : rank_.programs) {
    double f = 0, through_loss = 0;  // all, and up to the loss (a micro_step's forward)
    bool past_loss = false;
    for (const Instr &in : prog.instrs) {
      f += in.flops;
      if (!past_loss) through_loss += in.flops;
      past_loss |= in.op == "cross_entropy_fwd";
    }
    if (prog.name == "micro_step") rank_.forward_flops = through_loss, rank_.backward_flops = f - through_loss;
    // Pipelines: every chunk's forward; the whole backward (zb-h1: B + W) of every chunk.
    const llvm::StringRef name = prog.name;
    if (name == "forward" || name.startswith("forward.c")) fwd += f;
    if (name == "backward" || name.startswith("backward.c") || name.startswith("backward_weight")) bwd += f;
    if (prog.name == "optimizer_step") opt = f;
    int64_t times = prog.name == "optimizer_step" ? 1 : prog.name == "eval_step" ? 0 : p.micro_batches;
    for (const Instr &in : prog.instrs) bytes_sent(in, mesh, rank_.bytes_sent, times);
  }
  if (fwd > 0 || bwd > 0) rank_.forward_flops = fwd, rank_.backward_flops = bwd;
  rank_.flops_per_step = (rank_.forward_flops + rank_.backward_flops) * p.micro_batches + opt;
}

} // namespace parallora::lowering
