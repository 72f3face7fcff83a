//===- kernels.h - CPU reference kernels (fp32, multithreaded) --------------===//
//
// The CPU backend is the numerical oracle: fp32 everywhere, GEMMs through oneDNN or OpenBLAS
// (gemm.cpp: tiles fixed by shape), other loops parallel with OpenMP. Results must not depend
// on the thread count (static schedules over work cut by shape, no atomics in reductions), so
// that --resume continues bit-for-bit, also with another --threads.
//
// THE KERNEL CONTRACT. Shapes: B batch, T sequence, D hidden, K in-features, N out-features,
// r LoRA rank, H heads (Hq query, Hkv key/value; Hq % Hkv == 0), Dh head dim, V vocab.
// "(.., K)" means any leading dims, flattened to M rows. Ids and labels are int32.
// Outputs are overwritten unless the attr `accumulate` = 1, then the kernel adds into them.
//
//  name               inputs                                  outputs             attrs
//  embedding_fwd      ids (B,T) i32, table (V,D)              y (B,T,D)           -
//                       an id outside [0, V) is an error naming the id and position
//  rms_norm_fwd       x (..,D), w (D)                          y (..,D)            eps (f64)
//  rms_norm_bwd       dy (..,D), x (..,D), w (D)               dx (..,D)           eps
//  linear_fwd         x (..,K), W (N,K), bias (N) or absent    y (..,N)            -
//  linear_bwd_input   dy (..,N), W (N,K)                       dx (..,K)           accumulate
//  lora_linear_fwd    x (..,K), W (N,K), A (r,K), B (N,r),     y (..,N)            scaling (f64)
//                     bias (N) or absent                         y = x W^T + bias + scaling * (x A^T) B^T
//  lora_linear_bwd    dy (..,N), x (..,K), W (N,K), A (r,K),   dx (..,K),          scaling, accumulate
//                     B (N,r)                                  dA (r,K), dB (N,r)
//                       dx = dy W + s (dy B) A;  dA = s (dy B)^T x;  dB = s dy^T (x A^T)
//                       `accumulate` applies to dA and dB only (gradient accumulators);
//                       dx is always overwritten
//                     LoRA dropout (both): attrs dropout (f64 p), module (str), optional
//                       dropout_feature_group (str); with p > 0 the adapter path reads
//                       D(x) = x * mask / (1 - p) instead of x (mask: runtime/base/philox.h,
//                       coordinates from the StepState: runtime/lora_dropout.h), so
//                       dA = s (dy B)^T D(x), dB = s dy^T (D(x) A^T), dx = dy W + D(s (dy B) A)
//  rope_fwd           x (B,H,T,Dh)                             y (B,H,T,Dh)        theta (f64); optional
//                       llama3 scaling: rope_type = "llama3", factor, low_freq_factor,
//                       high_freq_factor (f64), original_max_position_embeddings (i64).
//                       HF rotate-half: y = x cos + rotate_half(x) sin, positions 0..T-1,
//                       inv_freq[i] = theta^(-2i/Dh) (then llama3-scaled as HF does)
//                     [positions (B,T) i32]: packing; token t of row b is at position
//                       positions[b, t] (in [0, T), else an error naming it) instead of t
//  rope_bwd           dy (B,H,T,Dh) [, positions]              dx (B,H,T,Dh)       same as rope_fwd
//  attention_fwd      q (B,Hq,T,Dh), k (B,Hkv,S,Dh), v (B,Hkv,S,Dh)  o (B,Hq,T,Dh) scale (f64), causal (i64 0/1)
//                       query head h uses kv head h / (Hq/Hkv); causal masks s > t (T == S)
//                     [segment_ids (B,T) i32]: packing (T == S); also masks s where
//                       segment_ids[b, s] != segment_ids[b, t] (block-diagonal)
//  attention_bwd      do (B,Hq,T,Dh), q, k, v [, segment_ids]  dq, dk, dv          scale, causal
//  swiglu_fwd         gate (..), up (..)                       y = silu(gate)*up   -
//  swiglu_bwd         dy (..), gate (..), up (..)              dgate, dup          -
//  add                a (..), b (..)                           y = a + b           -
//  transpose          x                                        y                   perm (ints): y.dim(i) = x.dim(perm[i])
//  copy               x                                        y (same numel)      -
//  accumulate         x (..)                                   acc (..): acc += x  -
//  fill_zero          (none)                                   y_0..y_{n-1} = 0    -
//  cross_entropy_fwd  logits (B,T,V), labels (B,T) i32         loss () f32         ignore_index (i64),
//                       shift (i64 0/1): 1 = HF's causal-LM shift, logits[:, t] predicts labels[:, t+1]
//                       (positions t = 0..T-2). loss = mean over non-ignored positions (0 when none)
//                       optional operand 2, denominator (2) i32 = [label_count, shares], bound by
//                       the executor (Executor::set_loss_denominator), not the plan: when
//                       label_count > 0 the sum is divided by label_count / shares instead of the
//                       local count (fwd and bwd), so the step's shares average to the mean over
//                       the global batch's labels
//  cross_entropy_bwd  logits (B,T,V), labels (B,T) i32         dlogits (B,T,V)     ignore_index, shift,
//                       grad_scale (f64): dlogits = grad_scale * (softmax - onehot) / count at
//                       non-ignored positions, 0 elsewhere (also at t = T-1 when shift);
//                       dlogits may be the logits' own storage (in place: the compiler does
//                       this when the logits die there)
//  adamw_step         p_0..p_{n-1}, g_0..g_{n-1},              (none: in place)    n (i64), beta1, beta2,
//                     m_0..m_{n-1}, v_0..v_{n-1}                                   eps, weight_decay,
//                       max_grad_norm (f64; 0 = off), zero_grads (i64 0/1)
//                       torch semantics: norm = sqrt(sum g^2) over all n grads (fp64 sum);
//                       StepState.grad_norm = norm; if not finite: StepState.grad_norm_finite =
//                       false, no update (grads still zeroed). If max_grad_norm > 0 and
//                       clip = max_grad_norm / (norm + 1e-6) < 1, g *= clip (torch's
//                       clip_grad_norm_). Then torch.optim.AdamW with t = StepState.step,
//                       lr = StepState.lr: p *= 1 - lr*wd; m = b1 m + (1-b1) g;
//                       v = b2 v + (1-b2) g^2; p -= (lr / (1-b1^t)) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
//
// PARALLEL PLANS (tensor / data / pipeline; KernelCall::comm, runtime/comm/comm.h). A `group`
// names mesh axes ("tp", "dp,tp", ...); the reductions below are over that group.
//  all_reduce         x_0..x_{n-1} (all f32 or all bf16)       y_0..y_{n-1}        group (str),
//                       y_i = scale * sum over the group of x_i; one message for the whole     scale (f64,
//                       list (a gradient bucket); y_i may be the same buffer as x_i (in place)  default 1)
//  all_reduce_start   x_0..x_{n-1} (all f32 or all bf16)       (none)              group, scale, bucket
//                       (i64): the overlapped gradient bucket. Packs x_i into the communicator's
//                       staging for `bucket` and starts their sum (Communicator::all_reduce_start);
//                       a no-op unless StepState::last_micro (absent StepState: starts).
//  all_reduce_wait    x_0..x_{n-1}                             y_0..y_{n-1}        group, scale, bucket:
//                       completes the bucket's start and writes y_i = scale * sum; without a
//                       start it is exactly all_reduce. Bytes are counted at the start.
//  broadcast          p_0..p_{n-1} (f32)                       p_0..p_{n-1}        group, roots (ints:
//                       ZeRO-1: p_i takes the value of group member roots[i] (its index in the  the owner of
//                       group); one message per owner, tensors packed in order                  each p_i)
//  send               x (f32, bf16 or i32)                     (none)              peer (i64 world
//  recv               (none)                                   y                   rank), tag (i64)
//                       the bytes of x / y; a recv's (peer, tag) matches the peer's send
//  embedding_fwd      with vocab_group (str): table is rows [c*V', (c+1)*V') of the whole table,
//                       c = this rank's index in the group (V' = table rows); an id outside the
//                       shard gives a zero row; ids outside [0, V'*g) are still errors.
//                       (y is a partial sum; the compiler all-reduces it.)
//  cross_entropy_fwd  with vocab_group: logits (B,T,V') are the vocabulary shard c as above.
//                       Vocabulary-parallel softmax (Megatron): all_reduce(max) of the N row
//                       maxima, then all_reduce(sum) of 2N floats (the N sums of exp and the N
//                       target logits, 0 where the target is in another shard); loss as before.
//  cross_entropy_bwd  with vocab_group: dlogits for the shard; recomputes the row max
//                       (all_reduce max, N floats) and the sum of exp (all_reduce sum, N floats).
//                       N = B*T rows (all rows, also ignored/shifted ones, so every rank sends
//                       the same counts).
//  adamw_step         with norm_group (str, may be empty) and norm_divisors (ints, n entries):
//                       norm^2 = all_reduce(sum) over norm_group of sum_i (sum g_i^2) /
//                       norm_divisors[i] (local sum in fp64, reduced as one f32 element).
//                       Divisor d_i = the number of ranks in the
//                       group holding an identical copy of g_i (replicated gradients count once).
//                       Default: no reduction, divisors 1.
////
// PRECISION. Frozen weights and activations may be stored as bf16 (plan::ElemType::BF16, plans
// compiled with --precision bf16); LoRA A/B, their gradients, AdamW moments and the loss are
// always f32. Every kernel reads bf16 operands widened to f32, computes exactly as in f32 and
// rounds each bf16 output element once, to nearest even (runtime/base/bf16.h); with `accumulate` the
// stored bf16 value is widened, added to in f32 and rounded once. adamw_step and fill_zero take
// f32 only. A bf16 all_reduce sums in f32 and rounds after every combination (as NCCL does).
//
// READINGS OF THE CONTRACT where it leaves room (the CPU kernels implement these; tests in
// tests/unit/test_cpu_kernels.cpp):
//  - Attrs. Required (absent or non-numeric = error): eps, scaling, theta, scale, causal, shift,
//    and for adamw_step n, beta1, beta2, eps; with rope_type = "llama3" also factor,
//    low_freq_factor, high_freq_factor, original_max_position_embeddings. Defaults otherwise:
//    accumulate 0, ignore_index -100, grad_scale 1, weight_decay 0, max_grad_norm 0,
//    zero_grads 0, rope_type "default" (any other rope_type is an error).
//  - `accumulate` is honoured where the table lists it (linear_bwd_input; dA and dB of
//    lora_linear_bwd). Any other kernel given accumulate != 0 fails rather than overwrite.
//  - An optional bias is absent when its Tensor has no data or the input list stops before it.
//  - "(.., K)" operands are checked by last dim and row count, so y (B*T, N) for x (B, T, K)
//    is accepted; element-wise operands (add, accumulate, swiglu_*) must have equal shapes.
//  - attention: T != S is allowed when not causal. transpose and copy move any 4-byte element
//    type (f32 or i32; x and y alike). loss of cross_entropy_fwd: any shape of one element.
//  - cross_entropy_*: a label that is neither ignore_index nor in [0, V) is an error naming it
//    and its position; with shift = 1, labels[:, 0] is never read.
//  - adamw_step follows torch's single-tensor AdamW op by op: m is updated as
//    exp_avg.lerp_(g, 1-b1) (= b1 m + (1-b1) g up to rounding), scalars rounded to f32 where
//    torch does. With zero_grads = 0 the grads keep their clipped values (clip_grad_norm_ is
//    in place). StepState.step must be >= 1.
//
//===----------------------------------------------------------------------===//
#pragma once

#include "runtime/kernel.h"

namespace parallora::rt::cpu {

/// Registers every CPU kernel listed above. Operands stored as bf16 (plans compiled with
/// --precision bf16: frozen weights and activations) are widened to f32, the f32 kernel runs, and
/// bf16 outputs are rounded to nearest-even once (registry.cpp); adamw_step and fill_zero take
/// f32 only (the fp32 master state).
void register_kernels(KernelRegistry &registry);
/// Bytes of f32 scratch the bf16 wrapper above holds (all threads): it only grows, so this is
/// its high-water mark. Kernel-local temporaries (attention's probability blocks, LoRA's x A^T)
/// are not counted.
int64_t scratch_bytes();
/// The f32 kernels alone (bf16 operands are refused by the operand checks).
void register_f32_kernels(KernelRegistry &registry);

/// Threads used by the CPU kernels (OpenMP, and OpenBLAS's own pool if it has one); 0 = all cores.
void set_num_threads(int n);

} // namespace parallora::rt::cpu
