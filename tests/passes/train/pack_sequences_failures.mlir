// RUN: lora-opt %s -split-input-file --pack-sequences -verify-diagnostics
// --pack-sequences refuses graphs it cannot mask or that are already packed.

// expected-error @+1 {{pack-sequences: the module has no func @forward (run it before --append-loss)}}
module {
  func.func @train_step(%ids: tensor<2x8xi64>) {
    return
  }
}

// -----

// Attention written out as matmul + softmax would attend across examples: refused.
func.func @forward(%ids: tensor<2x8xi64>, %q: tensor<2x4x8x8xf32>, %k: tensor<2x4x8x8xf32>) -> tensor<2x4x8x8xf32> {
  %qr = pl.rope %q {theta = 10000.0 : f64} : tensor<2x4x8x8xf32>
  %s = pl.matmul %qr, %k {transpose_rhs = true} : (tensor<2x4x8x8xf32>, tensor<2x4x8x8xf32>) -> tensor<2x4x8x8xf32>
  // expected-error @+1 {{pack-sequences: pl.softmax in @forward: packing needs every attention raised to pl.attention}}
  %p = pl.softmax %s {axis = -1 : i64} : tensor<2x4x8x8xf32>
  return %p : tensor<2x4x8x8xf32>
}

// -----

// expected-error @+1 {{pack-sequences: @forward has 0 pl.rope and 1 pl.attention ops; packing needs both}}
func.func @forward(%ids: tensor<2x8xi64>, %q: tensor<2x4x8x8xf32>) -> tensor<2x4x8x8xf32> {
  %a = pl.attention %q, %q, %q {causal, scale = 0.25 : f64} : (tensor<2x4x8x8xf32>, tensor<2x4x8x8xf32>, tensor<2x4x8x8xf32>) -> tensor<2x4x8x8xf32>
  return %a : tensor<2x4x8x8xf32>
}

// -----

// expected-error @+1 {{pack-sequences: @forward's first argument must be the integer input_ids (B, T)}}
func.func @forward(%x: tensor<2x8xf32>) -> tensor<2x8xf32> {
  return %x : tensor<2x8xf32>
}

// -----

// expected-error @+1 {{pack-sequences: @forward already has an input named 'position_ids'}}
func.func @forward(%ids: tensor<2x8xi64>, %pos: tensor<2x8xi64> {pl.name = "position_ids"}) -> tensor<2x8xi64> {
  return %ids : tensor<2x8xi64>
}
