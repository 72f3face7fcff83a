//===- plan.h - the compiled training plan, as the runtime sees it --------===//
//
// A plan is what `lora-compile -o plan.lp` writes and `lora-run` executes. It is plain C++
// (no MLIR): the compiler (passes/lower) fills these structs, runtime/plan/plan_io.cpp
// serializes them (protobuf, see plan.proto) and the runtime loads them.
//
// One plan holds every rank's program (world_size ranks; 1 for single-device plans). Each rank
// has named programs, each a flat instruction stream over numbered buffers:
//   "micro_step"      forward + loss + backward of one micro-batch; adapter gradients are
//                     accumulated (+=) into the persistent Grad buffers
//   "optimizer_step"  global-norm clipping + AdamW over all trainables, then zeroes the grads
//   "eval_step"       forward + loss only (validation)
// The runtime runs micro_step `micro_batches` times, then optimizer_step, per training step.
//
// Buffers: Activation buffers live in one arena per rank at `offset` (the compiler's
// liveness-based memory plan; two buffers with the same offset never live at the same time,
// and a reshape's result shares its input's bytes). Every other kind is a persistent tensor
// the runtime allocates once (parameters, gradients, AdamW moments, the fed inputs, the loss).
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace parallora::plan {

/// Bumped on every incompatible change; a plan of another version is rejected on load.
constexpr uint32_t kPlanFormatVersion = 1;

enum class ElemType { F32 = 0, I32 = 1 };

enum class BufferKind {
  Input = 0,      // fed by the runtime before each micro_step/eval_step: "input_ids", "labels"
  Param = 1,      // frozen base parameter: checkpoint tensor `name` (or `init` spec)
  Trainable = 2,  // adapter parameter, updated by optimizer_step
  Grad = 3,       // gradient accumulator of trainable `param` (persistent, zeroed by the optimizer)
  OptState = 4,   // AdamW moment of trainable `param`: name "<param>.exp_avg" / ".exp_avg_sq"
  Activation = 5, // temporary in the arena at `offset`
  Output = 6,     // persistent result read by the runtime: "loss" (0-d f32)
};

struct Buffer {
  int32_t id = -1;                 // == index in RankPlan::buffers
  std::string name;                // param/state name, "input_ids", "loss", or "%17 (module.path)"
  BufferKind kind = BufferKind::Activation;
  ElemType dtype = ElemType::F32;
  std::vector<int64_t> shape;      // row-major, static
  int64_t offset = -1;             // arena byte offset (Activation only)
  // Param / Trainable: "checkpoint" (read tensor `name` from the base weights) or an init spec
  // understood by models/weight_init.h ("normal(0.0,0.02)", "zeros", "kaiming_uniform(a=...)").
  std::string init;
  // Grad / OptState: the trainable this belongs to.
  std::string param;
  // For sharded plans (later): the slice of the named checkpoint tensor this buffer holds,
  // one [start, size] per dim; empty = the whole tensor.
  std::vector<std::pair<int64_t, int64_t>> slice;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t nbytes() const { return numel() * 4; }  // f32 and i32 are both 4 bytes
};

using AttrValue = std::variant<int64_t, double, std::string, std::vector<int64_t>>;

struct Instr {
  std::string op;                      // kernel name, e.g. "linear_fwd" (runtime/cpu/kernels.h)
  std::vector<int32_t> inputs;         // buffer ids; -1 = an absent optional operand
  std::vector<int32_t> outputs;        // buffer ids
  std::map<std::string, AttrValue> attrs;
  std::string loc;                     // HF module path, for errors and profiles
  int32_t layer = -1;                  // decoder layer, -1 outside layers
  double flops = 0;                    // model FLOPs of this instruction (per execution)
};

struct Program {
  std::string name;                    // "micro_step", "optimizer_step", "eval_step"
  std::vector<Instr> instrs;
};

struct RankPlan {
  int32_t rank = 0;
  std::vector<Buffer> buffers;
  std::vector<Program> programs;
  int64_t arena_bytes = 0;             // size of the activation arena
  // Compiler estimates for this rank.
  int64_t param_bytes = 0;             // frozen + trainable parameters
  int64_t grad_bytes = 0;
  int64_t optimizer_bytes = 0;
  int64_t peak_bytes = 0;              // param + grad + optimizer + arena + inputs/outputs
  double flops_per_step = 0;           // micro_steps * micro_step flops + optimizer
};

struct Hyperparams {
  double lr = 1e-4;
  std::string schedule = "constant";   // "constant" | "cosine" | "linear" (after warmup)
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;           // cosine/linear decay floor, fraction of lr
  int64_t total_steps = 0;             // decay horizon; 0 = lora-run's --steps
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double max_grad_norm = 1.0;          // 0 = no clipping
};

struct LoraInfo {
  int64_t rank = 0;
  double alpha = 0;
  double dropout = 0;
  bool use_rslora = false;
  std::vector<std::string> target_modules;  // e.g. {"q_proj", "v_proj"}
};

struct Plan {
  uint32_t version = kPlanFormatVersion;
  std::string producer;                // "lora-compile 0.1.0"
  std::string model_config_json;       // the HF config.json the model was built from
  std::string base_weights;            // safetensors path (file or dir) or "" (random init / --weights)
  LoraInfo lora;
  Hyperparams hparams;
  int64_t global_batch = 1;            // sequences per optimizer step (all ranks together)
  int64_t seq_len = 1;
  int64_t micro_batches = 1;           // micro_step runs per optimizer step (per data-parallel rank)
  int64_t vocab_size = 0;
  int64_t ignore_index = -100;
  int32_t world_size = 1;
  std::vector<RankPlan> ranks;         // ranks[r].rank == r
};

} // namespace parallora::plan
