//===- kernel_check.h - operand validation shared by every backend's kernels ---===//
//
// Every kernel checks its operands and attributes against the contract (runtime/cpu/kernels.h)
// with the same wording on every backend: "<kernel> (<module path>): <what is wrong>". The CPU
// and CUDA kernels both use this class, so their errors are identical by construction.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <cmath>
#include <string>
#include <vector>

#include "runtime/comm/comm.h"
#include "runtime/kernel.h"

namespace parallora::rt {

/// "[2, 16, 64]".
std::string shape_str(const std::vector<int64_t> &shape);

/// "<kernel> (<loc>): <msg>".
Status kernel_error(const KernelCall &call, const char *kernel, const std::string &msg);

/// Records the first contract violation of one call; every method returns false after it.
class KernelCheck {
public:
  KernelCheck(const KernelCall &call, const char *kernel) : call_(call), kernel_(kernel) {}

  /// in.size() in [nin_min, nin_max], out.size() == nout. Unless `allow_accumulate`, an
  /// `accumulate` attr other than 0 is rejected (the kernel cannot honour it).
  bool operands(size_t nin_min, size_t nin_max, size_t nout, bool allow_accumulate = false);
  /// Present and of the given element type.
  bool f32(const Tensor &t, const char *what);
  bool i32(const Tensor &t, const char *what);
  /// Present and a float type: f32 or bf16 (a --precision bf16 plan's frozen weights and
  /// activations; kernels read bf16 widened to f32 and round once on store).
  bool flt(const Tensor &t, const char *what);
  bool rank(const Tensor &t, const char *what, int rank);
  bool shape(const Tensor &t, const char *what, const std::vector<int64_t> &expected);
  /// (.., d) with rank >= 1 and d > 0; *rows = numel / d (the flattened leading dims).
  bool rows_of(const Tensor &t, const char *what, int64_t d, int64_t *rows);
  /// Same as rows_of, and the row count must equal `rows`.
  bool rows_eq(const Tensor &t, const char *what, int64_t d, int64_t rows);
  /// Same shape as `ref` (named ref_what).
  bool same_shape(const Tensor &t, const char *what, const Tensor &ref, const char *ref_what);
  /// The attr is present and numeric (int64 or double).
  bool num_attr(const char *name);
  /// A dimension that must be > 0.
  bool positive(int64_t v, const char *what);
  /// Records an error unless cond.
  bool expect(bool cond, const std::string &msg);

