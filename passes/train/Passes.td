//===- Passes.td - training-step phase passes ---------------*- tablegen -*-===//
//
// Passes that turn a LoRA forward graph into one training step. buildTrainPassPipeline()
// (train_pass_pipeline.cpp) runs them in order: append-loss, autodiff, [recompute-layers,] adamw.
//
//===----------------------------------------------------------------------===//
#ifndef PARALLORA_TRAIN_PASSES
#define PARALLORA_TRAIN_PASSES

include "mlir/Pass/PassBase.td"

def PackSequences : Pass<"pack-sequences", "mlir::ModuleOp"> {
  let summary = "Give @forward position_ids and segment_ids inputs for packed rows (lora-compile --packing)";
  let description = [{
    Sequence packing: several examples share one row of T tokens. Adds two integer inputs
    with input_ids' type, `position_ids` (each token's position inside its own example,
    restarting at 0) and `segment_ids` (which example of the row a token belongs to), and
    passes them to every `pl.rope` (as `positions`) and every `pl.attention` (as
    `segment_ids`: a query attends only to keys of its own segment, causally). A packed row
    then computes exactly what its examples compute one at a time, as Hugging Face does with
    `position_ids` and a block-diagonal causal mask. Fails on a graph with attention or rope
    that is not a `pl.attention` / `pl.rope` op (the mask could not be applied). Runs before
    --append-loss, which keeps the new inputs and adds `labels` after them.

    Before:

    ```mlir
    func.func @forward(%ids: tensor<2x16xi64>) -> tensor<2x16x256xf32> {
      %qr = pl.rope %q {theta = 1.000000e+04 : f64} : tensor<2x4x16x16xf32>
      %o = pl.attention %qr, %kr, %v {causal, scale = 2.500000e-01 : f64} : (...) -> tensor<2x4x16x16xf32>
    ```

    After:

    ```mlir
    func.func @forward(%ids: tensor<2x16xi64> {pl.name = "input_ids"}, %pos: tensor<2x16xi64> {pl.name = "position_ids"},
                       %seg: tensor<2x16xi64> {pl.name = "segment_ids"}) -> tensor<2x16x256xf32> {
      %qr = pl.rope %q positions(%pos : tensor<2x16xi64>) {theta = 1.000000e+04 : f64} : tensor<2x4x16x16xf32>
      %o = pl.attention %qr, %kr, %v segments %seg {causal, scale = 2.500000e-01 : f64} : (..., tensor<2x16xi64>) -> tensor<2x4x16x16xf32>
    ```
  }];
  let dependentDialects = ["parallora::pl::PlDialect", "mlir::func::FuncDialect"];
}

def AppendLoss : Pass<"append-loss", "mlir::ModuleOp"> {
  let summary = "Turn @forward (ids -> logits) into @train_step and @eval_step (ids, labels -> loss)";
  let description = [{
    Appends Hugging Face's causal-LM loss to the model: a `labels` argument with the shape of
    `input_ids` and a `pl.cross_entropy {shift_labels}` with `ignore_index` (PyTorch's -100 by
    default), so `labels = input_ids` trains next-token prediction exactly as
    `LlamaForCausalLM(input_ids, labels=input_ids)` does. The function is renamed
    `@train_step` and a copy named `@eval_step` is kept: autodiff differentiates the former,
    validation runs the latter.

    Before:

    ```mlir
    func.func @forward(%ids: tensor<2x16xi64>) -> tensor<2x16x256xf32> {
      ...
      return %logits : tensor<2x16x256xf32>
    }
    ```

    After:

    ```mlir
    func.func @train_step(%ids: tensor<2x16xi64>, %labels: tensor<2x16xi64>) -> tensor<f32> {
      ...
      %loss = pl.cross_entropy %logits, %labels {shift_labels} : (tensor<2x16x256xf32>, tensor<2x16xi64>) -> tensor<f32>
      return %loss : tensor<f32>
    }
    func.func @eval_step(...) -> tensor<f32>   // the same body
    ```
  }];
  let dependentDialects = ["parallora::pl::PlDialect", "mlir::func::FuncDialect"];
  let options = [
    Option<"ignoreIndex", "ignore-index", "int64_t", /*default=*/"-100",
           "label value that is not scored (PyTorch's ignore_index)">,
  ];
}

