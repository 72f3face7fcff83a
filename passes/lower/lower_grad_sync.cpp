//===- lower_grad_sync.cpp - ZeRO-1 per rank, overlapped gradient buckets ---===//
//
// Two rewrites of the lowered programs around the gradient all-reduce: ZeRO-1's per-rank
// share of the AdamW step, and the start of each bucket's all-reduce inside the backward.
//
//===----------------------------------------------------------------------===//
#include "passes/lower/lowering.h"

namespace parallora::lowering {

/// ZeRO-1 on this rank: its AdamW step keeps only the trainables it owns (attr zero_owners ==
/// its dp index), the moments of the others are dropped from the buffer table, and the
/// broadcast of the updated trainables is counted (the owner sends to dp - 1 replicas).
LogicalResult Lowering::shard_optimizer(plan::RankPlan &rp, const Mesh3 &mesh) {
  for (plan::Program &prog : rp.programs)
    for (Instr &in : prog.instrs) {
      if (in.op == "broadcast") {
        const auto &roots = std::get<std::vector<int64_t>>(in.attrs.at("roots"));
        int64_t owned = 0;
        for (size_t i = 0; i < roots.size(); ++i)
          if (roots[i] == rp.dp_rank) owned += rp.buffers[in.inputs[i]].nbytes();
        if (owned > 0) rp.bytes_sent["broadcast"] += (mesh.dp - 1) * owned;
      }
      auto z = in.attrs.find("zero_owners");
      if (in.op != "adamw_step" || z == in.attrs.end()) continue;
      const auto owners = std::get<std::vector<int64_t>>(z->second);
      const size_t n = owners.size();
      if (in.inputs.size() != 4 * n) return module_.emitError("lower: adamw_step operands do not match zero_owners"), failure();
      std::vector<int32_t> inputs[4], others_grads;
      std::vector<int64_t> divisors, kept;
      auto div = in.attrs.find("norm_divisors");
      for (size_t i = 0; i < n; ++i) {
        if (owners[i] != rp.dp_rank) {
          others_grads.push_back(in.inputs[n + i]);  // their owner updates them; still zero them here
          continue;
        }
        for (int k = 0; k < 4; ++k) inputs[k].push_back(in.inputs[k * n + i]);
        if (div != in.attrs.end()) divisors.push_back(std::get<std::vector<int64_t>>(div->second)[i]);
        kept.push_back(owners[i]);
      }
      in.inputs.clear();
      for (auto &l : inputs) in.inputs.insert(in.inputs.end(), l.begin(), l.end());
      in.attrs["n"] = int64_t(kept.size());
      if (div != in.attrs.end()) div->second = divisors;
      in.attrs["zero_owners"] = kept;
      if (!others_grads.empty()) zero_after_ = {&prog, others_grads};
    }
  // The gradients this rank does not update are zeroed right after its AdamW step (the
  // next step's all-reduce must not add them twice).
  if (zero_after_.first) {
    plan::Program &prog = *zero_after_.first;
    for (size_t i = 0; i < prog.instrs.size(); ++i)
      if (prog.instrs[i].op == "adamw_step") {
        Instr z;
        z.op = "fill_zero";
        z.outputs = zero_after_.second;
        z.loc = prog.instrs[i].loc;
        prog.instrs.insert(prog.instrs.begin() + static_cast<std::ptrdiff_t>(i) + 1, std::move(z));
        break;
      }
    zero_after_ = {};
  }
  // Drop the moments no instruction refers to any more; renumber the buffers.
  std::vector<char> used(rp.buffers.size(), 0);
  for (const plan::Program &prog : rp.programs)
    for (const Instr &in : prog.instrs) {
      for (int32_t id : in.inputs)
        if (id >= 0) used[id] = 1;
      for (int32_t id : in.outputs)
        if (id >= 0) used[id] = 1;
    }
  std::vector<int32_t> remap(rp.buffers.size(), -1);
  std::vector<Buffer> kept_buffers;
  for (size_t i = 0; i < rp.buffers.size(); ++i) {
    if (rp.buffers[i].kind == BufferKind::OptState && !used[i]) {
      rp.optimizer_bytes -= rp.buffers[i].nbytes();
      rp.peak_bytes -= rp.buffers[i].nbytes();
      continue;
    }
    remap[i] = static_cast<int32_t>(kept_buffers.size());
    kept_buffers.push_back(std::move(rp.buffers[i]));
    kept_buffers.back().id = remap[i];
  }
  if (kept_buffers.size() == rp.buffers.size()) {
    rp.buffers = std::move(kept_buffers);
    return success();
  }
  rp.buffers = std::move(kept_buffers);
  for (plan::Program &prog : rp.programs)
    for (Instr &in : prog.instrs) {
      for (int32_t &id : in.inputs)
        if (id >= 0) id = remap[id];
      for (int32_t &id : in.outputs)
        if (id >= 0) id = remap[id];
    }
  return success();  // (the tp slices were set before: buffers keep them when renumbered)
}

/// Overlap of the gradient sync with the backward: every gradient bucket's all_reduce in
/// optimizer_step becomes an all_reduce_start in the backward (micro_step, or the pipeline
/// stage's backward) right after the instruction that writes the bucket's last gradient, and
/// an all_reduce_wait where the all_reduce was. The runtime starts it only on the step's last
/// micro-batch (StepState::last_micro), so the rest of that backward runs while the bucket
/// travels; the wait completes it before the optimizer. Buckets are ordered last layer first,
/// so the starts come out in bucket order, the same on every rank of a group.
void Lowering::overlap_grad_sync() {
  plan::Program *bwd = nullptr, *opt = nullptr;
  for (plan::Program &prog : rank_.programs) {
    if (prog.name == "micro_step" || prog.name == "backward") bwd = &prog;
    if (prog.name == "optimizer_step") opt = &prog;
  }
  // zb-h1: the adapter gradients are written by the weight-gradient program, which runs last.
  for (plan::Program &prog : rank_.programs)
    if (prog.name == "backward_weight" && !prog.instrs.empty()) bwd = &prog;
  if (!bwd || !opt) return;
  std::vector<std::pair<size_t, Instr>> starts;  // (after backward instruction #, start)
  for (Instr &in : opt->instrs) {
    if (in.op != "all_reduce" || !in.attrs.count("bucket")) continue;
    llvm::DenseSet<int32_t> grads(in.inputs.begin(), in.inputs.end());
    int64_t last = -1;
    for (size_t i = 0; i < bwd->instrs.size(); ++i)
      for (int32_t id : bwd->instrs[i].outputs)
        if (grads.count(id)) last = static_cast<int64_t>(i);
    if (last < 0) continue;  // not produced by this backward: stays a blocking all_reduce
    Instr st;
    st.op = "all_reduce_start";
    st.inputs = in.inputs;
    st.attrs = in.attrs;
    st.loc = in.loc;
    starts.emplace_back(static_cast<size_t>(last), std::move(st));
    in.op = "all_reduce_wait";
  }
  if (starts.empty()) return;
  std::stable_sort(starts.begin(), starts.end(),
                   [](const auto &a, const auto &b) { return a.first < b.first; });
  std::vector<Instr> out;
  out.reserve(bwd->instrs.size() + starts.size());
  size_t k = 0;
  for (size_t i = 0; i < bwd->instrs.size(); ++i) {
    out.push_back(std::move(bwd->instrs[i]));
    for (; k < starts.size() && starts[k].first == i; ++k) out.push_back(std::move(starts[k].second));
  }
  bwd->instrs = std::move(out);
}

} // namespace parallora::lowering
