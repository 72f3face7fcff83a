//===- plan_io.cpp - plan files: write, read + validate, describe, fingerprint ===//
//
// Over 800 lines on purpose: most of it is the reader's validation, one check and one message per
// plan field, kept in one file so the format's rules read in one place next to its framing.
//
//===----------------------------------------------------------------------===//
#include "runtime/plan/plan_io.h"
#include "runtime/plan/schedule.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <iomanip>
#include <map>
#include <set>
#include <sstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "runtime/base/fs_util.h"
#include "runtime/plan/plan.pb.h"

namespace parallora::plan {
namespace {

constexpr size_t kHeaderBytes = 8 + 4 + 8;
constexpr size_t kTrailerBytes = 4;

// ------------------------------------------------------------------ struct <-> protobuf

void to_pb(const Buffer &b, pb::Buffer *out) {
  out->set_id(b.id);
  out->set_name(b.name);
  out->set_kind(static_cast<int32_t>(b.kind));
  out->set_dtype(static_cast<int32_t>(b.dtype));
  for (int64_t d : b.shape) out->add_shape(d);
  out->set_offset(b.offset);
  out->set_init(b.init);
  out->set_param(b.param);
  for (auto &[start, size] : b.slice) {
    auto *r = out->add_slice();
    r->set_start(start);
    r->set_size(size);
  }
  for (int64_t d : b.full_shape) out->add_full_shape(d);
}

void to_pb(const Instr &in, pb::Instr *out) {
  out->set_op(in.op);
  for (int32_t i : in.inputs) out->add_inputs(i);
  for (int32_t o : in.outputs) out->add_outputs(o);
  for (auto &[name, value] : in.attrs) {
    auto *a = out->add_attrs();
    a->set_name(name);
    if (auto *i = std::get_if<int64_t>(&value)) a->set_i(*i);
    else if (auto *f = std::get_if<double>(&value)) a->set_f(*f);
    else if (auto *s = std::get_if<std::string>(&value)) a->set_s(*s);
    else {
      auto *list = a->mutable_ints();
      for (int64_t v : std::get<std::vector<int64_t>>(value)) list->add_values(v);
    }
  }
  out->set_loc(in.loc);
  out->set_layer(in.layer);
  out->set_flops(in.flops);
}

void to_pb(const Plan &p, pb::Plan *out) {
  out->set_producer(p.producer);
  out->set_model_config_json(p.model_config_json);
  out->set_base_weights(p.base_weights);
  out->set_adapter_weights(p.adapter_weights);
  auto *l = out->mutable_lora();
  l->set_rank(p.lora.rank);
  l->set_alpha(p.lora.alpha);
  l->set_dropout(p.lora.dropout);
  l->set_use_rslora(p.lora.use_rslora);
  for (auto &t : p.lora.target_modules) l->add_target_modules(t);
  auto *h = out->mutable_hparams();
  h->set_lr(p.hparams.lr);
  h->set_schedule(p.hparams.schedule);
  h->set_warmup_steps(p.hparams.warmup_steps);
  h->set_min_lr_ratio(p.hparams.min_lr_ratio);
  h->set_total_steps(p.hparams.total_steps);
  h->set_weight_decay(p.hparams.weight_decay);
  h->set_beta1(p.hparams.beta1);
  h->set_beta2(p.hparams.beta2);
  h->set_eps(p.hparams.eps);
  h->set_max_grad_norm(p.hparams.max_grad_norm);
  out->set_global_batch(p.global_batch);
  out->set_seq_len(p.seq_len);
  out->set_micro_batches(p.micro_batches);
  out->set_vocab_size(p.vocab_size);
  out->set_ignore_index(p.ignore_index);
  out->set_world_size(p.world_size);
  auto *mesh = out->mutable_mesh();
  mesh->set_dp(p.mesh.dp);
  mesh->set_tp(p.mesh.tp);
  mesh->set_pp(p.mesh.pp);
  out->set_strategy(p.strategy);
  out->set_pipeline_schedule(p.pipeline_schedule);
  if (p.virtual_stages > 1) out->set_virtual_stages(p.virtual_stages);
  out->set_precision(p.precision);
  for (const RankPlan &r : p.ranks) {
    auto *rp = out->add_ranks();
    rp->set_rank(r.rank);
    rp->set_dp_rank(r.dp_rank);
    rp->set_tp_rank(r.tp_rank);
    rp->set_pp_stage(r.pp_stage);
    rp->set_slots(r.slots);
    for (auto &[kind, bytes] : r.bytes_sent) {  // std::map: sorted by kind
      auto *kb = rp->add_bytes_sent();
      kb->set_kind(kind);
      kb->set_bytes(bytes);
    }
    rp->set_forward_flops(r.forward_flops);
    rp->set_backward_flops(r.backward_flops);
    rp->set_bubble_fraction(r.bubble_fraction);
    for (const Buffer &b : r.buffers) to_pb(b, rp->add_buffers());
    for (const Program &prog : r.programs) {
      auto *pp = rp->add_programs();
      pp->set_name(prog.name);
      for (const Instr &in : prog.instrs) to_pb(in, pp->add_instrs());
    }
    rp->set_arena_bytes(r.arena_bytes);
    rp->set_param_bytes(r.param_bytes);
    rp->set_grad_bytes(r.grad_bytes);
    rp->set_optimizer_bytes(r.optimizer_bytes);
    rp->set_peak_bytes(r.peak_bytes);
    rp->set_flops_per_step(r.flops_per_step);
  }
}

std::string payload_of(const Plan &plan) {
  pb::Plan msg;
  to_pb(plan, &msg);
  std::string bytes;
  google::protobuf::io::StringOutputStream sos(&bytes);
  {
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);
    msg.SerializeToCodedStream(&cos);
  }
  return bytes;
}

Status from_pb(const pb::Plan &m, Plan &p) {
  p.producer = m.producer();
  p.model_config_json = m.model_config_json();
  p.base_weights = m.base_weights();
  p.adapter_weights = m.adapter_weights();
  p.lora.rank = m.lora().rank();
  p.lora.alpha = m.lora().alpha();
  p.lora.dropout = m.lora().dropout();
  p.lora.use_rslora = m.lora().use_rslora();
  p.lora.target_modules.assign(m.lora().target_modules().begin(), m.lora().target_modules().end());
  const auto &h = m.hparams();
  p.hparams.lr = h.lr();
  p.hparams.schedule = h.schedule();
  p.hparams.warmup_steps = h.warmup_steps();
  p.hparams.min_lr_ratio = h.min_lr_ratio();
  p.hparams.total_steps = h.total_steps();
  p.hparams.weight_decay = h.weight_decay();
  p.hparams.beta1 = h.beta1();
  p.hparams.beta2 = h.beta2();
  p.hparams.eps = h.eps();
  p.hparams.max_grad_norm = h.max_grad_norm();
  p.global_batch = m.global_batch();
  p.seq_len = m.seq_len();
  p.micro_batches = m.micro_batches();
  p.vocab_size = m.vocab_size();
  p.ignore_index = m.ignore_index();
  p.world_size = m.world_size();
  p.mesh.dp = m.mesh().dp();
  p.mesh.tp = m.mesh().tp();
  p.mesh.pp = m.mesh().pp();
  p.strategy = m.strategy();
  p.pipeline_schedule = m.pipeline_schedule();
  p.virtual_stages = m.virtual_stages() > 0 ? m.virtual_stages() : 1;  // absent: one chunk per rank
  p.precision = m.precision().empty() ? "fp32" : m.precision();
  p.ranks.clear();
  p.ranks.reserve(m.ranks_size());
  for (int ri = 0; ri < m.ranks_size(); ++ri) {
    const auto &mr = m.ranks(ri);
    RankPlan r;
    r.rank = mr.rank();
    r.dp_rank = mr.dp_rank();
    r.tp_rank = mr.tp_rank();
    r.pp_stage = mr.pp_stage();
    r.slots = mr.slots();
    for (const auto &kb : mr.bytes_sent()) r.bytes_sent[kb.kind()] = kb.bytes();
    r.forward_flops = mr.forward_flops();
    r.backward_flops = mr.backward_flops();
    r.bubble_fraction = mr.bubble_fraction();
    r.buffers.reserve(mr.buffers_size());
    for (int bi = 0; bi < mr.buffers_size(); ++bi) {
      const auto &mb = mr.buffers(bi);
      Buffer b;
      b.id = mb.id();
      b.name = mb.name();
      if (mb.kind() < 0 || mb.kind() > static_cast<int>(BufferKind::Output))
        return Status::error("rank " + std::to_string(ri) + ": buffer #" + std::to_string(bi) + " ('" + mb.name() +
                             "') has unknown kind " + std::to_string(mb.kind()));
      if (mb.dtype() < 0 || mb.dtype() > static_cast<int>(ElemType::BF16))
        return Status::error("rank " + std::to_string(ri) + ": buffer #" + std::to_string(bi) + " ('" + mb.name() +
                             "') has unknown element type " + std::to_string(mb.dtype()));
      b.kind = static_cast<BufferKind>(mb.kind());
      b.dtype = static_cast<ElemType>(mb.dtype());
      b.shape.assign(mb.shape().begin(), mb.shape().end());
      b.offset = mb.offset();
      b.init = mb.init();
      b.param = mb.param();
      for (const auto &s : mb.slice()) b.slice.emplace_back(s.start(), s.size());
      b.full_shape.assign(mb.full_shape().begin(), mb.full_shape().end());
      r.buffers.push_back(std::move(b));
    }
    for (const auto &mp : mr.programs()) {
      Program prog;
      prog.name = mp.name();
      prog.instrs.reserve(mp.instrs_size());
      for (const auto &mi : mp.instrs()) {
        Instr in;
        in.op = mi.op();
        in.inputs.assign(mi.inputs().begin(), mi.inputs().end());
        in.outputs.assign(mi.outputs().begin(), mi.outputs().end());
        for (const auto &a : mi.attrs()) {
          switch (a.value_case()) {
          case pb::Attr::kI: in.attrs[a.name()] = a.i(); break;
          case pb::Attr::kF: in.attrs[a.name()] = a.f(); break;
          case pb::Attr::kS: in.attrs[a.name()] = a.s(); break;
          case pb::Attr::kInts:
            in.attrs[a.name()] = std::vector<int64_t>(a.ints().values().begin(), a.ints().values().end());
            break;
          default:
            return Status::error("rank " + std::to_string(ri) + ": program '" + mp.name() + "': instruction " + mi.op() +
                                 " has attribute '" + a.name() + "' without a value");
          }
        }
        in.loc = mi.loc();
        in.layer = mi.layer();
        in.flops = mi.flops();
        prog.instrs.push_back(std::move(in));
      }
      r.programs.push_back(std::move(prog));
    }
    r.arena_bytes = mr.arena_bytes();
    r.param_bytes = mr.param_bytes();
    r.grad_bytes = mr.grad_bytes();
    r.optimizer_bytes = mr.optimizer_bytes();
    r.peak_bytes = mr.peak_bytes();
    r.flops_per_step = mr.flops_per_step();
    p.ranks.push_back(std::move(r));
  }
  return Status::ok();
}

// ------------------------------------------------------------------ little-endian helpers

void put_u32(std::string &s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_u64(std::string &s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t get_u32(const std::string &s, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(s[at + i])) << (8 * i);
  return v;
}
uint64_t get_u64(const std::string &s, size_t at) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(s[at + i])) << (8 * i);
  return v;
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

std::string shape_str(const std::vector<int64_t> &shape) {
  if (shape.empty()) return "scalar";
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  return s;
}

std::string human_bytes(double b) {
  char buf[64];
  if (b < 1024) std::snprintf(buf, sizeof buf, "%.0f B", b);
  else if (b < 1024.0 * 1024) std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024);
  else if (b < 1024.0 * 1024 * 1024) std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1024.0 * 1024));
  else std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  return buf;
}