  Status status() const { return status_; }
  Status error(const std::string &msg) const { return kernel_error(call_, kernel_, msg); }

private:
  bool set(const std::string &msg);
  const KernelCall &call_;
  const char *kernel_;
  Status status_;
};


/// lora_linear_bwd's `part` attr: "input" (dx only: zb-h1's B), "weight" (dA and dB only: W),
/// absent or "all" (all three). Anything else is an error naming the value.
bool lora_grad_part(const KernelCall &c, KernelCheck &ck, bool *want_dx, bool *want_dw);

/// The vocab_group attr of embedding_fwd / cross_entropy_*: this rank holds rows (or logit
/// columns) [lo, lo + shard_rows) of a vocabulary of `vocab` = group size x shard_rows. Without
/// the attr: lo 0, vocab shard_rows. `sharded` = a group of more than one rank.
struct VocabShard {
  bool sharded = false;
  std::string group;
  int64_t lo = 0, vocab = 0;
};
bool parse_vocab_shard(const KernelCall &c, KernelCheck &ck, int64_t shard_rows, VocabShard *out);

//===--------------------------------------------------------------------===//
// parse_<kernel>_args: a kernel's operand count, types, shapes and attributes checked against
// the contract, in one order and with one wording for every backend; false (with ck holding the
// error) on a violation. `bf16_ok`: the float operands may be f32 or bf16 (the CUDA kernels,
// which read bf16 natively), else f32 only (the CPU's f32 kernels: the CPU registry widens bf16
// operands before calling them, so they only ever see f32 unless called directly).
//===--------------------------------------------------------------------===//

/// add: a (..), b (..) -> y (..), one shape (no broadcasting).
bool parse_add_args(const KernelCall &c, KernelCheck &ck, bool bf16_ok);
/// accumulate: x (..) -> acc (..) += x, one shape.
bool parse_accumulate_args(const KernelCall &c, KernelCheck &ck, bool bf16_ok);
/// swiglu_fwd: gate, up -> y; swiglu_bwd: dy, gate, up -> dgate, dup; all of gate's shape.
bool parse_swiglu_args(const KernelCall &c, KernelCheck &ck, bool backward, bool bf16_ok);

/// rms_norm_fwd: x (..,D), w (D) -> y;  rms_norm_bwd: dy, x, w -> dx;  attr eps.
struct RmsNormArgs {
  int64_t D = 0, M = 0;  // row length and row count
  double eps = 0;
};
bool parse_rms_norm_args(const KernelCall &c, KernelCheck &ck, bool backward, bool bf16_ok,
                         RmsNormArgs *out);

/// attention_fwd / attention_bwd: q (B,Hq,T,Dh), k and v (B,Hkv,S,Dh), Hq % Hkv == 0; attrs
/// scale, causal (causal needs T == S). The kernels check their own do / outputs against q, k, v.
struct AttentionArgs {
  int64_t B = 0, Hq = 0, Hkv = 0, T = 0, S = 0, Dh = 0, group = 1;  // group = Hq / Hkv
  float scale = 0;
  bool causal = false;
};
bool parse_attention_qkv(const KernelCall &c, KernelCheck &ck, const Tensor &q, const Tensor &k, const Tensor &v,
                         bool bf16_ok, AttentionArgs *out);
/// Sequence packing: the optional segment_ids operand of attention_fwd / attention_bwd, i32
/// (B, T), self-attention only (T == S). Key s is visible to query t iff segment_ids[b, s] ==
/// segment_ids[b, t] (and s <= t when causal). Any int32 value is a valid segment id.
bool parse_attention_segments(KernelCheck &ck, const Tensor &seg, const AttentionArgs &d);

/// rope_fwd: x [, positions] -> y; rope_bwd: dy [, positions] -> dx; (B,H,T,Dh), one shape,
/// Dh even and > 0. The optional positions (sequence packing) are i32 (B, T); their values must
/// lie in [0, T) (each kernel checks them on its device: rope_position_error).
struct RopeArgs {
  int64_t B = 0, H = 0, T = 0, Dh = 0;
  bool positions = false;  // in[1] holds position_ids
};
/// "position_ids value <p> at (b=.., t=..) is outside [0, T) (positions restart at 0 for each
/// packed example, so they are below the sequence length)".
std::string rope_position_error(int64_t p, int64_t b, int64_t t, int64_t T);
bool parse_rope_args(const KernelCall &c, KernelCheck &ck, bool backward, bool bf16_ok, RopeArgs *out);

/// embedding_fwd: ids (B,T) i32, table (V,D) -> y (B,T,D); attr vocab_group (table is a shard).
struct EmbeddingArgs {
  int64_t B = 0, T = 0, V = 0, D = 0;  // V: this table's rows
  VocabShard vocab;                    // the shard's first row and the whole vocabulary
};
bool parse_embedding_args(const KernelCall &c, KernelCheck &ck, bool bf16_ok, EmbeddingArgs *out);

/// cross_entropy_fwd: logits (B,T,V), labels (B,T) i32 -> loss (one element);
/// cross_entropy_bwd: logits, labels -> dlogits (logits' shape); attrs shift (required),
/// ignore_index, vocab_group. The labels' values are checked by the kernel (on its device),
/// which reports a bad one with ce_label_error.
struct CrossEntropyArgs {
  int64_t B = 0, T = 0, V = 0;  // logits' dims (V: this shard's columns)
  int64_t shift = 0, ignore = -100;
  VocabShard vocab;             // vocab.vocab: the whole vocabulary, labels' range
  // Operand 2 (optional, bound by the executor): [label_count, shares] i32 on the host or
  // device; nullptr when absent. The loss divides by label_count / shares when label_count > 0.
  const int32_t *denominator = nullptr;
};
/// The divisor of a cross-entropy's summed loss: label_count / shares from operand 2 when given
/// and label_count > 0, else the local `count`. Host pointers only (CPU kernels).
double ce_divisor(const CrossEntropyArgs &a, int64_t count);
bool parse_cross_entropy_args(const KernelCall &c, KernelCheck &ck, bool backward, bool bf16_ok,
                              CrossEntropyArgs *out);
/// "label <l> at position (b=.., t=..) is outside the vocabulary [0, V) and is not
/// ignore_index <i>" (t: the labels' position, i.e. the logits row's t + shift).
std::string ce_label_error(int64_t label, int64_t b, int64_t t, const CrossEntropyArgs &a);

/// adamw_step's operands (p, g, m, v; n each) and attributes, checked against the contract;
/// false (with ck holding the error) on a violation. Shared by the CPU and CUDA kernels.
struct AdamwArgs {
  int64_t n = 0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0, max_grad_norm = 0;
  bool zero_grads = false;
  std::string norm_group;        // "" = no reduction
  GroupInfo group;               // norm_group's size and this rank's index
  std::vector<int64_t> divisors; // norm_divisors (empty = all 1)
};
bool parse_adamw_args(KernelCall &c, KernelCheck &ck, AdamwArgs *out);
/// The clipping norm from this rank's sum of squares (fp64, divisors applied): summed over
/// args.norm_group as one f32 element when that has more than one rank, then sqrt; sets
/// StepState::grad_norm and grad_norm_finite. Shared by the CPU and CUDA adamw_step.
Status finish_grad_norm(KernelCall &c, const AdamwArgs &args, double local_sumsq, double *norm);

/// transpose's attr perm: a permutation of x's dims, and y's shape x.dim(perm[i]).
bool parse_transpose_perm(const KernelCall &c, KernelCheck &ck, const Tensor &x, const Tensor &y,
                          std::vector<int64_t> *perm);


/// rope_fwd / rope_bwd attributes: theta, rope_type and the llama3 scaling, checked.
struct RopeParams {
  double theta = 0;
  bool llama3 = false;
  double factor = 0, low = 0, high = 0, old_ctx = 0;  // llama3 only
};
bool parse_rope_params(const KernelCall &c, KernelCheck &ck, RopeParams *out);
/// HF's rotary table for positions 0..T-1: inv_freq = theta^(-2i/Dh) (llama3-scaled) in fp32
/// as torch computes it, then cos/sin (T, Dh/2) row-major. Every backend uses these numbers.
void rope_cos_sin(const RopeParams &p, int64_t T, int64_t Dh, float *cos_out, float *sin_out);

} // namespace parallora::rt
