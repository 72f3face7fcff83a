//===- plan_io.h - plan files: write, read + validate, describe, fingerprint ===//
//
// File layout (all integers little-endian):
//
//   [8 bytes  magic "PLORAPLN"]
//   [u32      format version == plan::kPlanFormatVersion]
//   [u64      payload length N]
//   [N bytes  payload: parallora.plan.pb.Plan (runtime/plan/plan.proto)]
//   [u32      CRC32 (IEEE, zlib's) of the payload]
//
// read_plan() checks every layer in that order (magic, version, length, CRC, protobuf
// parse, enum ranges) and then the structure (validate_plan), so a plan that loads never
// makes the executor index out of range. Errors name the file.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/plan/plan.h"

namespace parallora::plan {

/// The 8 magic bytes every plan file starts with.
inline constexpr char kPlanMagic[9] = "PLORAPLN";

/// Lower-case names: "input", "param", "trainable", "grad", "opt_state", "activation", "output".
const char *buffer_kind_name(BufferKind kind);
/// "f32" | "i32".
const char *elem_type_name(ElemType type);

/// Structural checks: world_size == ranks.size(), ranks[r].rank == r, buffer ids == index,
/// shapes non-negative, activations inside the arena, instruction operands in range, unique
/// program names, Grad/OptState `param` naming a Trainable of the rank. The message names
/// the rank, program, instruction and buffer.
Status validate_plan(const Plan &plan);

/// The complete file bytes of `plan` (no validation: tests use it to build bad files).
std::string encode_plan(const Plan &plan);
/// Parses file bytes; `origin` (the path) names the source in every error.
StatusOr<Plan> decode_plan(const std::string &bytes, const std::string &origin);

/// Validates, then writes atomically (`path.tmp.<pid>`, fsync, rename).
Status write_plan(const std::string &path, const Plan &plan);
/// Reads and fully validates a plan file.
StatusOr<Plan> read_plan(const std::string &path);

/// Human-readable summary (what `lora-run --describe` prints). `verbose` adds the
/// instruction listing of every program.
std::string describe_plan(const Plan &plan, bool verbose);
/// One instruction as `%out = op(%in, @param, _) {attr = v}  loc`: activations print as
/// %id, named buffers as @name, absent operands as _.
std::string format_instr(const RankPlan &rank, const Instr &instr);

/// Hex FNV-1a 64 of the protobuf payload: two plans with the same fingerprint run the same
/// computation (checkpoints record it; --resume refuses a different plan).
std::string plan_fingerprint(const Plan &plan);

/// What a checkpoint's training depends on, independent of how it is run: one (label, value)
/// per item, in a fixed order: the model (a hash of its config), vocabulary, LoRA config, global
/// batch, sequence length and the optimizer hyperparameters. The mesh, strategy, pipeline
/// schedule, micro-batches and precision are not in it: a checkpoint resumes under any of them.
std::vector<std::pair<std::string, std::string>> training_config(const Plan &plan);
/// Hex FNV-1a 64 of training_config(): --resume accepts a checkpoint whose training fingerprint
/// equals the plan's (whatever its plan fingerprint).
std::string training_fingerprint(const Plan &plan);

/// CRC32 (IEEE 802.3 polynomial, as zlib's crc32()).
uint32_t crc32(const void *data, size_t size, uint32_t crc = 0);

/// nullptr when the rank has no program of that name.
const Program *find_program(const RankPlan &rank, const std::string &name);

} // namespace parallora::plan