std::string num(double v) {
  std::ostringstream os;
  os << std::setprecision(6) << v;
  return os.str();
}

std::string buffer_ref(const RankPlan &rank, int32_t id) {
  if (id < 0) return "_";
  if (id >= static_cast<int32_t>(rank.buffers.size())) return "%?" + std::to_string(id);
  const Buffer &b = rank.buffers[id];
  if (b.kind == BufferKind::Activation) return "%" + std::to_string(id);
  return "@" + b.name;
}

// "", "dp", "tp", "pp", "dp,tp", ... : distinct axes in dp,tp,pp order.
bool valid_group(const std::string &group) {
  if (group.empty()) return true;
  static const char *axes[] = {"dp", "tp", "pp"};
  int next = 0;
  size_t at = 0;
  while (true) {
    size_t comma = group.find(',', at);
    std::string axis = group.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    int k = next;
    while (k < 3 && axis != axes[k]) ++k;
    if (k == 3) return false;
    next = k + 1;
    if (comma == std::string::npos) return true;
    at = comma + 1;
  }
}

} // namespace

// ------------------------------------------------------------------ public API

const char *buffer_kind_name(BufferKind kind) {
  switch (kind) {
  case BufferKind::Input: return "input";
  case BufferKind::Param: return "param";
  case BufferKind::Trainable: return "trainable";
  case BufferKind::Grad: return "grad";
  case BufferKind::OptState: return "opt_state";
  case BufferKind::Activation: return "activation";
  case BufferKind::Output: return "output";
  }
  return "?";
}

