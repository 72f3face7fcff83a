// Bad input and bad options for --inject-lora: each error names the values involved.
// RUN: lora-opt %s -split-input-file -verify-diagnostics --inject-lora="rank=4 targets=q_proj,v_proj"
// RUN: not lora-opt %s -split-input-file --inject-lora="rank=0" 2>&1 | FileCheck %s --check-prefix=RANK
// RUN: not lora-opt %s -split-input-file --inject-lora="rank=-2" 2>&1 | FileCheck %s --check-prefix=NEGRANK
// RUN: not lora-opt %s -split-input-file --inject-lora="dropout=1.5" 2>&1 | FileCheck %s --check-prefix=DROPOUT
// RUN: not lora-opt %s -split-input-file --inject-lora="targets=qproj,v_proj" 2>&1 | FileCheck %s --check-prefix=TYPO

// RANK: error: inject-lora: rank = 0 must be positive
// NEGRANK: error: inject-lora: rank = -2 must be positive
// DROPOUT: error: inject-lora: dropout = 1.5 must be in [0, 1)
// TYPO: error: inject-lora: target 'qproj' matches no linear; the linear modules are: q_proj, v_proj

// A target that names no linear: the message lists the linear modules that exist.
// expected-error @+1 {{inject-lora: target 'v_proj' matches no linear; the linear modules are: down_proj, lm_head, q_proj}}
func.func @no_v_proj(%x: tensor<2x8x32xf32>) -> tensor<2x8x128xf32> {
  %wq = pl.param "model.layers.0.self_attn.q_proj.weight" : tensor<32x32xf32>
  %q = pl.linear %x, %wq : (tensor<2x8x32xf32>, tensor<32x32xf32>) -> tensor<2x8x32xf32>
  %wd = pl.param "model.layers.0.mlp.down_proj.weight" : tensor<32x32xf32>
  %d = pl.linear %q, %wd : (tensor<2x8x32xf32>, tensor<32x32xf32>) -> tensor<2x8x32xf32>
  %wh = pl.param "lm_head.weight" : tensor<128x32xf32>
  %y = pl.linear %d, %wh : (tensor<2x8x32xf32>, tensor<128x32xf32>) -> tensor<2x8x128xf32>
  return %y : tensor<2x8x128xf32>
}

// -----

// A target that already carries an adapter (e.g. imported from a PEFT export).
func.func @already_lora(%x: tensor<2x8x32xf32>) -> tensor<2x8x32xf32> {
  %wq = pl.param "model.layers.0.self_attn.q_proj.weight" : tensor<32x32xf32>
  %a = pl.param "model.layers.0.self_attn.q_proj.lora_A.weight" : tensor<8x32xf32>
  %b = pl.param "model.layers.0.self_attn.q_proj.lora_B.weight" : tensor<32x8xf32>
  // expected-error @+1 {{inject-lora: 'model.layers.0.self_attn.q_proj' already has a LoRA adapter (pl.lora_linear); remove it from targets = 'q_proj,v_proj'}}
  %q = pl.lora_linear %x, %wq, %a, %b {rank = 8 : i64, alpha = 16.0 : f64, scaling = 2.0 : f64, module = "model.layers.0.self_attn.q_proj"} : (tensor<2x8x32xf32>, tensor<32x32xf32>, tensor<8x32xf32>, tensor<32x8xf32>) -> tensor<2x8x32xf32>
  %wv = pl.param "model.layers.0.self_attn.v_proj.weight" : tensor<32x32xf32>
  %v = pl.linear %q, %wv : (tensor<2x8x32xf32>, tensor<32x32xf32>) -> tensor<2x8x32xf32>
  return %v : tensor<2x8x32xf32>
}

// -----

// attention_bias = true: pl.lora_linear has no bias operand.
func.func @bias(%x: tensor<2x8x32xf32>) -> tensor<2x8x32xf32> {
  %wq = pl.param "model.layers.0.self_attn.q_proj.weight" : tensor<32x32xf32>
  %bq = pl.param "model.layers.0.self_attn.q_proj.bias" : tensor<32xf32>
  // expected-error @+1 {{inject-lora: 'model.layers.0.self_attn.q_proj' has bias 'model.layers.0.self_attn.q_proj.bias'; LoRA on a linear with bias is unsupported (pl.lora_linear has no bias operand)}}
  %q = pl.linear %x, %wq, %bq : (tensor<2x8x32xf32>, tensor<32x32xf32>, tensor<32xf32>) -> tensor<2x8x32xf32>
  %wv = pl.param "model.layers.0.self_attn.v_proj.weight" : tensor<32x32xf32>
  %v = pl.linear %q, %wv : (tensor<2x8x32xf32>, tensor<32x32xf32>) -> tensor<2x8x32xf32>
  return %v : tensor<2x8x32xf32>
}
