// RUN: lora-opt %s -split-input-file -verify-diagnostics
// Verifier errors of the packing operands (positions of pl.rope, segment ids of pl.attention).

func.func @rope_positions_seq(%x: tensor<2x4x16x16xf32>, %pos: tensor<2x8xi64>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.rope' op positions must be (batch, seq) = (2, 16), got 2x8}}
  %r = pl.rope %x positions(%pos : tensor<2x8xi64>) {theta = 10000.0 : f64} : tensor<2x4x16x16xf32>
  return %r : tensor<2x4x16x16xf32>
}

// -----

func.func @rope_positions_rank(%x: tensor<2x4x16x16xf32>, %pos: tensor<32xi64>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.rope' op positions must be (batch, seq) = (2, 16), got 32}}
  %r = pl.rope %x positions(%pos : tensor<32xi64>) {theta = 10000.0 : f64} : tensor<2x4x16x16xf32>
  return %r : tensor<2x4x16x16xf32>
}

// -----

func.func @rope_positions_float(%x: tensor<2x4x16x16xf32>, %pos: tensor<2x16xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.rope' op operand #1 must be ranked tensor of signless integer values}}
  %r = pl.rope %x positions(%pos : tensor<2x16xf32>) {theta = 10000.0 : f64} : tensor<2x4x16x16xf32>
  return %r : tensor<2x4x16x16xf32>
}

// -----

func.func @rope_grad_positions_batch(%x: tensor<2x4x16x16xf32>, %pos: tensor<3x16xi64>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.rope_grad' op positions must be (batch, seq) = (2, 16), got 3x16}}
  %r = pl.rope_grad %x positions(%pos : tensor<3x16xi64>) {theta = 10000.0 : f64} : tensor<2x4x16x16xf32>
  return %r : tensor<2x4x16x16xf32>
}

// -----

func.func @attention_segments_shape(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x16x16xf32>, %seg: tensor<2x15xi32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.attention' op segment_ids must be (batch, seq) = (2, 16), got 2x15}}
  %a = pl.attention %q, %k, %k segments %seg {causal, scale = 0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x15xi32>) -> tensor<2x4x16x16xf32>
  return %a : tensor<2x4x16x16xf32>
}

// -----

func.func @attention_segments_cross(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x8x16xf32>, %seg: tensor<2x16xi32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.attention' op segment_ids need self-attention (query seq == key seq), got 16 and 8}}
  %a = pl.attention %q, %k, %k segments %seg {scale = 0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x8x16xf32>, tensor<2x2x8x16xf32>, tensor<2x16xi32>) -> tensor<2x4x16x16xf32>
  return %a : tensor<2x4x16x16xf32>
}

// -----

func.func @attention_segments_float(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x16x16xf32>, %seg: tensor<2x16xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.attention' op operand #3 must be ranked tensor of signless integer values}}
  %a = pl.attention %q, %k, %k segments %seg {causal, scale = 0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x16xf32>) -> tensor<2x4x16x16xf32>
  return %a : tensor<2x4x16x16xf32>
}

// -----

func.func @attention_grad_segments(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x16x16xf32>, %seg: tensor<1x16xi32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.attention_grad' op segment_ids must be (batch, seq) = (2, 16), got 1x16}}
  %dq, %dk, %dv = pl.attention_grad %q, %q, %k, %k segments %seg {causal, scale = 0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>, tensor<1x16xi32>) -> (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>)
  return %dq : tensor<2x4x16x16xf32>
}
