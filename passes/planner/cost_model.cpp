//===- cost_model.cpp - predicted step time of a plan on a device profile --===//
#include "passes/planner/cost_model.h"

#include <algorithm>
#include <map>
#include <set>

#include "runtime/plan/collective_bytes.h"
#include "runtime/plan/schedule.h"

namespace parallora::planner {

using plan::Buffer;
using plan::Instr;

namespace {

const std::string kFp32 = "fp32", kBf16 = "bf16";

double numel(const Buffer &b) { return static_cast<double>(b.numel()); }
/// Rows of an (.., K) operand.
double rows(const Buffer &b) { return b.shape.empty() ? 1.0 : numel(b) / static_cast<double>(b.shape.back()); }
const std::string &precision_of(const Buffer &b) { return b.dtype == plan::ElemType::BF16 ? kBf16 : kFp32; }

std::string str_attr(const Instr &in, const char *key) {
  auto it = in.attrs.find(key);
  return it != in.attrs.end() && std::holds_alternative<std::string>(it->second) ? std::get<std::string>(it->second) : "";
}
int64_t int_attr(const Instr &in, const char *key, int64_t dflt) {
  auto it = in.attrs.find(key);
  return it != in.attrs.end() && std::holds_alternative<int64_t>(it->second) ? std::get<int64_t>(it->second) : dflt;
}

/// Ranks in `group` (axes "dp", "tp", "pp", comma-separated).
int group_size(const plan::Mesh &m, const std::string &group) {
  int n = 1;
  size_t start = 0;
  while (start <= group.size() && !group.empty()) {
    size_t end = group.find(',', start);
    std::string axis = group.substr(start, end == std::string::npos ? std::string::npos : end - start);
    n *= axis == "dp" ? m.dp : axis == "tp" ? m.tp : axis == "pp" ? m.pp : 1;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return n;
}

const Links &links_for(const DeviceProfile &dev, bool inter) { return inter ? dev.inter_node : dev.intra_node; }

/// A blocking all-reduce of `bytes` over `group`.
double all_reduce_seconds(double bytes, const std::string &group, const plan::RankPlan &rank, const plan::Mesh &mesh,
                          const DeviceProfile &dev) {
  int n = group_size(mesh, group);
  if (n <= 1) return 0;
  bool inter = group_crosses_nodes(mesh, rank.rank, group, dev.devices_per_node);
  return links_for(dev, inter).all_reduce.seconds(
      static_cast<double>(rt::all_reduce_bytes_sent(static_cast<int64_t>(bytes), n)));
}

/// The GEMMs of each linear kernel (runtime/cpu/kernels.h's operand order), LoRA's factors as
/// GEMMs of their own with rank-r sides (fp32: adapters are stored in f32).
double linear_seconds(const Instr &in, const std::vector<Buffer> &B, const DeviceProfile &dev) {
  auto at = [&](size_t i) -> const Buffer & { return B[static_cast<size_t>(in.inputs[i])]; };
  if (in.op == "linear_fwd") {
    const Buffer &x = at(0), &w = at(1);
    return dev.gemm_seconds(rows(x), w.shape[0], w.shape[1], precision_of(w));
  }
  if (in.op == "linear_bwd_input") {
    const Buffer &dy = at(0), &w = at(1);
    return dev.gemm_seconds(rows(dy), w.shape[1], w.shape[0], precision_of(w));
  }
  if (in.op == "lora_linear_fwd") {
    const Buffer &x = at(0), &w = at(1), &a = at(2);
    double m = rows(x), n = w.shape[0], k = w.shape[1], r = a.shape[0];
    return dev.gemm_seconds(m, n, k, precision_of(w)) + dev.gemm_seconds(m, r, k, kFp32) + dev.gemm_seconds(m, n, r, kFp32);
  }
  // lora_linear_bwd: dx = dy W + s (dy B) A; dA = s (dy B)^T x; dB = s dy^T (x A^T). zb-h1 splits
  // it (attr part, runtime/cpu/matmul.cpp): "input" computes dy B, dy W and (dy B) A; "weight"
  // computes dy B again, x A^T, dA and dB.
  const Buffer &dy = at(0), &w = at(2), &a = at(3);
  double m = rows(dy), n = w.shape[0], k = w.shape[1], r = a.shape[0];
  const std::string part = str_attr(in, "part");
  const bool dx = part != "weight", dw = part != "input";
  double t = dev.gemm_seconds(m, r, n, kFp32);  // u = dy B, both parts
  if (dx) t += dev.gemm_seconds(m, k, n, precision_of(w)) + dev.gemm_seconds(m, k, r, kFp32);
  if (dw) t += dev.gemm_seconds(m, r, k, kFp32) + dev.gemm_seconds(r, k, m, kFp32) + dev.gemm_seconds(n, r, m, kFp32);
  return t;
}

/// Causal attention's model FLOPs from the shapes (Instr::flops is 0 for recomputed copies).
double attention_flops(const Instr &in, const std::vector<Buffer> &B) {
  bool bwd = in.op == "attention_bwd";
  const Buffer &q = B[static_cast<size_t>(in.inputs[bwd ? 1 : 0])], &k = B[static_cast<size_t>(in.inputs[bwd ? 2 : 1])];
  double f = 4.0 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3];
  if (int_attr(in, "causal", 1)) f /= 2;
  return bwd ? 2 * f : f;
}

/// Bytes a memory-bound kernel reads and writes: its distinct operands and results (an in-place
/// kernel such as adamw_step reads and writes its operands).
double memory_bytes(const Instr &in, const std::vector<Buffer> &B) {
  std::set<int32_t> seen;
  double bytes = 0;
  for (int32_t id : in.inputs)
    if (id >= 0 && seen.insert(id).second) bytes += static_cast<double>(B[static_cast<size_t>(id)].nbytes());
  for (int32_t id : in.outputs)
    if (id >= 0 && seen.insert(id).second) bytes += static_cast<double>(B[static_cast<size_t>(id)].nbytes());
  if (in.op == "adamw_step") bytes *= 1.75;  // reads p, g, m, v and writes p, m, v back: 7 tensors of traffic for 4
  return bytes;
}

bool is_comm(const std::string &op) {
  return op == "all_reduce" || op == "all_reduce_start" || op == "all_reduce_wait" || op == "broadcast" || op == "send" ||
         op == "recv";
}

/// The comm channel beside the compute: bucket reductions started in the backward.
struct Channel {
  double free_at = 0;
  std::map<int64_t, double> bucket_end;
  double busy = 0;
};

struct Totals {
  double compute = 0, comm = 0;
};

/// Runs `prog` from time t on `rank`; returns the end time. send/recv cost nothing here when
/// `p2p_outside` (the pipeline simulation charges the transfer between stages).
double run_program(const plan::Program &prog, const plan::RankPlan &rank, const plan::Mesh &mesh, const DeviceProfile &dev,
                   bool last_micro, bool p2p_outside, double t, Channel &ch, Totals &tot) {
  for (const Instr &in : prog.instrs) {
    double over = dev.per_instruction_s();
    if (in.op == "all_reduce_start") {
      if (last_micro) {
        double cost = instruction_seconds(in, rank, mesh, dev) - over;
        double begin = std::max(t, ch.free_at);
        ch.free_at = begin + cost;
        ch.bucket_end[int_attr(in, "bucket", 0)] = ch.free_at;
        ch.busy += cost;
      }
      t += over;
      tot.compute += over;
      continue;
    }
    if (in.op == "all_reduce_wait") {
      auto it = ch.bucket_end.find(int_attr(in, "bucket", 0));
      if (it != ch.bucket_end.end()) {
        double wait = std::max(0.0, it->second - t);
        t += wait + over;
        tot.comm += wait + over;
        continue;
      }
    }
    if (p2p_outside && (in.op == "send" || in.op == "recv")) {
      t += over;
      tot.comm += over;
      continue;
    }
    double cost = instruction_seconds(in, rank, mesh, dev);
    t += cost;
    (is_comm(in.op) ? tot.comm : tot.compute) += cost;
  }
  return t;
}

const plan::Program *find_program(const plan::RankPlan &r, const std::string &name) {
  for (const plan::Program &p : r.programs)
    if (p.name == name) return &p;
  return nullptr;
}

} // namespace

int gemm_calls(const Instr &in) {
  if (in.op == "linear_fwd" || in.op == "linear_bwd_input") return 1;
  if (in.op == "lora_linear_fwd") return 3;
  if (in.op != "lora_linear_bwd") return 0;
  const std::string part = str_attr(in, "part");  // as linear_seconds
  return 1 + (part != "weight" ? 2 : 0) + (part != "input" ? 3 : 0);
}

bool group_crosses_nodes(const plan::Mesh &mesh, int rank, const std::string &group, int devices_per_node) {
  if (devices_per_node <= 0) return false;
  plan::MeshCoord me = plan::coord_of(mesh, rank);
  bool in_dp = group.find("dp") != std::string::npos, in_tp = group.find("tp") != std::string::npos,
       in_pp = group.find("pp") != std::string::npos;
  int node = rank / devices_per_node;
  for (int pp = 0; pp < mesh.pp; ++pp)
    for (int dp = 0; dp < mesh.dp; ++dp)
      for (int tp = 0; tp < mesh.tp; ++tp) {
        if ((!in_dp && dp != me.dp) || (!in_tp && tp != me.tp) || (!in_pp && pp != me.pp)) continue;
        if (plan::rank_of(mesh, dp, tp, pp) / devices_per_node != node) return true;
      }
  return false;
}

double instruction_seconds(const Instr &in, const plan::RankPlan &rank, const plan::Mesh &mesh, const DeviceProfile &dev) {
  const std::vector<Buffer> &B = rank.buffers;
  double t = dev.per_instruction_s();
  const std::string &op = in.op;
  if (op == "linear_fwd" || op == "linear_bwd_input" || op == "lora_linear_fwd" || op == "lora_linear_bwd")
    return t + linear_seconds(in, B, dev);
  if (op == "attention_fwd" || op == "attention_bwd")
    return t + dev.attention_seconds(attention_flops(in, B), precision_of(B[static_cast<size_t>(in.inputs[0])]),
                                     op + (precision_of(B[static_cast<size_t>(in.inputs[0])]) == kBf16 ? ".bf16" : ""));
  if (op == "all_reduce" || op == "all_reduce_start" || op == "all_reduce_wait") {
    double bytes = 0;
    for (int32_t id : in.inputs) bytes += static_cast<double>(B[static_cast<size_t>(id)].nbytes());
    return t + all_reduce_seconds(bytes, str_attr(in, "group"), rank, mesh, dev);
  }
  if (op == "broadcast") {
    int n = group_size(mesh, str_attr(in, "group"));
    double bytes = 0;
    for (int32_t id : in.inputs) bytes += static_cast<double>(B[static_cast<size_t>(id)].nbytes());
    if (n <= 1) return t;
    bool inter = group_crosses_nodes(mesh, rank.rank, str_attr(in, "group"), dev.devices_per_node);
    return t + links_for(dev, inter).broadcast.seconds(bytes * (n - 1) / n);
  }
  if (op == "send" || op == "recv") {
    if (op == "recv") return t;  // the transfer is charged to the send
    int64_t peer = int_attr(in, "peer", rank.rank);
    bool inter = dev.devices_per_node > 0 && peer / dev.devices_per_node != rank.rank / dev.devices_per_node;
    return t + links_for(dev, inter).send.seconds(static_cast<double>(B[static_cast<size_t>(in.inputs[0])].nbytes()));
  }
  bool bf16 = false;  // the kernel's own bf16 rate (widening included) when the profile has one
  for (int32_t id : in.inputs) bf16 |= id >= 0 && B[static_cast<size_t>(id)].dtype == plan::ElemType::BF16;
  t += dev.memory_seconds(memory_bytes(in, B), bf16 ? op + ".bf16" : op);
  // Reductions inside kernels (docs/architecture.md "Collectives inside kernels").
  std::string vg = str_attr(in, "vocab_group");
  if (!vg.empty() && (op == "cross_entropy_fwd" || op == "cross_entropy_bwd")) {
    double n = rows(B[static_cast<size_t>(in.inputs[0])]);
    t += all_reduce_seconds(4 * n, vg, rank, mesh, dev) +
         all_reduce_seconds((op == "cross_entropy_fwd" ? 8 : 4) * n, vg, rank, mesh, dev);
  }
  std::string ng = str_attr(in, "norm_group");
  if (!ng.empty() && op == "adamw_step") t += all_reduce_seconds(4, ng, rank, mesh, dev);
  return t;
}

PipelineTime pipeline_time(const std::string &schedule, int micro_batches, const std::vector<double> &fwd,
                           const std::vector<double> &bwd, double p2p) {
  return pipeline_time(schedule, micro_batches, rt::PipelineCosts{fwd, bwd, {}, p2p}, 1);
}

PipelineTime pipeline_time(const std::string &schedule, int micro_batches, const rt::PipelineCosts &costs, int chunks) {
  rt::Timeline tl = rt::simulate_pipeline(schedule, micro_batches, costs, chunks);
  const size_t S = tl.busy.size();
  PipelineTime pt;
  pt.makespan = tl.makespan;
  pt.busy = tl.busy;
  pt.entries = tl.entries;
  pt.last_backward_end.assign(S, 0.0);
  for (const rt::TimelineEntry &e : tl.entries)
    if (e.phase != rt::Phase::Forward)  // the backward (or, with schedules that split it, its last part)
      pt.last_backward_end[static_cast<size_t>(e.stage)] = std::max(pt.last_backward_end[static_cast<size_t>(e.stage)], e.end);
  return pt;
}

namespace {

/// A pipeline plan: every rank's programs of one micro-batch per model chunk (forward.cN,
/// backward.cN, under zb-h1 backward_weight; rt::pipeline_program names them) costed with the
/// profile, the slowest rank of each stage taken, and the schedule simulated with the runtime's
/// own task order (runtime/plan/schedule.h). Then each rank replays, at the time the simulation
/// last runs it, every program that starts gradient buckets (the lowering puts the starts into
/// the last backward the stage runs: backward, backward.c0 of an interleaved plan, or
/// backward_weight), and runs its optimizer_step after its last task.
void cost_pipeline(const plan::Plan &p, const DeviceProfile &dev, int M, PlanCost &pc) {
  const int S = p.mesh.pp, V = std::max(1, static_cast<int>(p.virtual_stages));
  const bool zb = rt::schedule_splits_weight_grad(p.pipeline_schedule);
  const std::vector<rt::Phase> phases = zb ? std::vector<rt::Phase>{rt::Phase::Forward, rt::Phase::Backward, rt::Phase::Weight}
                                           : std::vector<rt::Phase>{rt::Phase::Forward, rt::Phase::Backward};
  rt::PipelineCosts costs;
  costs.fwd.assign(static_cast<size_t>(S * V), 0.0);
  costs.bwd.assign(static_cast<size_t>(S * V), 0.0);
  if (zb) costs.wgt.assign(static_cast<size_t>(S * V), 0.0);
  std::vector<Totals> per_micro(p.ranks.size());  // one micro-batch of every chunk and phase
  for (size_t i = 0; i < p.ranks.size(); ++i) {
    const plan::RankPlan &r = p.ranks[i];
    for (int c = 0; c < V; ++c)
      for (rt::Phase ph : phases) {
        const plan::Program *prog = find_program(r, rt::pipeline_program(ph, c));
        if (!prog) continue;
        Channel unused;
        double t = run_program(*prog, r, p.mesh, dev, false, true, 0, unused, per_micro[i]);
        const size_t k = static_cast<size_t>(c * S + r.pp_stage);
        std::vector<double> &v = ph == rt::Phase::Forward ? costs.fwd : ph == rt::Phase::Backward ? costs.bwd : costs.wgt;
        v[k] = std::max(v[k], t);
        for (const Instr &in : prog->instrs)
          if (in.op == "send") {
            // The receiving stage has been waiting for it: the link's wake-up latency too.
            int64_t peer = int_attr(in, "peer", r.rank);
            bool inter = dev.devices_per_node > 0 && peer / dev.devices_per_node != r.rank / dev.devices_per_node;
            costs.p2p = std::max(costs.p2p, instruction_seconds(in, r, p.mesh, dev) - dev.per_instruction_s() +
                                                links_for(dev, inter).send.wake_s);
          }
      }
  }
  PipelineTime pt = pipeline_time(p.pipeline_schedule, M, costs, V);
  for (size_t i = 0; i < p.ranks.size(); ++i) {
    const plan::RankPlan &r = p.ranks[i];
    const size_t s = static_cast<size_t>(r.pp_stage);
    RankCost &rc = pc.ranks[i];
    Channel ch;
    Totals tot;
    // Programs that start buckets, each at its last run on this stage, in time order.
    std::vector<std::pair<double, const plan::Program *>> starts;
    for (const plan::Program &prog : r.programs) {
      if (std::none_of(prog.instrs.begin(), prog.instrs.end(), [](const Instr &in) { return in.op == "all_reduce_start"; }))
        continue;
      double begin = -1;
      for (const rt::TimelineEntry &e : pt.entries)
        if (static_cast<size_t>(e.stage) == s && rt::pipeline_program(e.phase, e.chunk) == prog.name) begin = std::max(begin, e.start);
      if (begin >= 0) starts.push_back({begin, &prog});
    }
    std::sort(starts.begin(), starts.end());
    for (auto &[begin, prog] : starts) {
      Totals ignored;
      run_program(*prog, r, p.mesh, dev, true, true, begin, ch, ignored);
    }
    double t = pt.last_backward_end[s];
    if (const plan::Program *opt = find_program(r, "optimizer_step")) t = run_program(*opt, r, p.mesh, dev, false, false, t, ch, tot);
    rc.step_s = t;
    rc.compute_s = M * per_micro[i].compute + tot.compute;
    rc.comm_s = M * per_micro[i].comm + tot.comm;
    rc.bubble_s = std::max(0.0, pt.makespan - pt.busy[s]);
    rc.comm_hidden_s = std::max(0.0, ch.busy - tot.comm);
    if (rc.comm_hidden_s < 1e-12) rc.comm_hidden_s = 0;  // float noise of busy - waited
  }
}

} // namespace

double control_seconds(const plan::Plan &p, const DeviceProfile &dev, double skew_s) {
  const int world = p.mesh.dp * p.mesh.tp * p.mesh.pp;
  if (world <= 1) return 0;
  // runtime/train/session.cpp, after every optimizer_step: comm->flush() (the pipeline's sends
  // completed; their transfer is already in the simulation) and one control all-reduce of 3
  // doubles (loss, stop request, non-finite weights) over the whole world (world.cpp's
  // control_sum). The step ends for every rank when the slowest rank's value has arrived.
  bool inter = dev.devices_per_node > 0 && world > dev.devices_per_node;
  const LinkCost &l = links_for(dev, inter).all_reduce;
  // The first rank done waits skew_s for the last: longer than a wake-up, and its poll has backed
  // off into sleeps (a pipeline's stages end apart); ranks that end together (data / tensor
  // parallel) meet while still polling.
  return l.seconds(static_cast<double>(rt::all_reduce_bytes_sent(3 * 8, world))) + (skew_s > l.wake_s ? l.wake_s : 0.0);
}

PlanCost cost_plan(const plan::Plan &p, const DeviceProfile &dev_in) {
  const DeviceProfile dev = dev_in.for_precision(p.precision);  // the in-step factors of the plan's precision
  PlanCost pc;
  pc.ranks.resize(p.ranks.size());
  const int M = static_cast<int>(std::max<int64_t>(1, p.micro_batches));
  if (p.mesh.pp <= 1) {
    for (size_t i = 0; i < p.ranks.size(); ++i) {
      const plan::RankPlan &r = p.ranks[i];
      RankCost &rc = pc.ranks[i];
      Channel ch;
      Totals tot;
      double t = 0;
      if (const plan::Program *micro = find_program(r, "micro_step")) {
        Totals one;
        Channel unused;
        double t1 = run_program(*micro, r, p.mesh, dev, /*last_micro=*/false, false, 0, unused, one);
        t = t1 * (M - 1);
        tot.compute = one.compute * (M - 1);
        tot.comm = one.comm * (M - 1);
        t = run_program(*micro, r, p.mesh, dev, /*last_micro=*/true, false, t, ch, tot);
      }
      if (const plan::Program *opt = find_program(r, "optimizer_step")) t = run_program(*opt, r, p.mesh, dev, false, false, t, ch, tot);
      rc.step_s = t;
      rc.compute_s = tot.compute;
      rc.comm_s = tot.comm;
      rc.comm_hidden_s = std::max(0.0, ch.busy - tot.comm);
      if (rc.comm_hidden_s < 1e-12) rc.comm_hidden_s = 0;  // float noise of busy - waited
    }
  } else {
    cost_pipeline(p, dev, M, pc);
  }
  double first_done = pc.ranks.empty() ? 0 : pc.ranks[0].step_s;
  for (const RankCost &rc : pc.ranks) pc.step_s = std::max(pc.step_s, rc.step_s), first_done = std::min(first_done, rc.step_s);
  pc.control_s = control_seconds(p, dev, pc.step_s - first_done);
  pc.step_s += pc.control_s;
  return pc;
}

int64_t predicted_alloc_bytes(const plan::RankPlan &r, bool cpu_scratch) {
  auto round_up = [](int64_t v) { return (v + 63) / 64 * 64; };
  const int64_t slots = std::max(1, r.slots);
  int64_t bytes = slots * round_up(r.arena_bytes);
  for (const Buffer &b : r.buffers) {
    if (b.kind == plan::BufferKind::Activation) continue;
    bool per_slot = b.kind == plan::BufferKind::Input || b.kind == plan::BufferKind::Output;
    bytes += (per_slot ? slots : 1) * round_up(b.nbytes());
  }
  // The widening pool: operand position k (distinct storages in input, then output order) grows to
  // the largest bf16 tensor widened there. Storage identity: an activation's arena offset, else its id.
  // std::vector::resize in libstdc++ grows the capacity to max(2 x size, n) when n > capacity.
  std::vector<std::pair<int64_t, int64_t>> pool;  // (size, capacity) per position
  if (cpu_scratch)
  for (const plan::Program &prog : r.programs)
    for (const Instr &in : prog.instrs) {
      if (in.op == "adamw_step" || in.op == "fill_zero") continue;
      std::vector<std::pair<int, int64_t>> keys;  // (kind tag, id or offset)
      auto widen = [&](int32_t id) {
        if (id < 0) return;
        const Buffer &b = r.buffers[static_cast<size_t>(id)];
        if (b.dtype != plan::ElemType::BF16) return;
        std::pair<int, int64_t> key = b.kind == plan::BufferKind::Activation ? std::make_pair(0, b.offset) : std::make_pair(1, int64_t(id));
        if (std::find(keys.begin(), keys.end(), key) != keys.end()) return;
        size_t k = keys.size();
        keys.push_back(key);
        if (pool.size() <= k) pool.push_back({0, 0});
        auto &[size, cap] = pool[k];
        if (b.numel() > cap) cap = std::max(2 * size, b.numel());
        size = b.numel();
      };
      bool any = false;
      for (int32_t id : in.inputs) any |= id >= 0 && r.buffers[static_cast<size_t>(id)].dtype == plan::ElemType::BF16;
      for (int32_t id : in.outputs) any |= id >= 0 && r.buffers[static_cast<size_t>(id)].dtype == plan::ElemType::BF16;
      if (!any) continue;
      for (int32_t id : in.inputs) widen(id);
      for (int32_t id : in.outputs) widen(id);
    }
  for (auto &sc : pool) bytes += 4 * sc.second;
  return bytes;
}

std::map<std::string, double> op_seconds(const plan::Plan &p, int rank, const DeviceProfile &dev_in) {
  const DeviceProfile dev = dev_in.for_precision(p.precision);
  std::map<std::string, double> out;
  const plan::RankPlan &r = p.ranks[static_cast<size_t>(rank)];
  for (const plan::Program &prog : r.programs) {
    double times = prog.name == "optimizer_step" ? 1 : prog.name == "eval_step" ? 0 : double(p.micro_batches);
    for (const Instr &in : prog.instrs)
      if (times > 0) out[in.op] += times * instruction_seconds(in, r, p.mesh, dev);
  }
  return out;
}

void store_prediction(plan::Plan &p, const PlanCost &c, const DeviceProfile &dev) {
  p.predicted_step_s = c.step_s;
  p.device_profile = dev.name;
  for (size_t i = 0; i < p.ranks.size() && i < c.ranks.size(); ++i) {
    p.ranks[i].predicted_step_s = c.ranks[i].step_s;
    p.ranks[i].predicted_compute_s = c.ranks[i].compute_s;
    p.ranks[i].predicted_comm_s = c.ranks[i].comm_s;
    p.ranks[i].predicted_alloc_bytes = predicted_alloc_bytes(p.ranks[i], dev.backend == "cpu");
  }
}

} // namespace parallora::planner