const char *elem_type_name(ElemType type) {
  switch (type) {
  case ElemType::F32: return "f32";
  case ElemType::I32: return "i32";
  case ElemType::BF16: return "bf16";
  }
  return "?";
}

uint32_t crc32(const void *data, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  const auto *p = static_cast<const uint8_t *>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

const Program *find_program(const RankPlan &rank, const std::string &name) {
  for (const Program &p : rank.programs)
    if (p.name == name) return &p;
  return nullptr;
}

Status validate_plan(const Plan &plan) {
  if (plan.world_size < 1) return Status::error("world_size is " + std::to_string(plan.world_size) + " (must be >= 1)");
  if (static_cast<int64_t>(plan.ranks.size()) != plan.world_size)
    return Status::error("world_size is " + std::to_string(plan.world_size) + " but the plan holds " +
                         std::to_string(plan.ranks.size()) + " rank programs");
  if (plan.global_batch < 1 || plan.seq_len < 1 || plan.micro_batches < 1)
    return Status::error("global_batch, seq_len and micro_batches must be >= 1 (got " +
                         std::to_string(plan.global_batch) + ", " + std::to_string(plan.seq_len) + ", " +
                         std::to_string(plan.micro_batches) + ")");
  const Mesh &mesh = plan.mesh;
  if (mesh.dp < 1 || mesh.tp < 1 || mesh.pp < 1)
    return Status::error("mesh is dp " + std::to_string(mesh.dp) + " x tp " + std::to_string(mesh.tp) + " x pp " +
                         std::to_string(mesh.pp) + " (every axis must be >= 1)");
  if (mesh.size() != plan.world_size)
    return Status::error("world_size is " + std::to_string(plan.world_size) + " but the mesh dp " +
                         std::to_string(mesh.dp) + " x tp " + std::to_string(mesh.tp) + " x pp " + std::to_string(mesh.pp) +
                         " has " + std::to_string(mesh.size()) + " ranks");
  if (plan.precision != "fp32" && plan.precision != "bf16")
    return Status::error("precision is '" + plan.precision + "' (expected 'fp32' or 'bf16')");
  const bool pipelined = mesh.pp > 1;
  if (pipelined && !rt::check_schedule_name(plan.pipeline_schedule))
    return Status::error("pipeline_schedule is '" + plan.pipeline_schedule + "' but a plan with " +
                         std::to_string(mesh.pp) + " pipeline stages needs gpipe, 1f1b, interleaved or zb-h1");
  if (pipelined)
    if (Status s = rt::check_pipeline_shape(plan.pipeline_schedule, mesh.pp, static_cast<int>(plan.micro_batches),
                                            plan.virtual_stages);
        !s)
      return Status::error("pipeline: " + s.message());
  for (size_t r = 0; r < plan.ranks.size(); ++r) {
    const RankPlan &rank = plan.ranks[r];
    std::string where = "rank " + std::to_string(r) + ": ";
    if (rank.rank != static_cast<int32_t>(r))
      return Status::error("ranks[" + std::to_string(r) + "].rank is " + std::to_string(rank.rank) + " (expected " +
                           std::to_string(r) + ")");
    MeshCoord c = coord_of(mesh, static_cast<int32_t>(r));
    if (rank.dp_rank != c.dp || rank.tp_rank != c.tp || rank.pp_stage != c.pp)
      return Status::error(where + "coordinates (dp " + std::to_string(rank.dp_rank) + ", tp " +
                           std::to_string(rank.tp_rank) + ", pp " + std::to_string(rank.pp_stage) +
                           ") differ from the mesh's (dp " + std::to_string(c.dp) + ", tp " + std::to_string(c.tp) +
                           ", pp " + std::to_string(c.pp) + ")");
    if (rank.slots < 1) return Status::error(where + "slots is " + std::to_string(rank.slots) + " (must be >= 1)");
    {
      std::set<std::string> have;
      for (const Program &prog : rank.programs) have.insert(prog.name);
      std::vector<std::string> need = pipelined ? std::vector<std::string>{"forward", "backward", "optimizer_step"}
                                                : std::vector<std::string>{"micro_step"};
      if (pipelined && rt::schedule_splits_weight_grad(plan.pipeline_schedule)) need.push_back("backward_weight");
      for (int c = 1; pipelined && c < plan.virtual_stages; ++c)  // interleaved: every chunk's programs
        for (rt::Phase ph : {rt::Phase::Forward, rt::Phase::Backward}) need.push_back(rt::pipeline_program(ph, c));
      for (const std::string &name : need)
        if (!have.count(name))
          return Status::error(where + "has no program '" + name + "' (" +
                               (pipelined ? "a pipelined plan needs forward, backward and optimizer_step"
                                          : "a plan without pipeline stages needs micro_step") +
                               ")");
    }
    if (rank.arena_bytes < 0) return Status::error(where + "negative arena_bytes " + std::to_string(rank.arena_bytes));
    const int32_t n = static_cast<int32_t>(rank.buffers.size());
    std::map<std::string, BufferKind> named;  // persistent buffers by name
    for (int32_t i = 0; i < n; ++i) {
      const Buffer &b = rank.buffers[i];
      std::string bw = where + "buffer #" + std::to_string(i) + " ('" + b.name + "')";
      if (b.id != i) return Status::error(bw + " has id " + std::to_string(b.id) + " (ids must equal the index)");
      for (int64_t d : b.shape)
        if (d < 0) return Status::error(bw + " has negative dimension in shape " + shape_str(b.shape));
      // Adapters, their gradients and moments and the loss are the fp32 master state in every
      // precision; only frozen weights and activations may be stored in bf16.
      if (b.dtype == ElemType::BF16 && b.kind != BufferKind::Param && b.kind != BufferKind::Activation)
        return Status::error(bw + " is a bf16 " + std::string(buffer_kind_name(b.kind)) +
                             " buffer; only frozen parameters and activations may be bf16");
      if (b.kind == BufferKind::Activation) {
        if (b.offset < 0) return Status::error(bw + " is an activation without an arena offset");
        if (b.offset + b.nbytes() > rank.arena_bytes)
          return Status::error(bw + " at arena offset " + std::to_string(b.offset) + " + " + std::to_string(b.nbytes()) +
                               " bytes ends beyond the arena (" + std::to_string(rank.arena_bytes) + " bytes)");
      } else {
        if (b.name.empty()) return Status::error(bw + ": a " + std::string(buffer_kind_name(b.kind)) + " buffer needs a name");
        if (!named.emplace(b.name, b.kind).second)
          return Status::error(bw + ": another persistent buffer has the same name");
      }
      if (!b.slice.empty()) {
        if (b.slice.size() != b.shape.size())
          return Status::error(bw + " has a slice of " + std::to_string(b.slice.size()) + " dims for shape " +
                               shape_str(b.shape));
        for (size_t d = 0; d < b.slice.size(); ++d)
          if (b.slice[d].first < 0 || b.slice[d].second != b.shape[d])
            return Status::error(bw + ": slice dim " + std::to_string(d) + " [" + std::to_string(b.slice[d].first) + ", " +
                                 std::to_string(b.slice[d].second) + "] does not match shape " + shape_str(b.shape));
      }
      if (!b.full_shape.empty()) {
        if (b.full_shape.size() != b.shape.size())
          return Status::error(bw + " has full_shape " + shape_str(b.full_shape) + " of another rank than its shape " +
                               shape_str(b.shape));
        for (size_t d = 0; d < b.full_shape.size(); ++d) {
          int64_t start = b.slice.empty() ? 0 : b.slice[d].first;
          if (start + b.shape[d] > b.full_shape[d])
            return Status::error(bw + ": slice dim " + std::to_string(d) + " [" + std::to_string(start) + ", " +
                                 std::to_string(start + b.shape[d]) + ") does not fit in full_shape " +
                                 shape_str(b.full_shape));
        }
      }
    }
    for (const Buffer &b : rank.buffers) {
      if (b.kind != BufferKind::Grad && b.kind != BufferKind::OptState) continue;
      auto it = named.find(b.param);
      if (it == named.end() || it->second != BufferKind::Trainable)
        return Status::error(where + buffer_kind_name(b.kind) + " buffer #" + std::to_string(b.id) + " ('" + b.name +
                             "') belongs to '" + b.param + "', which is not a trainable buffer of the rank");
    }
    std::set<std::string> prog_names;
    for (const Program &prog : rank.programs) {
      if (!prog_names.insert(prog.name).second)
        return Status::error(where + "two programs are named '" + prog.name + "'");
      for (size_t k = 0; k < prog.instrs.size(); ++k) {
        const Instr &in = prog.instrs[k];
        std::string iw = where + "program '" + prog.name + "' instruction #" + std::to_string(k) + " (" + in.op +
                         (in.loc.empty() ? "" : ", " + in.loc) + ")";
        if (in.op.empty()) return Status::error(iw + " has no op name");
        for (size_t j = 0; j < in.inputs.size(); ++j)
          if (in.inputs[j] < -1 || in.inputs[j] >= n)
            return Status::error(iw + ": input " + std::to_string(j) + " refers to buffer " + std::to_string(in.inputs[j]) +
                                 " but the rank has " + std::to_string(n) + " buffers");
        for (size_t j = 0; j < in.outputs.size(); ++j)
          if (in.outputs[j] < 0 || in.outputs[j] >= n)
            return Status::error(iw + ": output " + std::to_string(j) + " refers to buffer " +
                                 std::to_string(in.outputs[j]) + " but the rank has " + std::to_string(n) + " buffers");
        if (in.op == "send" || in.op == "recv") {
          auto it = in.attrs.find("peer");
          const int64_t *peer = it == in.attrs.end() ? nullptr : std::get_if<int64_t>(&it->second);
          if (!peer) return Status::error(iw + " has no integer 'peer' attribute");
          if (*peer < 0 || *peer >= plan.world_size || *peer == static_cast<int64_t>(r))
            return Status::error(iw + ": peer " + std::to_string(*peer) + " is " +
                                 (*peer == static_cast<int64_t>(r) ? std::string("the rank itself")
                                                                   : "outside the world of " + std::to_string(plan.world_size) +
                                                                         " ranks"));
        }
        if (in.op == "all_reduce") {
          auto it = in.attrs.find("group");
          const std::string *group = it == in.attrs.end() ? nullptr : std::get_if<std::string>(&it->second);
          if (!group) return Status::error(iw + " has no string 'group' attribute");
          if (!valid_group(*group))
            return Status::error(iw + ": group '" + *group +
                                 "' is not a list of mesh axes dp, tp, pp (comma-separated, in that order)");
        }
      }
    }
  }
  return Status::ok();
}

std::string encode_plan(const Plan &plan) {
  std::string payload = payload_of(plan);
  std::string out;
  out.reserve(kHeaderBytes + payload.size() + kTrailerBytes);
  out.append(kPlanMagic, 8);
  put_u32(out, kPlanFormatVersion);
  put_u64(out, payload.size());
  out += payload;
  put_u32(out, crc32(payload.data(), payload.size()));
  return out;
}

StatusOr<Plan> decode_plan(const std::string &bytes, const std::string &origin) {
  if (bytes.size() < 8) {
    if (!bytes.empty() && std::memcmp(bytes.data(), kPlanMagic, bytes.size()) == 0)
      return Status::error(origin + " is truncated (" + std::to_string(bytes.size()) + " bytes)");
    return Status::error(origin + " is not a Parallora plan (bad magic)");
  }
  if (std::memcmp(bytes.data(), kPlanMagic, 8) != 0)
    return Status::error(origin + " is not a Parallora plan (bad magic)");
  if (bytes.size() < 12) return Status::error(origin + " is truncated (" + std::to_string(bytes.size()) + " bytes)");
  uint32_t version = get_u32(bytes, 8);
  if (version < kMinPlanFormatVersion || version > kPlanFormatVersion)
    return Status::error(origin + " was written by plan format version " + std::to_string(version) +
                         "; this lora-run reads version" +
                         (kMinPlanFormatVersion < kPlanFormatVersion
                              ? "s " + std::to_string(kMinPlanFormatVersion) + " to " + std::to_string(kPlanFormatVersion)
                              : " " + std::to_string(kPlanFormatVersion)) +
                         ": recompile with lora-compile");
  if (bytes.size() < kHeaderBytes) return Status::error(origin + " is truncated (" + std::to_string(bytes.size()) + " bytes)");
  uint64_t len = get_u64(bytes, 12);
  uint64_t avail = bytes.size() - kHeaderBytes;
  if (len > avail || avail - len < kTrailerBytes)
    return Status::error(origin + " is truncated: the header announces " + std::to_string(len) +
                         " payload bytes + 4 CRC bytes, the file has " + std::to_string(avail) + " after the header");
  if (avail - len > kTrailerBytes)
    return Status::error(origin + " is corrupt: " + std::to_string(avail - len - kTrailerBytes) +
                         " unexpected bytes after the CRC");
  uint32_t stored = get_u32(bytes, kHeaderBytes + len);
  uint32_t computed = crc32(bytes.data() + kHeaderBytes, len);
  if (stored != computed)
    return Status::error(origin + " is corrupt: CRC32 mismatch (stored " + hex32(stored) + ", computed " + hex32(computed) +
                         ")");
  pb::Plan msg;
  if (!msg.ParseFromArray(bytes.data() + kHeaderBytes, static_cast<int>(len)))
    return Status::error(origin + " is corrupt: the protobuf payload does not parse");
  Plan plan;
  plan.version = version;
  if (Status s = from_pb(msg, plan); !s) return Status::error(origin + " is corrupt: " + s.message());
  if (Status s = validate_plan(plan); !s) return Status::error(origin + " is not a valid plan: " + s.message());
  return plan;
}

Status write_plan(const std::string &path, const Plan &plan) {
  if (Status s = validate_plan(plan); !s) return Status::error("refusing to write an invalid plan to " + path + ": " + s.message());
  std::string bytes = encode_plan(plan);
  // Atomic: a kill mid-write leaves the previous plan (or none), never a torn one.
  return rt::fsutil::write_file_atomic(path, bytes);
}

StatusOr<Plan> read_plan(const std::string &path) {
  FILE *f = std::fopen(path.c_str(), "rb");
  if (!f) return Status::error("cannot open plan " + path + ": " + std::strerror(errno));
  std::string bytes;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.append(buf, n);
  bool err = std::ferror(f);
  std::fclose(f);
  if (err) return Status::error("cannot read plan " + path + " (is it a directory?)");
  return decode_plan(bytes, path);
}

std::string plan_fingerprint(const Plan &plan) {
  std::string payload = payload_of(plan);
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : payload) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

namespace {
uint64_t fnv1a(const std::string &bytes, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}
std::string hex16(uint64_t h) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}
// The shortest decimal that reads back as `v` (exact, yet "0.0003" rather than 0.00029999...).
std::string exact(double v) {
  char buf[40];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}
} // namespace

