//===- Passes.td - LoRA phase passes ------------------------*- tablegen -*-===//
//
// Passes that attach LoRA adapters to a LLaMA forward graph and fix which parameters train.
// buildLoraPassPipeline() (lora_pass_pipeline.cpp) runs them in order: inject-lora, freeze-base.
//
//===----------------------------------------------------------------------===//
#ifndef PARALLORA_LORA_PASSES
#define PARALLORA_LORA_PASSES

include "mlir/Pass/PassBase.td"

def InjectLora : Pass<"inject-lora", "mlir::ModuleOp"> {
  let summary = "Rewrite the targeted pl.linear ops into pl.lora_linear with new adapter params";
  let description = [{
    Attaches a LoRA adapter (Hu et al. 2021, as PEFT implements it) to every `pl.linear` whose
    weight is a `pl.param` named `<prefix>.<target>.weight`, where `<target>` is one of the
    comma-separated `targets` (PEFT module names: q_proj, k_proj, v_proj, o_proj, gate_proj,
    up_proj, down_proj) or `all-linear` (every linear except the output layer `lm_head`, as
    PEFT defines it). For a weight W of shape (N, K) it creates two trainable params:

      * `<prefix>.<target>.lora_A.weight` (r, K), init `kaiming_uniform(a=sqrt(5))`
      * `<prefix>.<target>.lora_B.weight` (N, r), init `zeros`

    so the rewritten layer computes `x W^T + scaling * (dropout(x) A^T) B^T` with
    `scaling = alpha / r` (`alpha / sqrt(r)` with `use-rslora`), exactly the base layer at
    initialisation since B = 0. Discardable attributes (`pl.layer`) are kept. Every param that
    is not an adapter loses its `trainable` attribute (base weights stay frozen).

    Fails with a diagnostic for rank <= 0, a target that names no linear (the message lists
    the module names that exist), a target that already carries an adapter, and a targeted
    linear with a bias (pl.lora_linear has no bias operand).

    Before (`--inject-lora="rank=4 alpha=8 targets=q_proj"`):

    ```mlir
    %w = pl.param "model.layers.0.self_attn.q_proj.weight" {pl.layer = 0 : i64} : tensor<64x64xf32>
    %q = pl.linear %x, %w {pl.layer = 0 : i64}
        : (tensor<2x8x64xf32>, tensor<64x64xf32>) -> tensor<2x8x64xf32>
    ```

    After:

    ```mlir
    %w = pl.param "model.layers.0.self_attn.q_proj.weight" {pl.layer = 0 : i64} : tensor<64x64xf32>
    %a = pl.param "model.layers.0.self_attn.q_proj.lora_A.weight"
        {init = "kaiming_uniform(a=2.23606797749979)", pl.layer = 0 : i64, trainable} : tensor<4x64xf32>
    %b = pl.param "model.layers.0.self_attn.q_proj.lora_B.weight"
        {init = "zeros", pl.layer = 0 : i64, trainable} : tensor<64x4xf32>
    %q = pl.lora_linear %x, %w, %a, %b {alpha = 8.0 : f64, dropout = 0.0 : f64,
        module = "model.layers.0.self_attn.q_proj", pl.layer = 0 : i64, rank = 4 : i64,
        scaling = 2.0 : f64}
        : (tensor<2x8x64xf32>, tensor<64x64xf32>, tensor<4x64xf32>, tensor<64x4xf32>)
        -> tensor<2x8x64xf32>
    ```
  }];
  let dependentDialects = ["parallora::pl::PlDialect"];
  let options = [
    Option<"rank", "rank", "int64_t", /*default=*/"16", "LoRA rank r (> 0)">,
    Option<"alpha", "alpha", "double", /*default=*/"32.0", "LoRA alpha; scaling = alpha / r">,
    Option<"dropout", "dropout", "double", /*default=*/"0.0",
           "dropout probability on the adapter's input, in [0, 1)">,
    Option<"targets", "targets", "std::string", /*default=*/"\"q_proj,v_proj\"",
           "comma-separated PEFT module names, or all-linear (PEFT's LLaMA default: q_proj,v_proj)">,
    Option<"useRslora", "use-rslora", "bool", /*default=*/"false",
           "rank-stabilised LoRA: scaling = alpha / sqrt(r)">,
  ];
}

def FreezeBase : Pass<"freeze-base", "mlir::ModuleOp"> {
  let summary = "Freeze every non-LoRA param; make every LoRA adapter param trainable";
  let description = [{
    Training only updates adapters. This pass removes the `trainable` attribute from every
    `pl.param` that is not a `lora_a` / `lora_b` operand of a `pl.lora_linear`, and sets it on
    those that are. It is what makes a graph imported from a PEFT export (whose params carry no
    trainability) ready for the training passes; after `inject-lora` it changes nothing.

    Before:

    ```mlir
    %w = pl.param "model.layers.0.self_attn.q_proj.weight" {trainable} : tensor<64x64xf32>
    %a = pl.param "model.layers.0.self_attn.q_proj.lora_A.weight" : tensor<4x64xf32>
    %b = pl.param "model.layers.0.self_attn.q_proj.lora_B.weight" : tensor<64x4xf32>
    %q = pl.lora_linear %x, %w, %a, %b {...}
    ```

    After:

    ```mlir
    %w = pl.param "model.layers.0.self_attn.q_proj.weight" : tensor<64x64xf32>
    %a = pl.param "model.layers.0.self_attn.q_proj.lora_A.weight" {trainable} : tensor<4x64xf32>
    %b = pl.param "model.layers.0.self_attn.q_proj.lora_B.weight" {trainable} : tensor<64x4xf32>
    %q = pl.lora_linear %x, %w, %a, %b {...}
    ```
  }];
  let dependentDialects = ["parallora::pl::PlDialect"];
}

#endif // PARALLORA_LORA_PASSES
