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
// Pipelined plans (mesh.pp > 1) split micro_step per stage into
//   "forward"         this stage's forward of one micro-batch (recv activations / send them on)
//   "backward"        this stage's backward of the same micro-batch (recv / send gradients)
// which the runtime interleaves over micro-batches by `pipeline_schedule` (runtime/core/
// schedule.h). A micro-batch's forward and backward run on the same arena slot: the rank
// allocates `slots` copies of its arena (and of its Input/Output buffers), one per micro-batch
// in flight. eval_step is per stage too (forward only, with its own send/recv).
//
// Ranks and the mesh: world rank r <-> (pp stage, dp index, tp index) with tp varying fastest:
// r = (pp_i * dp + dp_i) * tp + tp_i (Megatron's order). Collective instructions name a
// `group`: the mesh axes they span ("tp", "dp", "dp,tp", "tp,pp", ...; always in dp,tp,pp order),
// i.e. the ranks that share this rank's coordinates on every other axis.
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

/// Bumped on every format change. The reader accepts kMinPlanFormatVersion..kPlanFormatVersion:
/// version 3 added Plan::adapter_weights (absent = "" in a version-2 plan, which is what a
/// version-2 plan meant); version 4 added the interleaved pipeline's virtual_stages, the zb-h1
/// schedule (backward_weight programs), the packing inputs position_ids / segment_ids, LoRA
/// dropout attributes on lora_linear instructions and the cost model's predictions (all optional:
/// a version 2 or 3 plan means what it meant). A runtime older than version 4 refuses a version-4
/// plan rather than running a schedule, input or dropout it does not know. Older plans than 2
/// are rejected on load.
constexpr uint32_t kPlanFormatVersion = 4;
constexpr uint32_t kMinPlanFormatVersion = 2;

/// Element types. BF16 is bfloat16 storage (the top 16 bits of an f32, round-to-nearest-even on
/// store); kernels compute in f32 (runtime/base/bf16.h). A plan compiled with --precision bf16
/// stores frozen weights and activations as BF16; adapters, gradients, AdamW moments and the
/// loss stay F32 (Plan::precision).
enum class ElemType { F32 = 0, I32 = 1, BF16 = 2 };

/// Bytes per element.
inline int64_t elem_size(ElemType t) { return t == ElemType::BF16 ? 2 : 4; }

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
  // understood by runtime/plan/weight_init.h ("normal(0.0,0.02)", "zeros", "kaiming_uniform(a=...)").
  std::string init;
  // Grad / OptState: the trainable this belongs to.
  std::string param;
  // Sharded Param/Trainable (tensor parallel): the slice of the named checkpoint tensor this
  // buffer holds, one [start, size] per dim, and that tensor's whole shape; empty = the whole
  // tensor. An init spec is drawn for `full_shape` and then sliced, so every tp degree starts
  // from the same numbers as the single-device plan.
  std::vector<std::pair<int64_t, int64_t>> slice;
  std::vector<int64_t> full_shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t nbytes() const { return numel() * elem_size(dtype); }
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
  std::string name;                    // "micro_step" | "forward" + "backward", "optimizer_step", "eval_step"
  std::vector<Instr> instrs;
};

struct RankPlan {
  int32_t rank = 0;
  int32_t dp_rank = 0, tp_rank = 0, pp_stage = 0;  // mesh coordinates of `rank`
  int32_t slots = 1;                   // arena copies: micro-batches in flight (pipelines)
  std::vector<Buffer> buffers;
  std::vector<Program> programs;
  int64_t arena_bytes = 0;             // size of the activation arena
  // Compiler estimates for this rank.
  int64_t param_bytes = 0;             // frozen + trainable parameters
  int64_t grad_bytes = 0;
  int64_t optimizer_bytes = 0;
  int64_t peak_bytes = 0;              // param + grad + optimizer + arena + inputs/outputs
  double flops_per_step = 0;           // micro_steps * micro_step flops + optimizer
  // Predicted bytes this rank sends per optimizer step, by collective ("all_reduce", "send");
  // the runtime counts the same way (runtime/comm/comm.h) and reports both.
  std::map<std::string, int64_t> bytes_sent;
  double forward_flops = 0;            // one micro-batch's forward on this rank (pipelines)
  double backward_flops = 0;           // one micro-batch's backward on this rank
  double bubble_fraction = 0;          // predicted pipeline idle fraction of this rank's step
  // Cost model (passes/planner/cost_model.h, docs/planner.md); 0 = not predicted (no profile).
  double predicted_step_s = 0;         // this rank's optimizer step, seconds
  double predicted_compute_s = 0;      // of which compute instructions
  double predicted_comm_s = 0;         // of which blocking / exposed communication
  // Bytes the runtime will allocate for this rank: the executor's one block (arena x slots +
  // persistent buffers, each 64-byte aligned) + the CPU backend's bf16 widening scratch.
  int64_t predicted_alloc_bytes = 0;
};

struct Mesh {
  int32_t dp = 1, tp = 1, pp = 1;
  int32_t size() const { return dp * tp * pp; }
};

inline int32_t rank_of(const Mesh &m, int32_t dp_i, int32_t tp_i, int32_t pp_i) {
  return (pp_i * m.dp + dp_i) * m.tp + tp_i;
}
struct MeshCoord {
  int32_t dp = 0, tp = 0, pp = 0;
};
inline MeshCoord coord_of(const Mesh &m, int32_t rank) {
  return MeshCoord{(rank / m.tp) % m.dp, rank % m.tp, rank / (m.tp * m.dp)};
}

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
  // Safetensors path (file or dir) or "" (random init / --weights). For an ONNX import compiled
  // without --weights: the file lora-compile -o wrote next to the plan from the ONNX
  // initializers ("<plan>.weights.safetensors"). lora-run --weights overrides it.
  std::string base_weights;
  // Safetensors file with the initial values of the Trainables whose init is "checkpoint" (a
  // PEFT ONNX export's adapters, read from its initializers); "" = read such Trainables from the
  // base weights. lora-run --init-adapter / --resume override it. (Format version 3.)
  std::string adapter_weights;
  LoraInfo lora;
  Hyperparams hparams;
  int64_t global_batch = 1;            // sequences per optimizer step (all ranks together)
  int64_t seq_len = 1;
  int64_t micro_batches = 1;           // micro_step runs per optimizer step (per data-parallel rank)
  int64_t vocab_size = 0;
  int64_t ignore_index = -100;
  int32_t world_size = 1;              // == mesh.size()
  Mesh mesh;
  std::string strategy = "single";     // "single" | "data" | "tensor" | "pipeline" | "hybrid"
  std::string pipeline_schedule = "none";  // "gpipe" | "1f1b" | "interleaved" | "zb-h1" when mesh.pp > 1
  // Interleaved: model chunks per rank (chunk c of rank s = model chunk c * pp + s), each with
  // its programs "forward.c<c>" / "backward.c<c>" (c = 0: "forward" / "backward"); else 1.
  int32_t virtual_stages = 1;
  // Storage precision policy: "fp32" (every float buffer F32) or "bf16" (frozen weights and
  // activations BF16; adapters, gradients, moments, loss F32). Kernels compute in f32 either way.
  std::string precision = "fp32";
  std::vector<RankPlan> ranks;         // ranks[r].rank == r
  // Cost model: the slowest rank's predicted step time on `device_profile` (a models/devices
  // name or file); 0 / "" = no prediction (docs/planner.md).
  double predicted_step_s = 0;
  std::string device_profile;
};

} // namespace parallora::plan