std::vector<std::pair<std::string, std::string>> training_config(const Plan &plan) {
  const Hyperparams &h = plan.hparams;
  std::string targets;
  std::vector<std::string> sorted = plan.lora.target_modules;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) targets += (i ? "," : "") + sorted[i];
  return {{"model config", hex16(fnv1a(plan.model_config_json))},
          {"vocab size", std::to_string(plan.vocab_size)},
          {"ignore index", std::to_string(plan.ignore_index)},
          {"LoRA rank", std::to_string(plan.lora.rank)},
          {"LoRA alpha", exact(plan.lora.alpha)},
          {"LoRA dropout", exact(plan.lora.dropout)},
          {"rsLoRA", plan.lora.use_rslora ? "true" : "false"},
          {"LoRA targets", targets},
          {"global batch", std::to_string(plan.global_batch)},
          {"seq_len", std::to_string(plan.seq_len)},
          {"lr", exact(h.lr)},
          {"lr schedule", h.schedule},
          {"warmup steps", std::to_string(h.warmup_steps)},
          {"min_lr_ratio", exact(h.min_lr_ratio)},
          {"total steps", std::to_string(h.total_steps)},
          {"weight decay", exact(h.weight_decay)},
          {"beta1", exact(h.beta1)},
          {"beta2", exact(h.beta2)},
          {"eps", exact(h.eps)},
          {"max grad norm", exact(h.max_grad_norm)}};
}

