//===- lower_memory.cpp - storage types, liveness, arena offsets ------------===//
//
// Temporaries that share bytes (views, in-place adds) form one storage group whose live
// interval is the union of its members'; groups are placed by plan_memory() per program, and
// the arena is the largest program's (programs never run at the same time).
//
//===----------------------------------------------------------------------===//
#include "passes/lower/lowering.h"
#include "passes/lower/memory_plan.h"

namespace parallora::lowering {

/// The precision policy (LowerOptions::precision), applied to this program's activations
/// before they are placed: with "bf16" every float activation is stored as bf16, except the
/// ones that hold an adapter gradient on its way into its accumulator (the input of an
/// accumulate / copy / add writing a Grad buffer: gradients are fp32 master state; the usual
/// case, lora_linear_bwd accumulating dA/dB straight into the Grad buffers, has none). Views
/// share their input's bytes, so a storage group takes one type: f32 if any member must be.
void Lowering::storage_types(const plan::Program &prog) {
  if (opts_.precision != "bf16") return;
  const int32_t n = static_cast<int32_t>(rank_.buffers.size());
  llvm::DenseSet<int32_t> keep_f32;  // storage groups
  for (const Instr &in : prog.instrs) {
    if (in.op != "accumulate" && in.op != "copy" && in.op != "add") continue;
    bool writes_grad = llvm::any_of(in.outputs, [&](int32_t id) {
      return id >= 0 && rank_.buffers[id].kind == BufferKind::Grad;
    });
    if (!writes_grad) continue;
    for (int32_t id : in.inputs)
      if (is_temp(id)) keep_f32.insert(root(id));
  }
  for (int32_t id = first_buffer_; id < n; ++id) {
    Buffer &b = rank_.buffers[id];
    if (is_temp(id) && b.dtype == plan::ElemType::F32 && !keep_f32.count(root(id))) b.dtype = plan::ElemType::BF16;
  }
}

/// True when no op after `op` reads `v` or any value sharing its storage.
bool Lowering::last_use_in(Operation &op, Value v, const llvm::DenseMap<Value, int32_t> &buf) {
  int32_t g = root(buf.lookup(v));
  for (Operation *cur = op.getNextNode(); cur; cur = cur->getNextNode())
    for (Value o : cur->getOperands()) {
      auto it = buf.find(o);
      if (it != buf.end() && is_temp(it->second) && root(it->second) == g) return false;
      // Values defined later are not in `buf` yet; a view of `v` defined later would be.
      if (it == buf.end())
        if (auto r = o.getDefiningOp<pl::ReshapeOp>(); r && buf.count(r.getInput()) &&
                                                      root(buf.lookup(r.getInput())) == g)
          return false;
    }
  return true;
}

/// Live intervals of this program's storage groups -> arena offsets.
LogicalResult Lowering::place(plan::Program &prog) {
  llvm::DenseMap<int32_t, std::pair<int64_t, int64_t>> span;  // group -> [first, last]
  for (int64_t i = 0; i < static_cast<int64_t>(prog.instrs.size()); ++i) {
    const Instr &in = prog.instrs[i];
    for (const auto *list : {&in.inputs, &in.outputs})
      for (int32_t id : *list) {
        if (!is_temp(id)) continue;
        int32_t g = root(id);
        auto it = span.find(g);
        if (it == span.end()) span[g] = {i, i};
        else it->second = {std::min(it->second.first, i), std::max(it->second.second, i)};
      }
  }
  std::vector<int32_t> groups;
  std::vector<LiveInterval> intervals;
  for (auto &[g, s] : span) {
    int64_t bytes = 0;
    for (int32_t id = first_buffer_; id < static_cast<int32_t>(rank_.buffers.size()); ++id)
      if (is_temp(id) && root(id) == g) bytes = std::max(bytes, rank_.buffers[id].nbytes());
    groups.push_back(g);
    intervals.push_back({bytes, s.first, s.second});
  }
  MemoryPlan mp = plan_memory(intervals);
  llvm::DenseMap<int32_t, int64_t> offset;
  for (size_t i = 0; i < groups.size(); ++i) offset[groups[i]] = mp.offsets[i];
  for (int32_t id = first_buffer_; id < static_cast<int32_t>(rank_.buffers.size()); ++id)
    if (is_temp(id)) {
      auto it = offset.find(root(id));
      rank_.buffers[id].offset = it == offset.end() ? 0 : it->second;  // unused views: harmless
    }
  rank_.arena_bytes = std::max(rank_.arena_bytes, mp.arena_bytes);
  return success();
}

} // namespace parallora::lowering
