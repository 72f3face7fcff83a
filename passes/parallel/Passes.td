//===- Passes.td - parallelization phase passes -------------*- tablegen -*-===//
//
// Sharding as data: `partition` seeds a layout on every parameter from the mesh (Megatron's
// tensor-parallel rules, the batch over dp), propagates layouts through the ops and inserts
// collectives where a consumer needs another layout than its producer gives. `sync-grads`
// and `pipeline-split` run after the training passes. lora-compile runs
//   append-loss, partition, autodiff, adamw, sync-grads, pipeline-split
// (the pass pipeline in passes/parallel/parallel_train_pass_pipeline.cpp; pipeline
// parallelism is --pipeline-split).
//
//===----------------------------------------------------------------------===//
#ifndef PARALLORA_PARALLEL_PASSES
#define PARALLORA_PARALLEL_PASSES

include "mlir/Pass/PassBase.td"

def Partition : Pass<"partition", "mlir::ModuleOp"> {
  let summary = "Shard the loss graph over a dp x tp mesh and insert collectives";
  let description = [{
    Runs on every function with a body except `@optimizer_step`, after `append-loss` and
    before `autodiff` (autodiff then differentiates through the collectives). Records the mesh
    as the module attribute `pl.mesh = {dp, tp, pp}`.

    Layouts: every value is replicated (R), sharded on one dim over tp (S(d)) or a partial sum
    over tp (P). Seeds (tp > 1), by parameter name (Megatron; LoRA as PEFT's
    LoraParallelLinear):
      q/k/v/gate/up_proj.weight  S(0) (column parallel)   lora_A R   lora_B S(0)
      o/down_proj.weight         S(1) (row parallel)      lora_A S(1) lora_B R
      embed_tokens, lm_head      S(0) (vocabulary parallel)
      norms                      R
    Rules: a column-parallel linear takes R and gives S(last) (its input passes through
    `pl.copy_to_group`, whose gradient is the all-reduce); a row-parallel linear takes S(last)
    and gives P (the LoRA partial is added before the reduction: no extra communication);
    reshape/transpose move S(d); rope/attention/swiglu keep head-sharded S; rms_norm, add of R
    and P, and the function result need R, so a P operand gets a `pl.all_reduce`. A
    vocabulary-sharded embedding gives P; a cross-entropy over S(last) logits becomes
    vocabulary-parallel (`pl.vocab_group`). Parameters get their local type and
    `pl.shard = {dim, parts}`; a replicated trainable whose gradient is a partial sum over tp
    (lora_A of column-, lora_B of row-parallel layers) gets `pl.grad_partial = "tp"`.
    Data parallel: every value computed from the inputs has its batch dim 0 divided by dp.

    tp must divide the query heads, the key/value heads (GQA), the intermediate size and the
    vocabulary; the error lists the tp values that work.
  }];
  let options = [
    Option<"dp", "dp", "int64_t", "1", "data-parallel degree">,
    Option<"tp", "tp", "int64_t", "1", "tensor-parallel degree">,
    Option<"pp", "pp", "int64_t", "1", "pipeline stages (recorded in pl.mesh for sync-grads / pipeline-split)">,
  ];
}

def SyncGrads : Pass<"sync-grads", "mlir::ModuleOp"> {
  let summary = "All-reduce the accumulated adapter gradients in buckets before AdamW";
  let description = [{
    Reads `pl.mesh`. For every trainable the gradient is summed over dp (and over tp when it is
    a partial sum, `pl.grad_partial`) and scaled by 1/dp: `pl.grad_all_reduce` ops in
    `@optimizer_step` before `pl.adamw_step`, one per bucket of at most `bucket-mb` MiB,
    ordered last layer first (the order the backward finishes them). The AdamW step gets
    `pl.norm_group` (the axes over which gradients are distributed: tp, pp) and
    `pl.norm_divisors` (how many ranks of that group hold each gradient) so gradient clipping
    uses the global norm.

    With `zero1`, every trainable gets an owner among the dp ranks (balanced by bytes,
    `pl.zero_owners` on the AdamW step); a rank keeps AdamW moments only for what it owns, the
    clipping norm is summed over dp as well, and `pl.param_broadcast` sends each updated
    trainable from its owner to the other replicas.
  }];
  let options = [
    Option<"bucketMb", "bucket-mb", "double", "25.0", "gradient bucket size in MiB">,
    Option<"zero1", "zero1", "bool", "false",
           "ZeRO-1: shard the AdamW moments over dp (each dp rank updates the trainables it owns, then pl.param_broadcast)">,
  ];
}

