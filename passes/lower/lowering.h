//===- lowering.h - the Lowering class, shared by the lowering's files -----===//
//
// Internal to passes/lower (the public entry is lower_to_plan.h). One Lowering object turns a
// training module into a plan::Plan; its work is split by concern across files:
//   lower_to_plan.cpp       the driver: stages, per-rank copies, buffers by name
//   lower_instructions.cpp  one plan instruction per op of a function
//   lower_memory.cpp        storage types (precision policy), liveness, arena placement
//   lower_grad_sync.cpp     ZeRO-1 per rank, overlap of the gradient buckets with the backward
//   lower_estimates.cpp     predicted bytes sent per collective, memory and FLOPs
//   lower_hparams.cpp       the model config and AdamW hyperparameters from module attributes
//
//===----------------------------------------------------------------------===//
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "ir/Dialect.h"
#include "passes/lower/lower_to_plan.h"
#include "passes/parallel/Passes.h"
#include "passes/train/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/StringMap.h"

namespace parallora::lowering {

// The lowering's files share MLIR's names, as MLIR's own lib/ files do.
using namespace mlir;
using plan::Buffer;
using plan::BufferKind;
using plan::Instr;

/// The HF module path of an op's location ("model.layers.0.self_attn"), or "".
std::string loc_path(Location loc);
/// A float or integer attribute as a double (0 when absent).
double attr_f64(Attribute a);

class Lowering {
public:
  Lowering(ModuleOp module, const LowerOptions &o) : module_(module), opts_(o) {}

  FailureOr<plan::Plan> run();

private:
  // ---------------------------------------------- buffers (lower_to_plan.cpp)
  int32_t add_buffer(Buffer b);
  int32_t named(BufferKind kind, const std::string &name, plan::ElemType dtype, std::vector<int64_t> shape,
                const std::string &param = "");
  FailureOr<int32_t> param_buffer(pl::ParamOp p);
  /// A new temporary buffer for `v` in the current program.
  int32_t activation(Value v, const std::string &name);
  int32_t root(int32_t id);
  bool is_temp(int32_t id) const { return id >= 0 && rank_.buffers[id].kind == BufferKind::Activation; }
  void reset();

  // ---------------------------------------------- instructions (lower_instructions.cpp)
  LogicalResult lower_function(func::FuncOp func, plan::Program &prog, bool is_eval);
  static pl::AccumulateGradOp single_accumulate(Value v);
  bool is_logits(Value v);
  /// A pipeline stage that holds no trainables (pipeline-split leaves its @optimizer_step_s<k>
  /// empty but marks it with the norm group the other stages sum the clipping norm over) still
  /// takes part in that all-reduce: an adamw_step over no trainables contributes 0 and reads
  /// the global norm like every other rank (the runtime's step also records it).
  static void add_norm_share(func::FuncOp optim, const plan::Hyperparams &hp, plan::Program &opt);
  static void rope_attrs(Instr &in, double theta, DictionaryAttr scaling);

  // ---------------------------------------------- storage and arena (lower_memory.cpp)
  /// The precision policy (LowerOptions::precision), applied to this program's activations
  /// before they are placed: with "bf16" every float activation is stored as bf16, except the
  /// ones that hold an adapter gradient on its way into its accumulator (the input of an
  /// accumulate / copy / add writing a Grad buffer: gradients are fp32 master state; the usual
  /// case, lora_linear_bwd accumulating dA/dB straight into the Grad buffers, has none). Views
  /// share their input's bytes, so a storage group takes one type: f32 if any member must be.
  void storage_types(const plan::Program &prog);
  /// True when no op after `op` reads `v` or any value sharing its storage.
  bool last_use_in(Operation &op, Value v, const llvm::DenseMap<Value, int32_t> &buf);
  /// Live intervals of this program's storage groups -> arena offsets.
  LogicalResult place(plan::Program &prog);

  // ---------------------------------------------- gradient sync per rank (lower_grad_sync.cpp)
  /// ZeRO-1 on this rank: its AdamW step keeps only the trainables it owns (attr zero_owners ==
  /// its dp index), the moments of the others are dropped from the buffer table, and the
  /// broadcast of the updated trainables is counted (the owner sends to dp - 1 replicas).
  LogicalResult shard_optimizer(plan::RankPlan &rp, const Mesh3 &mesh);
  /// Overlap of the gradient sync with the backward: every gradient bucket's all_reduce in
  /// optimizer_step becomes an all_reduce_start in the backward (micro_step, or the pipeline
  /// stage's backward) right after the instruction that writes the bucket's last gradient, and
  /// an all_reduce_wait where the all_reduce was. The runtime starts it only on the step's last
  /// micro-batch (StepState::last_micro), so the rest of that backward runs while the bucket
  /// travels; the wait completes it before the optimizer. Buckets are ordered last layer first,
  /// so the starts come out in bucket order, the same on every rank of a group.
  void overlap_grad_sync();

  // ---------------------------------------------- predictions (lower_estimates.cpp)
  /// Ranks in a collective group of the mesh ("dp,tp" -> dp * tp).
  static int group_ranks(const std::string &group, const Mesh3 &m);
  /// Bytes one execution of `in` sends (runtime/plan/collective_bytes.h's convention, per call).
  void bytes_sent(const Instr &in, const Mesh3 &m, std::map<std::string, int64_t> &by_kind, int64_t times);
  void estimates(plan::Plan &p, const Mesh3 &mesh);

  // ---------------------------------------------- module attributes (lower_hparams.cpp)
  LogicalResult read_model(plan::Plan &p);
  LogicalResult read_hparams(plan::Plan &p);

  ModuleOp module_;
  const LowerOptions &opts_;
  plan::RankPlan rank_;
  int64_t buckets_ = 0;                        // gradient buckets of this stage (attr bucket)
  std::vector<bool> backward_;                  // per instruction of the last lowered function
  std::vector<bool> weight_grad_;               // per instruction: zb-h1's W part (pl.weight_grad)
  std::pair<plan::Program *, std::vector<int32_t>> zero_after_;  // shard_optimizer's pending fill_zero
  std::map<int32_t, int64_t> shard_dims_;       // tp-sharded param buffer -> its sharded dim
  std::vector<std::map<int32_t, int64_t>> stage_shards_;
  llvm::StringMap<int32_t> by_name_;
  llvm::DenseMap<int32_t, int32_t> group_;    // union-find over temporary buffers
  int32_t first_buffer_ = 0;
  int64_t io_bytes_ = 0;
};

} // namespace parallora::lowering
