// Bad input for the training passes: each error names the op, param or option at fault.
// RUN: lora-opt %s -split-input-file -verify-diagnostics --append-loss --autodiff
// RUN: not lora-opt %S/../lora/inject_lora.mlir --inject-lora --append-loss --autodiff --adamw="schedule=step" 2>&1 | FileCheck %s --check-prefix=SCHED
// RUN: not lora-opt %S/../lora/inject_lora.mlir --append-loss --autodiff 2>&1 | FileCheck %s --check-prefix=NOTRAIN
// RUN: not lora-opt %S/../lora/inject_lora.mlir --inject-lora --autodiff 2>&1 | FileCheck %s --check-prefix=NOLOSS

// SCHED: error: adamw: schedule 'step' is not one of constant, cosine, linear
// NOTRAIN: error: autodiff: @train_step has no trainable param (inject LoRA adapters first)
// NOLOSS: error: autodiff: no func @train_step; run --append-loss first

// A trainable base weight is full fine-tuning, which the rules do not support.
func.func @forward(%ids: tensor<2x8xi64>) -> tensor<2x8x16xf32> {
  %e = pl.param "model.embed_tokens.weight" : tensor<16x8xf32>
  %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<16x8xf32>) -> tensor<2x8x8xf32>
  %w = pl.param "lm_head.weight" {trainable} : tensor<16x8xf32>
  // expected-error @+1 {{autodiff: trainable value 'lm_head.weight' is operand #1 of pl.linear, a frozen weight slot; only LoRA adapters can train}}
  %l = pl.linear %h, %w : (tensor<2x8x8xf32>, tensor<16x8xf32>) -> tensor<2x8x16xf32>
  return %l : tensor<2x8x16xf32>
}

// -----

// An active op without a gradient rule.
func.func @forward(%ids: tensor<2x8xi64>) -> tensor<2x8x16xf32> {
  %e = pl.param "model.embed_tokens.weight" : tensor<16x8xf32>
  %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<16x8xf32>) -> tensor<2x8x8xf32>
  %w = pl.param "lm_head.weight" : tensor<16x8xf32>
  %a = pl.param "lm_head.lora_A.weight" {trainable} : tensor<2x8xf32>
  %b = pl.param "lm_head.lora_B.weight" {trainable} : tensor<16x2xf32>
  %l = pl.lora_linear %h, %w, %a, %b {alpha = 2.0 : f64, module = "lm_head", rank = 2 : i64, scaling = 1.0 : f64} : (tensor<2x8x8xf32>, tensor<16x8xf32>, tensor<2x8xf32>, tensor<16x2xf32>) -> tensor<2x8x16xf32>
  // expected-error @+1 {{autodiff: no gradient rule for pl.softmax; it lies between a trainable param and the loss}}
  %s = pl.softmax %l {axis = -1 : i64} : tensor<2x8x16xf32>
  return %s : tensor<2x8x16xf32>
}

// -----

// An adapter the loss does not depend on.
func.func @forward(%ids: tensor<2x8xi64>) -> tensor<2x8x16xf32> {
  %e = pl.param "model.embed_tokens.weight" : tensor<16x8xf32>
  %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<16x8xf32>) -> tensor<2x8x8xf32>
  %w = pl.param "lm_head.weight" : tensor<16x8xf32>
  %a = pl.param "lm_head.lora_A.weight" {trainable} : tensor<2x8xf32>
  %b = pl.param "lm_head.lora_B.weight" {trainable} : tensor<16x2xf32>
  %l = pl.lora_linear %h, %w, %a, %b {alpha = 2.0 : f64, module = "lm_head", rank = 2 : i64, scaling = 1.0 : f64} : (tensor<2x8x8xf32>, tensor<16x8xf32>, tensor<2x8xf32>, tensor<16x2xf32>) -> tensor<2x8x16xf32>
  // expected-error @+1 {{autodiff: trainable param 'unused.lora_A.weight' does not influence the loss}}
  %u = pl.param "unused.lora_A.weight" {trainable} : tensor<2x8xf32>
  return %l : tensor<2x8x16xf32>
}