std::string training_fingerprint(const Plan &plan) {
  std::string all;
  for (auto &[k, v] : training_config(plan)) all += k + "=" + v + "\n";
  return hex16(fnv1a(all));
}

std::string format_instr(const RankPlan &rank, const Instr &in) {
  std::string s;
  for (size_t i = 0; i < in.outputs.size(); ++i) s += (i ? ", " : "") + buffer_ref(rank, in.outputs[i]);
  if (!in.outputs.empty()) s += " = ";
  s += in.op + "(";
  for (size_t i = 0; i < in.inputs.size(); ++i) s += (i ? ", " : "") + buffer_ref(rank, in.inputs[i]);
  s += ")";
  if (!in.attrs.empty()) {
    s += " {";
    bool first = true;
    for (auto &[name, v] : in.attrs) {
      s += (first ? "" : ", ") + name + " = ";
      first = false;
      if (auto *i = std::get_if<int64_t>(&v)) s += std::to_string(*i);
      else if (auto *f = std::get_if<double>(&v)) s += num(*f);
      else if (auto *str = std::get_if<std::string>(&v)) s += "\"" + *str + "\"";
      else {
        s += "[";
        auto &list = std::get<std::vector<int64_t>>(v);
        for (size_t k = 0; k < list.size(); ++k) s += (k ? ", " : "") + std::to_string(list[k]);
        s += "]";
      }
    }
    s += "}";
  }
  if (!in.loc.empty()) s += "  " + in.loc;
  return s;
}

