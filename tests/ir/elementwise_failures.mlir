// RUN: lora-opt %s -split-input-file -verify-diagnostics
// Verifier errors of pl.reshape, pl.transpose and pl.cross_entropy, and the type rules
// ODS enforces on the elementwise ops.

func.func @reshape_count(%x: tensor<2x8xf32>) -> tensor<3x5xf32> {
  // expected-error @+1 {{'pl.reshape' op cannot reshape 2x8 (16 elements) to 3x5 (15 elements)}}
  %r = pl.reshape %x : (tensor<2x8xf32>) -> tensor<3x5xf32>
  return %r : tensor<3x5xf32>
}

// -----

func.func @reshape_type(%x: tensor<2x8xf32>) -> tensor<16xf16> {
  // expected-error @+1 {{'pl.reshape' op element type changes from 'f32' to 'f16'}}
  %r = pl.reshape %x : (tensor<2x8xf32>) -> tensor<16xf16>
  return %r : tensor<16xf16>
}

// -----

func.func @transpose_len(%x: tensor<2x8x4xf32>) -> tensor<8x2xf32> {
  // expected-error @+1 {{'pl.transpose' op perm has 2 entries for rank 3}}
  %t = pl.transpose %x {perm = array<i64: 1, 0>} : (tensor<2x8x4xf32>) -> tensor<8x2xf32>
  return %t : tensor<8x2xf32>
}

// -----

func.func @transpose_perm(%x: tensor<2x8x4xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'pl.transpose' op perm is not a permutation of 0..2}}
  %t = pl.transpose %x {perm = array<i64: 0, 2, 2>} : (tensor<2x8x4xf32>) -> tensor<2x4x8xf32>
  return %t : tensor<2x4x8xf32>
}

// -----

func.func @transpose_perm_range(%x: tensor<2x8x4xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'pl.transpose' op perm is not a permutation of 0..2}}
  %t = pl.transpose %x {perm = array<i64: 0, 3, 1>} : (tensor<2x8x4xf32>) -> tensor<2x4x8xf32>
  return %t : tensor<2x4x8xf32>
}

// -----

func.func @transpose_rank(%x: tensor<2x8x4xf32>) -> tensor<2x32xf32> {
  // expected-error @+1 {{'pl.transpose' op result rank 2 differs from input rank 3}}
  %t = pl.transpose %x {perm = array<i64: 0, 2, 1>} : (tensor<2x8x4xf32>) -> tensor<2x32xf32>
  return %t : tensor<2x32xf32>
}

// -----

func.func @transpose_dims(%x: tensor<2x8x4xf32>) -> tensor<2x8x4xf32> {
  // expected-error @+1 {{'pl.transpose' op result dim 1 is 8 but input dim 2 is 4}}
  %t = pl.transpose %x {perm = array<i64: 0, 2, 1>} : (tensor<2x8x4xf32>) -> tensor<2x8x4xf32>
  return %t : tensor<2x8x4xf32>
}

// -----

func.func @ce_rank(%l: tensor<2x8x128xf32>, %y: tensor<16xi64>) -> tensor<f32> {
  // expected-error @+1 {{'pl.cross_entropy' op labels 16 must be the logits shape 2x8x128 without the vocab dim}}
  %c = pl.cross_entropy %l, %y : (tensor<2x8x128xf32>, tensor<16xi64>) -> tensor<f32>
  return %c : tensor<f32>
}

// -----

func.func @ce_labels(%l: tensor<2x8x128xf32>, %y: tensor<2x7xi64>) -> tensor<f32> {
  // expected-error @+1 {{'pl.cross_entropy' op labels dim 1 is 7 but logits dim 1 is 8}}
  %c = pl.cross_entropy %l, %y : (tensor<2x8x128xf32>, tensor<2x7xi64>) -> tensor<f32>
  return %c : tensor<f32>
}

// -----

func.func @ce_result(%l: tensor<2x8x128xf32>, %y: tensor<2x8xi64>) -> tensor<1xf32> {
  // expected-error @+1 {{'pl.cross_entropy' op result #0 must be 0D tensor of 32-bit float values}}
  %c = pl.cross_entropy %l, %y : (tensor<2x8x128xf32>, tensor<2x8xi64>) -> tensor<1xf32>
  return %c : tensor<1xf32>
}

// -----

func.func @add_types(%a: tensor<2x8xf32>, %b: tensor<2x4xf32>) -> tensor<2x8xf32> {
  // expected-error @+1 {{'pl.add' op requires the same type for all operands and results}}
  %c = "pl.add"(%a, %b) : (tensor<2x8xf32>, tensor<2x4xf32>) -> tensor<2x8xf32>
  return %c : tensor<2x8xf32>
}

// -----

func.func @swiglu_types(%g: tensor<2x8xf32>, %u: tensor<2x8xf16>) -> tensor<2x8xf32> {
  // expected-error @+1 {{'pl.swiglu' op requires the same type for all operands and results}}
  %c = "pl.swiglu"(%g, %u) : (tensor<2x8xf32>, tensor<2x8xf16>) -> tensor<2x8xf32>
  return %c : tensor<2x8xf32>
}