def PipelineSplit : Pass<"pipeline-split", "mlir::ModuleOp"> {
  let summary = "Split the training step into pipeline stages with send/recv at the cuts";
  let description = [{
    Reads `pl.mesh` (pp stages). The units embedding, decoder layer 0..L-1 and final norm + LM
    head + loss are grouped into pp contiguous stages balanced by estimated FLOPs (forward +
    backward). Every function `@f` of `@train_step`, `@eval_step`, `@optimizer_step` becomes
    `@f_s0 .. @f_s{pp-1}` (attribute `pl.stage`); a value used on another stage than its
    producer's is sent there (`pl.send` after the producer, `pl.recv` before the first user,
    one tag per transfer). Backward ops carry `pl.backward` so the runtime can interleave
    micro-batches (GPipe or 1F1B, `pl.pipeline`).

    Interleaved (`schedule=interleaved virtual-stages=v`, Megatron's virtual pipeline): the units
    are grouped into pp x v contiguous model chunks instead, and `@f_s<k>` is model chunk k, which
    rank k % pp runs as its chunk k / pp; send/recv name model chunks (`stage` = k). The
    optimizer is split per rank (`@optimizer_step_s<r>` updates every chunk of rank r).
  }];
  let options = [
    Option<"schedule", "schedule", "std::string", "\"1f1b\"", "pipeline schedule: gpipe, 1f1b, interleaved or zb-h1">,
    Option<"virtualStages", "virtual-stages", "int64_t", "1",
           "interleaved: model chunks per rank (pp x v chunks; chunk c of rank s is model chunk c * pp + s)">,
  ];
}

def SplitWeightGrad : Pass<"split-weight-grad", "mlir::ModuleOp"> {
  let summary = "Split each pipeline stage's backward into input-gradient (B) and weight-gradient (W) parts";
  let description = [{
    For the zero-bubble schedule ZB-H1 (Qi et al. 2023). In every `@train_step_s<k>`, each
    backward `pl.lora_linear_grad` whose adapter gradients are used becomes two:
    `pl.grad_part = "input"` (dx = dy W + s (dy B) A, what the previous stage waits for) and
    `pl.grad_part = "weight"` (dA = s (dy B)^T x, dB = s dy^T (x A^T); with LoRA only the
    adapters, so tiny). The weight part and the `pl.accumulate_grad`s it feeds are marked
    `pl.weight_grad` and moved, in order, after every other op of the function, so the lowering's
    liveness keeps x and dy until W runs and puts W in its own program ("backward_weight").
    Frozen ops (the base weights' gradients are never computed) need no split.

    ```mlir
    // before
    %dx, %da, %db = pl.lora_linear_grad %dy, %x, %w, %a, %b {pl.backward, scaling = 2.0 : f64} : ...
    pl.accumulate_grad %da {param = "...lora_A.weight"} : tensor<2x64xf32>
    ... rest of the backward using %dx ...
    // after
    %dx, %0, %1 = pl.lora_linear_grad %dy, %x, %w, %a, %b {pl.backward, pl.grad_part = "input", ...}
    ... rest of the backward using %dx ...
    %2, %da, %db = pl.lora_linear_grad %dy, %x, %w, %a, %b {pl.backward, pl.grad_part = "weight", pl.weight_grad, ...}
    pl.accumulate_grad %da {param = "...lora_A.weight", pl.weight_grad} : tensor<2x64xf32>
    ```
  }];
}

#endif // PARALLORA_PARALLEL_PASSES