std::string describe_plan(const Plan &plan, bool verbose) {
  std::ostringstream os;
  os << "plan: " << (plan.producer.empty() ? "(unknown producer)" : plan.producer) << ", format version "
     << plan.version << ", fingerprint " << plan_fingerprint(plan) << "\n";

  // Model: tolerant reads of the HF config (any missing key is just left out).
  if (!plan.model_config_json.empty()) {
    nlohmann::json cfg = nlohmann::json::parse(plan.model_config_json, nullptr, /*allow_exceptions=*/false);
    if (cfg.is_object()) {
      auto get = [&](const char *key) -> int64_t {
        auto it = cfg.find(key);
        return it != cfg.end() && it->is_number_integer() ? it->get<int64_t>() : -1;
      };
      int64_t layers = get("num_hidden_layers"), hidden = get("hidden_size"), heads = get("num_attention_heads"),
              kv = get("num_key_value_heads"), inter = get("intermediate_size"), vocab = get("vocab_size");
      std::string type = cfg.contains("model_type") && cfg["model_type"].is_string() ? cfg["model_type"].get<std::string>() : "llama";
      os << "model: " << type;
      if (layers >= 0) os << ", " << layers << " layers";
      if (hidden >= 0) os << ", hidden " << hidden;
      if (heads >= 0) {
        os << ", heads " << heads;
        if (kv >= 0 && kv != heads) os << " (kv " << kv << ")";
      }
      if (inter >= 0) os << ", intermediate " << inter;
      if (vocab >= 0) os << ", vocab " << vocab;
      if (cfg.contains("tie_word_embeddings") && cfg["tie_word_embeddings"].is_boolean())
        os << ", tied embeddings: " << (cfg["tie_word_embeddings"].get<bool>() ? "yes" : "no");
      os << "\n";
    } else {
      os << "model: (model_config_json does not parse)\n";
    }
  } else {
    os << "model: (no config recorded)\n";
  }
  os << "base weights: " << (plan.base_weights.empty() ? "(none recorded: random init or lora-run --weights)" : plan.base_weights)
     << "\n";
  if (!plan.adapter_weights.empty()) os << "adapter init: " << plan.adapter_weights << "\n";

  const LoraInfo &l = plan.lora;
  if (l.rank > 0) {
    double scaling = l.use_rslora ? l.alpha / std::sqrt(static_cast<double>(l.rank)) : l.alpha / l.rank;
    os << "LoRA: r=" << l.rank << ", alpha=" << num(l.alpha) << " (scaling " << num(scaling)
       << (l.use_rslora ? ", rslora" : "") << "), dropout " << num(l.dropout) << ", targets ";
    for (size_t i = 0; i < l.target_modules.size(); ++i) os << (i ? "," : "") << l.target_modules[i];
    if (l.target_modules.empty()) os << "(none)";
    os << "\n";
  } else {
    os << "LoRA: none\n";
  }

  const Hyperparams &h = plan.hparams;
  os << "hyperparameters: AdamW lr " << num(h.lr) << ", schedule " << h.schedule;
  if (h.warmup_steps) os << " (warmup " << h.warmup_steps << " steps)";
  if (h.schedule != "constant") {
    os << ", min_lr_ratio " << num(h.min_lr_ratio) << ", decay over "
       << (h.total_steps > 0 ? std::to_string(h.total_steps) + " steps" : std::string("--steps"));
  }
  os << ", betas (" << num(h.beta1) << ", " << num(h.beta2) << "), eps " << num(h.eps) << ", weight_decay "
     << num(h.weight_decay) << ", max_grad_norm " << (h.max_grad_norm > 0 ? num(h.max_grad_norm) : std::string("off"))
     << "\n";

  const int64_t dp = std::max<int64_t>(1, plan.mesh.dp);
  int64_t per_micro = plan.global_batch / std::max<int64_t>(1, plan.micro_batches * dp);
  os << "data: global batch " << plan.global_batch << " x seq_len " << plan.seq_len << " = "
     << plan.global_batch * plan.seq_len << " tokens per step, " << plan.micro_batches << " micro-batch"
     << (plan.micro_batches == 1 ? "" : "es") << " of " << per_micro << " sequences"
     << (dp > 1 ? " per data-parallel rank" : "") << ", vocab " << plan.vocab_size << ", ignore_index "
     << plan.ignore_index << "\n";
  os << "ranks: " << plan.world_size << " (mesh dp " << plan.mesh.dp << " x tp " << plan.mesh.tp << " x pp "
     << plan.mesh.pp << "), strategy " << plan.strategy << ", pipeline schedule " << plan.pipeline_schedule
     << ", precision " << plan.precision << "\n";

  // One row per rank: coordinates, slots, predicted memory, FLOPs, bytes sent, bubble.
  {
    std::set<std::string> kinds = {"all_reduce", "send"};
    for (const RankPlan &r : plan.ranks)
      for (auto &kv : r.bytes_sent) kinds.insert(kv.first);
    char line[512];
    std::string head;
    std::snprintf(line, sizeof line, "  %4s %4s %4s %4s %5s %12s %14s", "rank", "dp", "tp", "pp", "slots", "peak MiB",
                  "GFLOP/step");
    head = line;
    for (const std::string &k : kinds) {
      std::snprintf(line, sizeof line, " %16s", (k + " B/step").c_str());
      head += line;
    }
    head += "  bubble";
    os << "rank table:\n" << head << "\n";
    for (const RankPlan &r : plan.ranks) {
      std::snprintf(line, sizeof line, "  %4d %4d %4d %4d %5d %12.1f %14.3f", r.rank, r.dp_rank, r.tp_rank, r.pp_stage,
                    r.slots, r.peak_bytes / (1024.0 * 1024.0), r.flops_per_step / 1e9);
      std::string row = line;
      for (const std::string &k : kinds) {
        auto it = r.bytes_sent.find(k);
        std::snprintf(line, sizeof line, " %16lld", static_cast<long long>(it == r.bytes_sent.end() ? 0 : it->second));
        row += line;
      }
      std::snprintf(line, sizeof line, "  %5.1f%%", 100.0 * r.bubble_fraction);
      row += line;
      os << row << "\n";
    }
  }

  for (const RankPlan &r : plan.ranks) {
    os << "rank " << r.rank << ": dp " << r.dp_rank << ", tp " << r.tp_rank << ", pp " << r.pp_stage << ", slots "
       << r.slots << "\n";
    std::map<int, std::pair<int64_t, int64_t>> by_kind;  // kind -> (count, bytes)
    std::map<int, std::set<std::string>> types;          // kind -> element types
    for (const Buffer &b : r.buffers) {
      auto &e = by_kind[static_cast<int>(b.kind)];
      e.first += 1;
      e.second += b.nbytes();
      types[static_cast<int>(b.kind)].insert(elem_type_name(b.dtype));
    }
    os << "  buffers:";
    bool first = true;
    for (auto &[k, e] : by_kind) {
      std::string ts;
      for (const std::string &t : types[k]) ts += (ts.empty() ? "" : "+") + t;
      os << (first ? " " : ", ") << buffer_kind_name(static_cast<BufferKind>(k)) << " " << e.first << " " << ts
         << " (" << human_bytes(static_cast<double>(e.second))
         << (static_cast<BufferKind>(k) == BufferKind::Activation ? " unshared" : "") << ")";
      first = false;
    }
    os << "\n";
    os << "  arena: " << human_bytes(static_cast<double>(r.arena_bytes)) << " (" << r.arena_bytes << " bytes)\n";
    char buf[128];
    std::snprintf(buf, sizeof buf, "%.1f MiB", r.peak_bytes / (1024.0 * 1024.0));
    os << "  predicted peak memory: " << buf << " (params " << human_bytes(static_cast<double>(r.param_bytes))
       << ", grads " << human_bytes(static_cast<double>(r.grad_bytes)) << ", optimizer "
       << human_bytes(static_cast<double>(r.optimizer_bytes)) << ")\n";
    std::snprintf(buf, sizeof buf, "%.3f GFLOP", r.flops_per_step / 1e9);
    os << "  FLOPs per step: " << buf;
    if (r.forward_flops > 0 || r.backward_flops > 0) {
      std::snprintf(buf, sizeof buf, " (per micro-batch: forward %.3f, backward %.3f GFLOP)", r.forward_flops / 1e9,
                    r.backward_flops / 1e9);
      os << buf;
    }
    os << "\n";
    if (!r.bytes_sent.empty()) {
      os << "  predicted bytes sent per step:";
      bool f = true;
      for (auto &[k, v] : r.bytes_sent) {
        os << (f ? " " : ", ") << k << " " << v << " B";
        f = false;
      }
      os << "\n";
    }
    if (plan.mesh.pp > 1) {
      std::snprintf(buf, sizeof buf, "%.1f%%", 100.0 * r.bubble_fraction);
      os << "  predicted pipeline bubble: " << buf << "\n";
    }
    for (const Program &p : r.programs) {
      std::map<std::string, int64_t> ops;
      for (const Instr &in : p.instrs) ops[in.op] += 1;
      os << "  program " << p.name << ": " << p.instrs.size() << " instruction" << (p.instrs.size() == 1 ? "" : "s");
      if (!ops.empty()) {
        os << " (";
        bool f = true;
        for (auto &[op, c] : ops) {
          os << (f ? "" : ", ") << op << " " << c;
          f = false;
        }
        os << ")";
      }
      os << "\n";
    }
    if (verbose) {
      os << "  buffer table:\n";
      for (const Buffer &b : r.buffers) {
        os << "    " << (b.kind == BufferKind::Activation ? "%" + std::to_string(b.id) : "@" + b.name) << "  "
           << buffer_kind_name(b.kind) << " " << elem_type_name(b.dtype) << " " << shape_str(b.shape);
        if (b.kind == BufferKind::Activation) os << " at " << b.offset << "  " << b.name;
        if (!b.init.empty()) os << " init " << b.init;
        if (!b.param.empty()) os << " of " << b.param;
        if (!b.slice.empty()) {
          os << " slice [";
          for (size_t d = 0; d < b.slice.size(); ++d)
            os << (d ? ", " : "") << b.slice[d].first << ":" << b.slice[d].first + b.slice[d].second;
          os << "]";
        }
        if (!b.full_shape.empty()) os << " of " << shape_str(b.full_shape);
        os << "\n";
      }
      for (const Program &p : r.programs) {
        os << "  " << p.name << ":\n";
        for (size_t k = 0; k < p.instrs.size(); ++k)
          os << "    #" << k << "  " << format_instr(r, p.instrs[k]) << "\n";
      }
    }
  }
  return os.str();
}

} // namespace parallora::plan
