// pl.grad_part on pl.lora_linear_grad (written by --split-weight-grad): only "input" or
// "weight", and the part an op does not compute must have no uses.
// RUN: lora-opt %s -split-input-file -verify-diagnostics

func.func @bad_part(%dy: tensor<2x8x16xf32>, %x: tensor<2x8x32xf32>, %w: tensor<16x32xf32>, %a: tensor<2x32xf32>, %b: tensor<16x2xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{'pl.lora_linear_grad' op attribute pl.grad_part must be "input" or "weight", got "both"}}
  %dx, %da, %db = pl.lora_linear_grad %dy, %x, %w, %a, %b {pl.grad_part = "both", scaling = 2.0 : f64} : (tensor<2x8x16xf32>, tensor<2x8x32xf32>, tensor<16x32xf32>, tensor<2x32xf32>, tensor<16x2xf32>) -> (tensor<2x8x32xf32>, tensor<2x32xf32>, tensor<16x2xf32>)
  return %dx : tensor<2x8x32xf32>
}

// -----

func.func @input_part_used_for_weights(%dy: tensor<2x8x16xf32>, %x: tensor<2x8x32xf32>, %w: tensor<16x32xf32>, %a: tensor<2x32xf32>, %b: tensor<16x2xf32>) -> tensor<2x32xf32> {
  // expected-error @+1 {{'pl.lora_linear_grad' op with pl.grad_part = "input" computes no dA, dB, but they have uses}}
  %dx, %da, %db = pl.lora_linear_grad %dy, %x, %w, %a, %b {pl.grad_part = "input", scaling = 2.0 : f64} : (tensor<2x8x16xf32>, tensor<2x8x32xf32>, tensor<16x32xf32>, tensor<2x32xf32>, tensor<16x2xf32>) -> (tensor<2x8x32xf32>, tensor<2x32xf32>, tensor<16x2xf32>)
  return %da : tensor<2x32xf32>
}

// -----

func.func @weight_part_used_for_dx(%dy: tensor<2x8x16xf32>, %x: tensor<2x8x32xf32>, %w: tensor<16x32xf32>, %a: tensor<2x32xf32>, %b: tensor<16x2xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{'pl.lora_linear_grad' op with pl.grad_part = "weight" computes no dx, but it has uses}}
  %dx, %da, %db = pl.lora_linear_grad %dy, %x, %w, %a, %b {pl.grad_part = "weight", scaling = 2.0 : f64} : (tensor<2x8x16xf32>, tensor<2x8x32xf32>, tensor<16x32xf32>, tensor<2x32xf32>, tensor<16x2xf32>) -> (tensor<2x8x32xf32>, tensor<2x32xf32>, tensor<16x2xf32>)
  return %dx : tensor<2x8x32xf32>
}
