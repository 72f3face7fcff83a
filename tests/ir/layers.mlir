// RUN: lora-opt %s | lora-opt | FileCheck %s
// Round trip of pl.embedding, pl.rms_norm, pl.linear, pl.lora_linear and pl.matmul,
// with dynamic batch/sequence dims where the verifiers must accept them.

// CHECK-LABEL: func.func @block
func.func @block(%ids: tensor<2x?xi64>, %e: tensor<256x64xf32>, %g: tensor<64xf32>, %w: tensor<32x64xf32>, %bias: tensor<32xf32>,
                 %a: tensor<4x64xf32>, %b: tensor<32x4xf32>) -> (tensor<2x?x32xf32>, tensor<2x?x32xf32>, tensor<2x?x32xf32>) {
  // CHECK: pl.embedding %{{.*}}, %{{.*}} : (tensor<2x?xi64>, tensor<256x64xf32>) -> tensor<2x?x64xf32>
  %h = pl.embedding %ids, %e : (tensor<2x?xi64>, tensor<256x64xf32>) -> tensor<2x?x64xf32>
  // CHECK: pl.rms_norm %{{.*}}, %{{.*}} {eps = 1.000000e-05 : f64} : (tensor<2x?x64xf32>, tensor<64xf32>) -> tensor<2x?x64xf32>
  %n = pl.rms_norm %h, %g {eps = 1.0e-5 : f64} : (tensor<2x?x64xf32>, tensor<64xf32>) -> tensor<2x?x64xf32>
  // CHECK: pl.linear %{{.*}}, %{{.*}} : (tensor<2x?x64xf32>, tensor<32x64xf32>) -> tensor<2x?x32xf32>
  %y = pl.linear %n, %w : (tensor<2x?x64xf32>, tensor<32x64xf32>) -> tensor<2x?x32xf32>
  // CHECK: pl.linear %{{.*}}, %{{.*}}, %{{.*}} : (tensor<2x?x64xf32>, tensor<32x64xf32>, tensor<32xf32>) -> tensor<2x?x32xf32>
  %yb = pl.linear %n, %w, %bias : (tensor<2x?x64xf32>, tensor<32x64xf32>, tensor<32xf32>) -> tensor<2x?x32xf32>
  // CHECK: pl.lora_linear %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} {alpha = 8.000000e+00 : f64, dropout = 5.000000e-02 : f64, module = "model.layers.0.self_attn.q_proj", rank = 4 : i64, scaling = 2.000000e+00 : f64} : (tensor<2x?x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x4xf32>) -> tensor<2x?x32xf32>
  %l = pl.lora_linear %n, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 2.0 : f64, dropout = 0.05 : f64, module = "model.layers.0.self_attn.q_proj"} : (tensor<2x?x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x4xf32>) -> tensor<2x?x32xf32>
  return %y, %yb, %l : tensor<2x?x32xf32>, tensor<2x?x32xf32>, tensor<2x?x32xf32>
}

// CHECK-LABEL: func.func @dynamic_weights
func.func @dynamic_weights(%x: tensor<?x?xf32>, %w: tensor<?x?xf32>) -> tensor<?x?xf32> {
  // Nothing static to compare: accepted.
  // CHECK: pl.linear %{{.*}}, %{{.*}} : (tensor<?x?xf32>, tensor<?x?xf32>) -> tensor<?x?xf32>
  %y = pl.linear %x, %w : (tensor<?x?xf32>, tensor<?x?xf32>) -> tensor<?x?xf32>
  return %y : tensor<?x?xf32>
}

// CHECK-LABEL: func.func @matmuls
func.func @matmuls(%m: tensor<2x8x16xf32>, %n: tensor<2x16x4xf32>, %q: tensor<2x4x?x16xf32>) -> (tensor<2x16x16xf32>, tensor<2x8x4xf32>, tensor<2x4x?x?xf32>, tensor<2x8x8xf32>) {
  // CHECK: pl.matmul %{{.*}}, %{{.*}} {transpose_lhs = true} : (tensor<2x8x16xf32>, tensor<2x8x16xf32>) -> tensor<2x16x16xf32>
  %tl = pl.matmul %m, %m {transpose_lhs = true, transpose_rhs = false} : (tensor<2x8x16xf32>, tensor<2x8x16xf32>) -> tensor<2x16x16xf32>
  // CHECK: pl.matmul %{{.*}}, %{{.*}} : (tensor<2x8x16xf32>, tensor<2x16x4xf32>) -> tensor<2x8x4xf32>
  %plain = pl.matmul %m, %n : (tensor<2x8x16xf32>, tensor<2x16x4xf32>) -> tensor<2x8x4xf32>
  // Attention scores q k^T with a dynamic sequence length.
  // CHECK: pl.matmul %{{.*}}, %{{.*}} {transpose_rhs = true} : (tensor<2x4x?x16xf32>, tensor<2x4x?x16xf32>) -> tensor<2x4x?x?xf32>
  %s = pl.matmul %q, %q {transpose_rhs = true} : (tensor<2x4x?x16xf32>, tensor<2x4x?x16xf32>) -> tensor<2x4x?x?xf32>
  %tl_in = pl.param "t" : tensor<2x16x8xf32>
  // CHECK: pl.matmul %{{.*}}, %{{.*}} {transpose_lhs = true, transpose_rhs = true} : (tensor<2x16x8xf32>, tensor<2x8x16xf32>) -> tensor<2x8x8xf32>
  %mt = pl.matmul %tl_in, %m {transpose_lhs = true, transpose_rhs = true} : (tensor<2x16x8xf32>, tensor<2x8x16xf32>) -> tensor<2x8x8xf32>
  return %tl, %plain, %s, %mt : tensor<2x16x16xf32>, tensor<2x8x4xf32>, tensor<2x4x?x?xf32>, tensor<2x8x8xf32>
}
