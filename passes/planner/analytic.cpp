//===- analytic.cpp - a candidate strategy's cost from the model's sizes ---===//
#include "passes/planner/analytic.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "passes/planner/cost_model.h"
#include "runtime/plan/collective_bytes.h"
#include "runtime/plan/schedule.h"

namespace parallora::planner {

namespace {

// Instructions per decoder layer in a compiled plan (counted on the 1B plan: eval_step has 19
// per layer; micro_step's backward about 21 more; recompute repeats the forward).
constexpr double kFwdInstrs = 19, kBwdInstrs = 21;
constexpr double kBucketBytes = 25.0 * 1048576;  // --bucket-mb's default

bool targeted(const ModelDims &m, const std::string &name) {
  return std::find(m.lora_targets.begin(), m.lora_targets.end(), name) != m.lora_targets.end();
}

struct Proj {
  const char *name;
  double k, n;        // this rank's shard: (.., k) -> (.., n)
  double lora_elems;  // A + B elements on this rank
};

std::vector<Proj> projections(const ModelDims &m, int tp) {
  const double D = m.hidden, I = m.intermediate, q = double(m.heads) * m.head_dim, kv = double(m.kv_heads) * m.head_dim;
  const double r = m.lora_rank;
  // Column-parallel (q, k, v, gate, up): A (r, K) replicated, B (N/tp, r). Row-parallel (o, down):
  // A (r, K/tp), B (N, r) replicated (docs/parallel.md).
  auto col = [&](const char *n, double K, double N) { return Proj{n, K, N / tp, r * K + r * N / tp}; };
  auto row = [&](const char *n, double K, double N) { return Proj{n, K / tp, N, r * K / tp + r * N}; };
  return {col("q_proj", D, q), col("k_proj", D, kv), col("v_proj", D, kv), row("o_proj", q, D),
          col("gate_proj", D, I), col("up_proj", D, I), row("down_proj", I, D)};
}

struct UnitCost {
  double fwd = 0, bwd = 0;        // seconds, one micro-batch, communication included
  double wgt = 0;                 // zb-h1: the weight-gradient part (in bwd otherwise)
  double comm_fwd = 0, comm_bwd = 0;
  double flops = 0;               // model FLOPs of fwd + bwd (all tp shards together)
  double trainable = 0;           // f32 elements of adapters on this rank
  double params = 0;              // frozen elements on this rank
  double saved = 0;               // activation elements kept for the backward (per micro-batch)
  double transient = 0;           // elements alive only inside the unit (peak)
  double sent = 0;                // bytes sent per micro-batch (all-reduce convention)
};

} // namespace

std::string Candidate::describe() const {
  std::string s = "dp " + std::to_string(dp) + " x tp " + std::to_string(tp) + " x pp " + std::to_string(pp) + ", M " +
                  std::to_string(micro_batches);
  if (pp > 1) s += ", " + schedule;
  if (pp > 1 && schedule == "interleaved") s += " v" + std::to_string(virtual_stages);
  if (zero1) s += ", zero1";
  if (recompute) s += ", recompute";
  return s + ", " + precision;
}

std::string Candidate::flags() const {
  std::string s = "--strategy hybrid --dp " + std::to_string(dp) + " --tp " + std::to_string(tp) + " --pp " + std::to_string(pp) +
                  " --micro-batches " + std::to_string(micro_batches) + " --precision " + precision;
  if (pp > 1) s += " --pipeline-schedule " + schedule;
  if (pp > 1 && schedule == "interleaved") s += " --virtual-stages " + std::to_string(virtual_stages);
  if (zero1) s += " --zero1";
  if (recompute) s += " --recompute layers";
  return s;
}

std::string reject_reason(const ModelDims &m, const Candidate &c, int devices) {
  if (c.dp * c.tp * c.pp != devices)
    return "dp x tp x pp = " + std::to_string(c.dp * c.tp * c.pp) + " is not the " + std::to_string(devices) + " devices";
  for (auto [key, v] : {std::pair<const char *, int64_t>{"num_attention_heads", m.heads}, {"num_key_value_heads", m.kv_heads},
                        {"intermediate_size", m.intermediate}, {"vocab_size", m.vocab}})
    if (v % c.tp != 0) return "tp " + std::to_string(c.tp) + " does not divide " + key + " = " + std::to_string(v);
  if (c.pp > m.layers + 2)
    return "pp " + std::to_string(c.pp) + " exceeds the " + std::to_string(m.layers + 2) + " pipeline units (embedding, " +
           std::to_string(m.layers) + " layers, head)";
  if (m.batch % (int64_t(c.dp) * c.micro_batches) != 0)
    return "batch " + std::to_string(m.batch) + " is not divisible by dp " + std::to_string(c.dp) + " x micro-batches " +
           std::to_string(c.micro_batches);
  if (c.zero1 && c.dp < 2) return "ZeRO-1 needs dp >= 2";
  if (c.pp > 1 && c.schedule == "interleaved") {
    const std::string what = "interleaved v" + std::to_string(c.virtual_stages) + ": ";
    if (c.virtual_stages < 2) return what + "needs 2 or more virtual stages";
    if (c.micro_batches % c.pp != 0)
      return what + "micro-batches " + std::to_string(c.micro_batches) + " is not a multiple of pp " + std::to_string(c.pp);
    if (m.layers % (int64_t(c.pp) * c.virtual_stages) != 0)
      return what + "pp " + std::to_string(c.pp) + " x " + std::to_string(c.virtual_stages) + " = " +
             std::to_string(c.pp * c.virtual_stages) + " model chunks do not divide the " + std::to_string(m.layers) + " layers";
  }
  return "";
}

std::vector<int> balance_units(const std::vector<double> &cost, int parts) {
  const int n = static_cast<int>(cost.size());
  std::vector<double> prefix(n + 1, 0.0);
  for (int i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + cost[i];
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(parts + 1, std::vector<double>(n + 1, inf));
  std::vector<std::vector<int>> cut(parts + 1, std::vector<int>(n + 1, 0));
  best[0][0] = 0;
  for (int k = 1; k <= parts; ++k)
    for (int i = k; i <= n; ++i)
      for (int j = k - 1; j < i; ++j) {
        double v = std::max(best[k - 1][j], prefix[i] - prefix[j]);
        if (v < best[k][i]) best[k][i] = v, cut[k][i] = j;
      }
  std::vector<int> stage(n, 0);
  for (int k = parts, i = n; k > 0; --k) {
    int j = cut[k][i];
    for (int u = j; u < i; ++u) stage[u] = k - 1;
    i = j;
  }
  return stage;
}

Estimate estimate(const ModelDims &m, const Candidate &c, const DeviceProfile &dev_in) {
  const DeviceProfile dev = dev_in.for_precision(c.precision);  // the in-step factors of the candidate's precision
  Estimate e;
  const std::string &prec = c.precision;
  const double es = prec == "bf16" ? 2 : 4;
  const double b = double(m.batch) / (double(c.dp) * c.micro_batches);
  const double rows = b * m.seq_len;
  const double D = m.hidden, V = m.vocab, I = m.intermediate, tp = c.tp;
  const double hq = double(m.heads) * m.head_dim / tp, hkv = double(m.kv_heads) * m.head_dim / tp;
  const double over = dev.per_instruction_s();
  const bool zb = c.pp > 1 && rt::schedule_splits_weight_grad(c.schedule);
  const int nv = c.pp > 1 && c.schedule == "interleaved" ? std::max(1, c.virtual_stages) : 1;
  plan::Mesh mesh{c.dp, c.tp, c.pp};
  // Megatron's activation all-reduce over tp (rank 0's group is representative).
  const bool tp_inter = group_crosses_nodes(mesh, 0, "tp", dev.devices_per_node);
  auto tp_all_reduce = [&](double bytes, UnitCost &u, bool fwd) {
    if (c.tp <= 1) return;
    double sent = double(rt::all_reduce_bytes_sent(int64_t(bytes), c.tp));
    double t = over + (tp_inter ? dev.inter_node : dev.intra_node).all_reduce.seconds(sent);
    (fwd ? u.fwd : u.bwd) += t;
    (fwd ? u.comm_fwd : u.comm_bwd) += t;
    u.sent += sent;
  };

  // One decoder layer.
  UnitCost layer;
  for (const Proj &p : projections(m, c.tp)) {
    bool lora = targeted(m, p.name);
    layer.fwd += over + dev.gemm_seconds(rows, p.n, p.k, prec);
    layer.bwd += over + dev.gemm_seconds(rows, p.k, p.n, prec);
    layer.flops += 2 * (2 * rows * p.k * p.n) * tp;
    layer.params += p.k * p.n;
    if (lora) {
      double r = m.lora_rank;
      layer.fwd += dev.gemm_seconds(rows, r, p.k, "fp32") + dev.gemm_seconds(rows, p.n, r, "fp32");
      layer.bwd += dev.gemm_seconds(rows, r, p.n, "fp32") + dev.gemm_seconds(rows, p.k, r, "fp32");
      // dA, dB (and x A^T): zb-h1's W task, which recomputes u = dy B (cost_model.cpp's split).
      const double w = dev.gemm_seconds(r, p.k, rows, "fp32") + dev.gemm_seconds(rows, r, p.k, "fp32") +
                       dev.gemm_seconds(p.n, r, rows, "fp32");
      if (zb) layer.wgt += over + w + dev.gemm_seconds(rows, r, p.n, "fp32");
      else layer.bwd += w;
      layer.flops += 6 * 2 * rows * r * (p.k + p.n) * tp / 2;  // fwd 2 GEMMs + bwd 4 (flops.cpp's count)
      layer.trainable += p.lora_elems;
    }
  }
  const double attn = 4.0 * b * (double(m.heads) / tp) * m.seq_len * m.seq_len * m.head_dim / 2;
  const std::string sfx = prec == "bf16" ? ".bf16" : "";
  layer.fwd += over + dev.attention_seconds(attn, prec, "attention_fwd" + sfx);
  layer.bwd += over + dev.attention_seconds(2 * attn, prec, "attention_bwd" + sfx);
  layer.flops += 3 * attn * tp;
  // Memory-class kernels (bytes read + written, at the kernel's own rate where the profile has
  // one): 2 norms, rope of q and k, 4 head transposes, swiglu, 2 residual adds.
  const double er = es * rows;
  auto mem = [&](const char *k, double bytes) { return dev.memory_seconds(bytes, k + sfx); };
  layer.fwd += 2 * mem("rms_norm_fwd", er * 2 * D) + mem("rope_fwd", er * 2 * (hq + hkv)) +
               mem("transpose", er * 2 * (2 * hq + 2 * hkv)) + mem("swiglu_fwd", er * 3 * I / tp) + 2 * mem("add", er * 3 * D) +
               over * (kFwdInstrs - 10);
  layer.bwd += 2 * mem("rms_norm_bwd", er * 3 * D) + mem("rope_bwd", er * 2 * (hq + hkv)) +
               mem("transpose", er * 2 * (2 * hq + 2 * hkv)) + mem("swiglu_bwd", er * 5 * I / tp) + 2 * mem("add", er * 3 * D) +
               over * (kBwdInstrs - 10);
  tp_all_reduce(es * rows * D, layer, true), tp_all_reduce(es * rows * D, layer, true);
  tp_all_reduce(es * rows * D, layer, false), tp_all_reduce(es * rows * D, layer, false);
  layer.params += 2 * D;
  layer.saved = rows * (3 * D + hq + 2 * hkv + 2 * I / tp);
  if (c.recompute) {
    layer.bwd += layer.fwd;  // the layer's forward again, collectives included
    layer.transient = layer.saved;
    layer.saved = rows * D;
  }

  // Embedding (vocabulary-parallel under tp: a partial sum all-reduced) and head (final norm,
  // logits, cross entropy; the logits' gradient overwrites them in place).
  UnitCost embed, head;
  embed.fwd = over + dev.memory_seconds(2 * es * rows * D, "embedding_fwd" + sfx);
  tp_all_reduce(es * rows * D, embed, true);
  embed.params = V * D / tp;
  embed.saved = rows * D;
  head.fwd = 3 * over + dev.gemm_seconds(rows, V / tp, D, prec) + dev.memory_seconds(es * rows * 2 * D, "rms_norm_fwd" + sfx) +
             dev.memory_seconds(es * rows * V / tp, "cross_entropy_fwd" + sfx);
  head.bwd = 3 * over + dev.gemm_seconds(rows, D, V / tp, prec) + dev.memory_seconds(es * rows * 3 * D, "rms_norm_bwd" + sfx) +
             dev.memory_seconds(es * rows * 2 * V / tp, "cross_entropy_bwd" + sfx);
  head.flops = 2 * (2 * rows * D * V);
  if (c.tp > 1) {
    auto &l = tp_inter ? dev.inter_node : dev.intra_node;
    head.fwd += 2 * l.all_reduce.alpha_s, head.bwd += 2 * l.all_reduce.alpha_s;  // vocab-parallel softmax's small sums
    tp_all_reduce(es * rows * D, head, false);
  }
  head.params = V * D / tp + D;
  head.saved = rows * V / tp;

  // Units -> stages, balanced by cost as pipeline-split does.
  std::vector<UnitCost> units;
  units.push_back(embed);
  for (int64_t l = 0; l < m.layers; ++l) units.push_back(layer);
  units.push_back(head);
  std::vector<double> unit_cost;
  for (const UnitCost &u : units) unit_cost.push_back(u.fwd + u.bwd + u.wgt);
  // Interleaved: pp x V model chunks, chunk k on stage k % pp (pipeline-split's rule).
  const int K = c.pp * nv;
  std::vector<int> chunk = c.pp > 1 && K <= int(units.size()) ? balance_units(unit_cost, K) : std::vector<int>(units.size(), 0);
  std::vector<int> stage(units.size());
  for (size_t u = 0; u < units.size(); ++u) stage[u] = chunk[u] % c.pp;
  std::vector<double> kf(K, 0.0), kb(K, 0.0), kw(K, 0.0);  // per model chunk
  for (size_t u = 0; u < units.size(); ++u)
    kf[chunk[u]] += units[u].fwd, kb[chunk[u]] += units[u].bwd, kw[chunk[u]] += units[u].wgt;
  if (m.tied && c.pp > 1) units.back().params = V * D / tp + D;  // the last stage holds its own copy

  std::vector<UnitCost> st(c.pp);
  std::vector<double> peak_elems(c.pp, 0.0);
  for (size_t u = 0; u < units.size(); ++u) {
    UnitCost &s = st[stage[u]];
    const UnitCost &x = units[u];
    s.fwd += x.fwd, s.bwd += x.bwd, s.wgt += x.wgt, s.comm_fwd += x.comm_fwd, s.comm_bwd += x.comm_bwd, s.flops += x.flops;
    s.trainable += x.trainable, s.params += x.params, s.sent += x.sent;
    s.saved += x.saved;
    s.transient = std::max(s.transient, x.transient);
  }
  if (m.tied && c.pp == 1) st[0].params -= V * D / tp;  // one table serves both ends

  // Pipeline: one call into the schedule simulation; p2p = one activation send.
  double makespan = 0;
  std::vector<double> last_end;  // per stage: its last task's end (the pipeline's stages end apart)
  const double act_bytes = es * rows * D;
  const bool pp_inter = c.dp * c.tp * c.pp > dev.devices_per_node;
  const LinkCost &pl = (pp_inter ? dev.inter_node : dev.intra_node).send;
  const double p2p = pl.seconds(act_bytes) + pl.wake_s;
  std::vector<double> bwd(c.pp);  // a stage's last backward task (the buckets start in it)
  for (int s = 0; s < c.pp; ++s) bwd[s] = zb ? st[s].wgt : st[s].bwd / nv;
  if (c.pp > 1) {
    rt::PipelineCosts costs{kf, kb, zb ? kw : std::vector<double>{}, p2p};
    PipelineTime pt = pipeline_time(c.schedule, c.micro_batches, costs, nv);
    makespan = pt.makespan;
    last_end = pt.last_backward_end;
  } else {
    makespan = c.micro_batches * (st[0].fwd + st[0].bwd);
  }
  // Per stage: gradient sync (buckets start in the last backward; the last bucket is exposed),
  // AdamW (memory-bound; ZeRO-1 updates 1/dp and broadcasts), memory.
  const bool dp_inter = group_crosses_nodes(mesh, 0, "dp", dev.devices_per_node);
  const Links &dl = dp_inter ? dev.inter_node : dev.intra_node;
  double worst = 0;
  int worst_stage = 0;
  std::vector<double> stage_end;
  for (int s = 0; s < c.pp; ++s) {
    const double grad_bytes = 4 * st[s].trainable;
    double sync = 0;
    int64_t sent = int64_t(c.micro_batches * st[s].sent);
    if (c.dp > 1 && grad_bytes > 0) {
      double ar_sent = double(rt::all_reduce_bytes_sent(int64_t(grad_bytes), c.dp));
      double buckets = std::max(1.0, std::ceil(grad_bytes / kBucketBytes));
      double t_ar = buckets * dl.all_reduce.alpha_s + ar_sent / (dl.all_reduce.bus_gbps * 1e9);
      sync = t_ar / buckets + std::max(0.0, t_ar * (1 - 1 / buckets) - bwd[s]);
      sent += int64_t(ar_sent);
    }
    const double shard = c.zero1 ? c.dp : 1;
    double opt = 2 * over + dev.memory_seconds(7 * grad_bytes / shard, "adamw_step");
    if (c.dp * c.tp * c.pp > 1) opt += dl.all_reduce.alpha_s;  // the clipping norm's reduction
    if (c.zero1) {
      opt += dl.broadcast.seconds(grad_bytes * (c.dp - 1) / c.dp);
      sent += int64_t(grad_bytes / c.dp * (c.dp - 1));
    }
    if (c.pp > 1) sent += int64_t(2 * nv * c.micro_batches * act_bytes);
    double step = makespan + sync + opt;
    stage_end.push_back((s < int(last_end.size()) ? last_end[s] : makespan) + sync + opt);
    if (step > worst) worst = step, worst_stage = s;
    // Memory: frozen params (es), adapters + grads + moments (f32), arena x slots, inputs.
    const int slots = c.pp > 1 ? rt::pipeline_slots(c.schedule, c.pp, s, c.micro_batches, nv) : 1;
    const double arena = es * (st[s].saved + st[s].transient);
    const double bytes = es * st[s].params + 4 * st[s].trainable * (2 + 2 / shard) + slots * (arena + 8 * rows);
    e.peak_bytes = std::max(e.peak_bytes, int64_t(bytes));
    e.bytes_sent = std::max(e.bytes_sent, sent);
    e.flops_per_step += st[s].flops * c.micro_batches * c.dp;
  }
  e.step_s = worst;
  const int world = c.dp * c.tp * c.pp;  // the runtime's per-step control all-reduce (cost_model.h)
  if (world > 1) {
    const LinkCost &cl = (world > dev.devices_per_node ? dev.inter_node : dev.intra_node).all_reduce;
    // + wake_s when the stages end apart by more than it (cost_model.cpp's control_seconds).
    double first_done = worst;
    for (double t : stage_end) first_done = std::min(first_done, t);
    e.step_s += cl.seconds(double(rt::all_reduce_bytes_sent(24, world))) + (worst - first_done > cl.wake_s ? cl.wake_s : 0.0);
  }
  const UnitCost &w = st[worst_stage];
  e.comm_s = c.micro_batches * (w.comm_fwd + w.comm_bwd);
  e.compute_s = c.micro_batches * (w.fwd + w.bwd + w.wgt) - e.comm_s;
  e.bubble_s = std::max(0.0, makespan - c.micro_batches * (w.fwd + w.bwd + w.wgt));
  return e;
}

} // namespace parallora::planner
