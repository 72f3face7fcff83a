// Input and options --pipeline-split refuses: each error names the value at fault.
// RUN: lora-opt %s -split-input-file -verify-diagnostics --pipeline-split
// RUN: not lora-opt %s -split-input-file --pipeline-split="schedule=zb" 2>&1 | FileCheck %s --check-prefix=SCHED
// SCHED: error: pipeline-split: unknown schedule 'zb' (choose gpipe, 1f1b, interleaved or zb-h1)

// pp 2 before the training passes ran.
// expected-error @+1 {{pipeline-split: needs @train_step, @eval_step and @optimizer_step (run the training passes first)}}
module attributes {pl.mesh = {dp = 1 : i64, pp = 2 : i64, tp = 1 : i64}} {
  func.func @forward(%ids: tensor<2x8xi64>) -> tensor<2x8x16xf32> {
    %e = pl.param "model.embed_tokens.weight" : tensor<64x16xf32>
    %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<64x16xf32>) -> tensor<2x8x16xf32>
    return %h : tensor<2x8x16xf32>
  }
}

// -----

// One decoder layer: embedding, layer 0 and head are 3 units, too few for 4 stages.
// expected-error @+1 {{pipeline-split: 4 stages need at least 4 units, but the model has 3 (embedding, 1 decoder layers, head); use at most pp 3}}
module attributes {pl.mesh = {dp = 1 : i64, pp = 4 : i64, tp = 1 : i64}} {
  func.func @train_step(%ids: tensor<2x8xi64>, %labels: tensor<2x8xi64>) -> tensor<f32> {
    %e = pl.param "model.embed_tokens.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
    %h = pl.embedding %ids, %e {pl.layer = -1 : i64} : (tensor<2x8xi64>, tensor<64x16xf32>) -> tensor<2x8x16xf32>
    %r = pl.add %h, %h {pl.layer = 0 : i64} : tensor<2x8x16xf32>
    %w = pl.param "lm_head.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
    %l = pl.linear %r, %w {pl.layer = -1 : i64} : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
    %loss = pl.cross_entropy %l, %labels {pl.layer = -1 : i64, shift_labels} : (tensor<2x8x64xf32>, tensor<2x8xi64>) -> tensor<f32>
    return %loss : tensor<f32>
  }
  func.func @eval_step(%ids: tensor<2x8xi64>, %labels: tensor<2x8xi64>) -> tensor<f32> {
    %e = pl.param "model.embed_tokens.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
    %h = pl.embedding %ids, %e {pl.layer = -1 : i64} : (tensor<2x8xi64>, tensor<64x16xf32>) -> tensor<2x8x16xf32>
    %r = pl.add %h, %h {pl.layer = 0 : i64} : tensor<2x8x16xf32>
    %w = pl.param "lm_head.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
    %l = pl.linear %r, %w {pl.layer = -1 : i64} : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
    %loss = pl.cross_entropy %l, %labels {pl.layer = -1 : i64, shift_labels} : (tensor<2x8x64xf32>, tensor<2x8xi64>) -> tensor<f32>
    return %loss : tensor<f32>
  }
  func.func @optimizer_step() {
    return
  }
}

// -----

// @optimizer_step names an adapter that @train_step does not hold.
module attributes {pl.mesh = {dp = 1 : i64, pp = 2 : i64, tp = 1 : i64}} {
  func.func @train_step(%ids: tensor<2x8xi64>, %labels: tensor<2x8xi64>) -> tensor<f32> {
    %e = pl.param "model.embed_tokens.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
    %h = pl.embedding %ids, %e {pl.layer = -1 : i64} : (tensor<2x8xi64>, tensor<64x16xf32>) -> tensor<2x8x16xf32>
    %r = pl.add %h, %h {pl.layer = 0 : i64} : tensor<2x8x16xf32>
    %w = pl.param "lm_head.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
    %l = pl.linear %r, %w {pl.layer = -1 : i64} : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
    %loss = pl.cross_entropy %l, %labels {pl.layer = -1 : i64, shift_labels} : (tensor<2x8x64xf32>, tensor<2x8xi64>) -> tensor<f32>
    return %loss : tensor<f32>
  }
  func.func @eval_step(%ids: tensor<2x8xi64>, %labels: tensor<2x8xi64>) -> tensor<f32> {
    %e = pl.param "model.embed_tokens.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
    %h = pl.embedding %ids, %e {pl.layer = -1 : i64} : (tensor<2x8xi64>, tensor<64x16xf32>) -> tensor<2x8x16xf32>
    %r = pl.add %h, %h {pl.layer = 0 : i64} : tensor<2x8x16xf32>
    %w = pl.param "lm_head.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
    %l = pl.linear %r, %w {pl.layer = -1 : i64} : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
    %loss = pl.cross_entropy %l, %labels {pl.layer = -1 : i64, shift_labels} : (tensor<2x8x64xf32>, tensor<2x8xi64>) -> tensor<f32>
    return %loss : tensor<f32>
  }
  func.func @optimizer_step() {
    // expected-error @+1 {{pipeline-split: '"model.layers.0.self_attn.q_proj.lora_A.weight"' is not a parameter of @train_step}}
    pl.adamw_step {beta1 = 0.9 : f64, beta2 = 0.999 : f64, eps = 1.0e-08 : f64, max_grad_norm = 1.0 : f64, params = ["model.layers.0.self_attn.q_proj.lora_A.weight"], weight_decay = 0.0 : f64}
    return
  }
}

// -----

// An op the split does not know how to assign in @optimizer_step (no params list).
module attributes {pl.mesh = {dp = 1 : i64, pp = 2 : i64, tp = 1 : i64}} {
  func.func @train_step(%ids: tensor<2x8xi64>, %labels: tensor<2x8xi64>) -> tensor<f32> {
    %e = pl.param "model.embed_tokens.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
    %h = pl.embedding %ids, %e {pl.layer = -1 : i64} : (tensor<2x8xi64>, tensor<64x16xf32>) -> tensor<2x8x16xf32>
    %r = pl.add %h, %h {pl.layer = 0 : i64} : tensor<2x8x16xf32>
    %w = pl.param "lm_head.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
    %l = pl.linear %r, %w {pl.layer = -1 : i64} : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
    %loss = pl.cross_entropy %l, %labels {pl.layer = -1 : i64, shift_labels} : (tensor<2x8x64xf32>, tensor<2x8xi64>) -> tensor<f32>
    return %loss : tensor<f32>
  }
  func.func @eval_step(%ids: tensor<2x8xi64>, %labels: tensor<2x8xi64>) -> tensor<f32> {
    %e = pl.param "model.embed_tokens.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
    %h = pl.embedding %ids, %e {pl.layer = -1 : i64} : (tensor<2x8xi64>, tensor<64x16xf32>) -> tensor<2x8x16xf32>
    %r = pl.add %h, %h {pl.layer = 0 : i64} : tensor<2x8x16xf32>
    %w = pl.param "lm_head.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
    %l = pl.linear %r, %w {pl.layer = -1 : i64} : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
    %loss = pl.cross_entropy %l, %labels {pl.layer = -1 : i64, shift_labels} : (tensor<2x8x64xf32>, tensor<2x8xi64>) -> tensor<f32>
    return %loss : tensor<f32>
  }
  func.func @optimizer_step() {
    // expected-error @+1 {{pipeline-split: unexpected op in @optimizer_step}}
    %p = pl.param "model.embed_tokens.weight" : tensor<64x16xf32>
    return
  }
}