def Autodiff : Pass<"autodiff", "mlir::ModuleOp"> {
  let summary = "Reverse-mode gradients of @train_step's loss for the trainable params";
  let description = [{
    Walks @train_step backwards from its loss and applies each op's gradient rule
    (grad_rules.cpp: one rule per `pl` op, e.g. `pl.lora_linear` -> `pl.lora_linear_grad`).
    Only values that depend on a trainable param are differentiated (activity analysis), so
    gradients flow back through frozen layers as input gradients but stop below the first
    adapter, and no frozen weight gets a gradient. Values used more than once sum their
    gradients with `pl.add`. Each trainable param's gradient ends in a `pl.accumulate_grad`,
    which adds it to the param's accumulator: running @train_step once per micro-batch with
    `micro-batches = M` (loss seed 1/M) accumulates the gradient of the mean loss.

    Fails, naming the op and its module path, on an active op without a gradient rule, on a
    trainable param the loss does not depend on, and on trainable weights of ops whose rules
    only produce input gradients (full fine-tuning is not supported).

    Before (`pl.lora_linear` feeding the loss):

    ```mlir
    %y = pl.lora_linear %x, %w, %a, %b {scaling = 2.0 : f64, ...}
    ...
    %loss = pl.cross_entropy %logits, %labels {shift_labels}
    return %loss
    ```

    After:

    ```mlir
    %loss = pl.cross_entropy %logits, %labels {shift_labels}
    %dl = pl.cross_entropy_grad %logits, %labels {grad_scale = 1.0 : f64, shift_labels}
    ...
    %dx, %da, %db = pl.lora_linear_grad %dy, %x, %w, %a, %b {scaling = 2.0 : f64}
    pl.accumulate_grad %da {param = "...lora_A.weight"}
    pl.accumulate_grad %db {param = "...lora_B.weight"}
    return %loss
    ```
  }];
  let dependentDialects = ["parallora::pl::PlDialect"];
  let options = [
    Option<"microBatches", "micro-batches", "int64_t", /*default=*/"1",
           "micro-batches per optimizer step; the loss seed is 1 / micro-batches">,
  ];
}

def RecomputeLayers : Pass<"recompute-layers", "mlir::ModuleOp"> {
  let summary = "Activation recomputation per decoder layer: the backward recomputes a layer's forward";
  let description = [{
    Runs after autodiff. For every decoder layer (ops with `pl.layer = L >= 0`), the forward
    values the backward reads are recomputed by a clone of the layer's forward ops placed just
    before the first backward op that reads one of them; the backward then reads the clones. Only
    the layer's **checkpoints** are kept from the forward: values of layer L that a forward op
    outside the layer reads (the residual stream handed to layer L+1). So the forward activations
    of a layer die inside the forward, and at any time of the backward only one layer's
    activations (plus the checkpoints) are alive: activation memory O(layers x hidden + one
    layer) instead of O(layers x everything), for one more forward per layer (as HF's
    `gradient_checkpointing_enable()` / Megatron's full recomputation; the collectives of a
    tensor-parallel layer are recomputed too). Kernels are deterministic, so losses and
    gradients are bit-identical to the plan without recomputation. Clones carry `pl.recompute`;
    their FLOPs are not model FLOPs (MFU stays PaLM's definition).

    ```mlir
    %h = pl.rms_norm %x, %w {pl.layer = 0 : i64} ...          // forward (dies in the forward now)
    ...
    %loss = pl.cross_entropy ...
    %h_r = pl.rms_norm %x, %w {pl.layer = 0 : i64, pl.recompute} ...  // before layer 0's backward
    %dx = pl.rms_norm_grad %dh, %x, %w ...                     // reads the clone's inputs
    ```
  }];
  let dependentDialects = ["parallora::pl::PlDialect"];
}

def AdamW : Pass<"adamw", "mlir::ModuleOp"> {
  let summary = "Add @optimizer_step: global-norm clipping + AdamW over every trainable param";
  let description = [{
    Creates `func.func @optimizer_step()` holding one `pl.adamw_step` over all trainable params
    (in the order they appear in @train_step) and records the hyperparameters, including the
    learning-rate schedule the runtime evaluates per step, in the module attribute `pl.train`.

    After (`--adamw="lr=1e-3 weight-decay=0.01"`):

    ```mlir
    module attributes {pl.train = {lr = 1.0e-03 : f64, schedule = "constant", warmup_steps = 0 : i64, ...}} {
      func.func @optimizer_step() {
        pl.adamw_step {beta1 = 0.9 : f64, beta2 = 0.999 : f64, eps = 1.0e-08 : f64, max_grad_norm = 1.0 : f64,
                       params = ["model.layers.0.self_attn.q_proj.lora_A.weight", ...], weight_decay = 0.01 : f64}
        return
      }
    }
    ```
  }];
  let dependentDialects = ["parallora::pl::PlDialect", "mlir::func::FuncDialect"];
  let options = [
    Option<"lr", "lr", "double", /*default=*/"1e-4", "peak learning rate">,
    Option<"beta1", "beta1", "double", /*default=*/"0.9", "AdamW beta1">,
    Option<"beta2", "beta2", "double", /*default=*/"0.999", "AdamW beta2">,
    Option<"eps", "eps", "double", /*default=*/"1e-8", "AdamW epsilon">,
    Option<"weightDecay", "weight-decay", "double", /*default=*/"0.0", "decoupled weight decay">,
    Option<"maxGradNorm", "max-grad-norm", "double", /*default=*/"1.0", "global-norm clip; 0 = off">,
    Option<"schedule", "schedule", "std::string", /*default=*/"\"constant\"",
           "after warmup: constant, cosine or linear decay">,
    Option<"warmupSteps", "warmup-steps", "int64_t", /*default=*/"0", "linear warmup steps">,
    Option<"minLrRatio", "min-lr-ratio", "double", /*default=*/"0.0", "decay floor as a fraction of lr">,
    Option<"totalSteps", "total-steps", "int64_t", /*default=*/"0", "decay horizon; 0 = lora-run's --steps">,
  ];
}

#endif // PARALLORA_TRAIN_PASSES
