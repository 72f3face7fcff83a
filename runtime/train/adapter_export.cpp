//===- adapter_export.cpp - whole adapters in and out of a sharded plan ----===//
#include "runtime/train/adapter_export.h"

#include <cstring>
#include <set>

#include "runtime/base/shape.h"
#include "runtime/core/tensor_slice.h"

namespace parallora::rt {

namespace {
/// The trainable `b` belongs to (itself for a Trainable) on rank `rp`; null if none.
const plan::Buffer *owning_trainable(const plan::RankPlan &rp, const plan::Buffer &b) {
  if (b.kind == plan::BufferKind::Trainable) return &b;
  for (const plan::Buffer &t : rp.buffers)
    if (t.kind == plan::BufferKind::Trainable && t.name == b.param) return &t;
  return nullptr;
}

/// Buffers of `kind` over the plan's ranks (dp rank 0 only when `replica0`), one piece per
/// distinct slice, lowest rank first.
std::vector<FullTrainable> full_tensors(const plan::Plan &plan, plan::BufferKind kind, bool replica0) {
  std::map<std::string, FullTrainable> by_name;
  std::map<std::string, std::set<std::vector<std::pair<int64_t, int64_t>>>> seen;
  for (const plan::RankPlan &r : plan.ranks) {
    if (replica0 && r.dp_rank != 0) continue;
    for (const plan::Buffer &b : r.buffers) {
      if (b.kind != kind) continue;
      const plan::Buffer *t = owning_trainable(r, b);
      const plan::Buffer &geom = t ? *t : b;
      FullTrainable &f = by_name[b.name];
      f.name = b.name;
      if (f.shape.empty()) f.shape = geom.full_shape.empty() ? b.shape : geom.full_shape;
      if (!seen[b.name].insert(geom.slice).second) continue;  // an identical copy came first
      f.pieces.push_back({r.rank, &b, geom.slice});
    }
  }
  std::vector<FullTrainable> out;
  for (auto &kv : by_name) out.push_back(std::move(kv.second));
  return out;
}

Status gather_full(std::vector<FullTrainable> all, Communicator &comm, const Executor &ex, std::vector<FullTensor> *out) {
  const int me = comm.rank();
  int tag = 0;
  std::vector<float> tmp;
  for (FullTrainable &t : all) {
    std::vector<float> full;
    if (me == 0) full.assign(static_cast<size_t>(shape_numel(t.shape)), 0.f);
    for (const TrainablePiece &p : t.pieces) {
      ++tag;
      const plan::Buffer &b = *p.buffer;
      if (p.rank == me) {
        const BufferTensor *bt = ex.find(b.name);
        if (!bt) return Status::error("tensor " + b.name + " missing on rank " + std::to_string(me));
        if (me == 0) {
          if (p.slice.empty()) std::memcpy(full.data(), bt->tensor.f32(), sizeof(float) * b.numel());
          else paste_slice(bt->tensor.f32(), t.shape, p.slice, full.data());
        } else if (Status s = control_send(comm, 0, tag % 30000, bt->tensor.f32(), b.numel()); !s) {
          return s;
        }
      } else if (me == 0) {
        tmp.resize(static_cast<size_t>(b.numel()));
        if (Status s = control_recv(comm, p.rank, tag % 30000, tmp.data(), b.numel()); !s) return s;
        if (p.slice.empty()) std::memcpy(full.data(), tmp.data(), sizeof(float) * b.numel());
        else paste_slice(tmp.data(), t.shape, p.slice, full.data());
      }
    }
    if (me == 0) out->emplace_back(std::move(t), std::move(full));
  }
  return Status::ok();
}
} // namespace

std::vector<FullTrainable> full_trainables(const plan::Plan &plan) {
  return full_tensors(plan, plan::BufferKind::Trainable, /*replica0=*/true);
}

std::vector<FullTrainable> full_optimizer_states(const plan::Plan &plan) {
  return full_tensors(plan, plan::BufferKind::OptState, /*replica0=*/false);
}

Status gather_full_trainables(const plan::Plan &plan, Communicator &comm, const Executor &ex, std::vector<FullTensor> *out) {
  return gather_full(full_trainables(plan), comm, ex, out);
}

Status gather_full_optimizer_states(const plan::Plan &plan, Communicator &comm, const Executor &ex,
                                    std::vector<FullTensor> *out) {
  return gather_full(full_optimizer_states(plan), comm, ex, out);
}

StatusOr<std::map<std::string, std::vector<float>>> take_rank_slices(const plan::Plan &plan, int rank,
                                                                     plan::BufferKind kind,
                                                                     const std::map<std::string, std::vector<float>> &whole) {
  std::map<std::string, std::vector<float>> out;
  if (rank < 0 || rank >= static_cast<int>(plan.ranks.size())) return Status::error("no rank " + std::to_string(rank) + " in the plan");
  const plan::RankPlan &rp = plan.ranks[rank];
  for (const plan::Buffer &b : rp.buffers) {
    if (b.kind != kind) continue;
    auto it = whole.find(b.name);
    if (it == whole.end()) continue;
    const plan::Buffer *t = owning_trainable(rp, b);
    const plan::Buffer &geom = t ? *t : b;
    const std::vector<int64_t> full = geom.full_shape.empty() ? b.shape : geom.full_shape;
    if (static_cast<int64_t>(it->second.size()) != shape_numel(full))
      return Status::error("tensor " + b.name + " has " + std::to_string(it->second.size()) + " values, the plan needs " +
                           std::to_string(shape_numel(full)) + " (" + shape_str(full) + ")");
    if (geom.slice.empty()) {
      out[b.name] = it->second;
      continue;
    }
    std::vector<float> part(static_cast<size_t>(b.numel()));
    take_slice(it->second.data(), full, geom.slice, part.data());
    out[b.name] = std::move(part);
  }
  return out;
}

std::vector<NamedTensor> as_named(const std::vector<FullTensor> &full) {
  std::vector<NamedTensor> out;
  for (auto &[t, data] : full) out.push_back({t.name, t.shape, data.data()});
  return out;
}

std::vector<NamedTensor> named_tensors(const Executor &ex, plan::BufferKind kind) {
  std::vector<NamedTensor> out;
  for (const BufferTensor &t : ex.buffers(kind)) out.push_back({t.buffer->name, t.buffer->shape, t.tensor.f32()});
  return out;
}

Status load_init_adapter(const std::string &dir, const plan::Plan &plan, Executor &ex, plan::LoraInfo *info) {
  auto adapter = read_peft_adapter_with_shapes(dir, info);
  if (!adapter) return adapter.status();
  std::map<std::string, std::vector<float>> values;
  std::map<std::string, std::vector<int64_t>> shapes;
  if (plan.world_size == 1) {
    for (auto &[name, t] : *adapter) {
      shapes[name] = t.shape;
      values[name] = std::move(t.data);
    }
    return ex.set_trainables(values, &shapes);
  }
  // Every rank reads the whole adapter and keeps its trainables (their slices).
  std::set<std::string> plan_names;
  for (const FullTrainable &t : full_trainables(plan)) plan_names.insert(t.name);
  std::vector<std::string> unexpected;
  for (auto &kv : *adapter)
    if (!plan_names.count(kv.first)) unexpected.push_back(kv.first);
  if (!unexpected.empty()) {
    std::string list;
    for (size_t i = 0; i < unexpected.size() && i < 8; ++i) list += (i ? ", " : "") + unexpected[i];
    return Status::error("adapter tensors do not match the plan: not in the plan " + list);
  }
  for (const BufferTensor &t : ex.buffers(plan::BufferKind::Trainable)) {
    const plan::Buffer &b = *t.buffer;
    auto it = adapter->find(b.name);
    if (it == adapter->end()) continue;  // reported by set_trainables
    if (b.slice.empty()) {
      shapes[b.name] = it->second.shape;
      values[b.name] = it->second.data;
      continue;
    }
    std::vector<int64_t> want = b.full_shape;
    bool fits = it->second.shape.size() == b.slice.size();
    for (size_t d = 0; fits && d < b.slice.size(); ++d)
      fits = b.slice[d].first + b.slice[d].second <= it->second.shape[d] && (want.empty() || want[d] == it->second.shape[d]);
    if (!fits)
      return Status::error("tensor " + b.name + " is " + shape_str(it->second.shape) + ", the plan needs " +
                           shape_str(want.empty() ? b.shape : want));
    std::vector<float> part(static_cast<size_t>(b.numel()));
    take_slice(it->second.data.data(), it->second.shape, b.slice, part.data());
    values[b.name] = std::move(part);
    shapes[b.name] = b.shape;
  }
  return ex.set_trainables(values, &shapes);
}

Status export_adapter(const std::string &dir, const plan::Plan &plan, Communicator &comm, const Executor &ex,
                      const std::string &base_model) {
  if (plan.world_size == 1) return write_peft_adapter(dir, plan.lora, base_model, named_tensors(ex, plan::BufferKind::Trainable));
  std::vector<FullTensor> full;
  if (Status s = gather_full_trainables(plan, comm, ex, &full); !s) return Status::error("adapter export: " + s.message());
  if (comm.rank() != 0) return Status::ok();
  return write_peft_adapter(dir, plan.lora, base_model, as_named(full));
}

} // namespace parallora::rt
