//===- cost_model.h - predicted step time of a plan on a device profile ----===//
//
// Costs every instruction of every rank's programs with a DeviceProfile and puts them together
// the way the runtime runs them:
//   * an instruction costs the profile's per-instruction overhead plus its work: GEMMs (the
//     linears, LoRA's factors counted as their own small GEMMs) at the profile's rate for their
//     shape class, attention at the attention rate, every other kernel as memory traffic (the
//     bytes of its operands and results) over the memory bandwidth;
//   * a collective costs alpha + bytes sent / bus bandwidth (runtime/plan/collective_bytes.h's
//     byte convention) on the intra- or inter-node link its group spans;
//   * a gradient bucket's all_reduce_start (the last micro-batch only) starts its reduction on
//     a communication channel that runs beside the compute; the matching all_reduce_wait waits
//     for it (docs/parallel.md "Overlap of the gradient sync");
//   * a step is micro_batches x micro_step + optimizer_step, or for pipelines the simulated
//     schedule (runtime/plan/schedule.h: gpipe, 1f1b, interleaved with its model chunks, zb-h1
//     with the weight-gradient program as its own task) of each model chunk's forward /
//     backward (/ backward_weight) times with the send cost between stages, then each stage's
//     optimizer_step.
//   * a plan with more than one rank ends every step with the runtime's control all-reduce.
// The predicted step time of the plan is the slowest rank's plus that control message. Plain
// C++, no MLIR.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <map>
#include <string>
#include <vector>

#include "passes/planner/device_profile.h"
#include "runtime/plan/plan.h"
#include "runtime/plan/schedule.h"

namespace parallora::planner {

struct RankCost {
  double step_s = 0;          // predicted time of one optimizer step on this rank
  double compute_s = 0;       // time in compute instructions per step
  double comm_s = 0;          // time in blocking communication per step (+ exposed bucket waits)
  double comm_hidden_s = 0;   // bucket reductions that ran behind compute
  double bubble_s = 0;        // pipeline idle time of this rank per step
};

struct PlanCost {
  std::vector<RankCost> ranks;
  double step_s = 0;     // the slowest rank + control_s
  double control_s = 0;  // the runtime's per-step control all-reduce (multi-rank plans)
};

/// The runtime's per-step control traffic of a plan with more than one rank: one all-reduce of
/// 3 doubles over the world after the optimizer step (runtime/train/session.cpp); plus the
/// all-reduce link's wake_s when the first rank done waits longer than that for the last (`skew_s`).
double control_seconds(const plan::Plan &p, const DeviceProfile &dev, double skew_s = 0);

/// Seconds of one execution of `in` on `rank` (collectives included, as blocking calls).
double instruction_seconds(const plan::Instr &in, const plan::RankPlan &rank, const plan::Mesh &mesh,
                           const DeviceProfile &dev);

/// The predicted step of every rank.
PlanCost cost_plan(const plan::Plan &p, const DeviceProfile &dev);

/// GEMM library calls of one linear instruction (linear_fwd, linear_bwd_input: 1; lora_linear_fwd:
/// 3; lora_linear_bwd: 6, or its zb-h1 part: 3 each; runtime/cpu/matmul.cpp), 0 for other ops: what
/// DeviceProfile::gemm_call_s is charged for.
int gemm_calls(const plan::Instr &in);

/// Bytes the runtime allocates for `rank` (RankPlan::predicted_alloc_bytes): the executor's block
/// (runtime/core/executor.cpp: S arenas, then persistent buffers, Input/Output once per slot,
/// each rounded up to 64 bytes) plus the CPU backend's bf16 widening scratch (runtime/cpu/
/// registry.cpp: per operand position a pool that grows to the largest bf16 operand widened there)
/// when `cpu_scratch` (a profile whose backend is "cpu").
int64_t predicted_alloc_bytes(const plan::RankPlan &rank, bool cpu_scratch);

/// Predicted seconds per optimizer step of each kernel (op name) on `rank`, every execution summed
/// (micro_step / forward / backward x micro-batches, optimizer_step once; collectives as blocking
/// calls, no overlap): where the time goes, to set beside lora-run --profile.
std::map<std::string, double> op_seconds(const plan::Plan &p, int rank, const DeviceProfile &dev);

/// Writes the prediction into the plan's optional fields (Plan::predicted_step_s, ...).
void store_prediction(plan::Plan &p, const PlanCost &c, const DeviceProfile &dev);

/// True when the ranks of `rank`'s collective group `group` ("dp", "dp,tp", ...) sit on more than one
/// node (ranks 0..n-1 on node 0, n..2n-1 on node 1, ... with n = devices_per_node).
bool group_crosses_nodes(const plan::Mesh &mesh, int rank, const std::string &group, int devices_per_node);

/// The pipeline's makespan and per-stage idle time: the one call into runtime/plan/schedule.h.
struct PipelineTime {
  double makespan = 0;
  std::vector<double> last_backward_end;  // per stage
  std::vector<double> busy;               // per stage
  std::vector<rt::TimelineEntry> entries; // every task of every stage, as simulated
};
PipelineTime pipeline_time(const std::string &schedule, int micro_batches, const std::vector<double> &fwd,
                           const std::vector<double> &bwd, double p2p);
/// Any schedule: `costs` per model chunk (rt::PipelineCosts), `chunks` virtual stages per rank.
PipelineTime pipeline_time(const std::string &schedule, int micro_batches, const rt::PipelineCosts &costs, int chunks);

} // namespace parallora::planner
