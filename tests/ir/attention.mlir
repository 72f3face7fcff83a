// RUN: lora-opt %s | lora-opt | FileCheck %s
// Round trip of pl.rope, pl.attention and pl.softmax.

// CHECK-LABEL: func.func @gqa
func.func @gqa(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x16x16xf32>, %v: tensor<2x2x16x16xf32>) -> (tensor<2x4x16x16xf32>, tensor<2x4x16x16xf32>) {
  // CHECK: pl.rope %{{.*}} {rope_scaling = {factor = 3.200000e+01 : f64, high_freq_factor = 4.000000e+00 : f64, low_freq_factor = 1.000000e+00 : f64, original_max_position_embeddings = 8192 : i64}, theta = 5.000000e+05 : f64} : tensor<2x4x16x16xf32>
  %qr = pl.rope %q {theta = 500000.0 : f64, rope_scaling = {factor = 32.0 : f64, low_freq_factor = 1.0 : f64, high_freq_factor = 4.0 : f64, original_max_position_embeddings = 8192 : i64}} : tensor<2x4x16x16xf32>
  // CHECK: pl.rope %{{.*}} {theta = 1.000000e+04 : f64} : tensor<2x2x16x16xf32>
  %kr = pl.rope %k {theta = 10000.0 : f64} : tensor<2x2x16x16xf32>
  // Four query heads share two key/value heads.
  // CHECK: pl.attention %{{.*}}, %{{.*}}, %{{.*}} {causal, scale = 2.500000e-01 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>) -> tensor<2x4x16x16xf32>
  %a = pl.attention %qr, %kr, %v {causal, scale = 0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>) -> tensor<2x4x16x16xf32>
  // CHECK: pl.softmax %{{.*}} {axis = -1 : i64} : tensor<2x4x16x16xf32>
  %s = pl.softmax %a {axis = -1 : i64} : tensor<2x4x16x16xf32>
  return %a, %s : tensor<2x4x16x16xf32>, tensor<2x4x16x16xf32>
}

// CHECK-LABEL: func.func @dynamic
func.func @dynamic(%q: tensor<?x8x?x64xf32>, %k: tensor<?x?x?x64xf32>, %v: tensor<?x?x?x64xf32>, %x: tensor<?x?x?x?xf32>) -> (tensor<?x8x?x64xf32>, tensor<?x?x?x?xf32>) {
  // Dynamic batch, sequence and key/value heads: nothing static to check.
  // CHECK: pl.attention %{{.*}}, %{{.*}}, %{{.*}} {scale = 1.250000e-01 : f64} : (tensor<?x8x?x64xf32>, tensor<?x?x?x64xf32>, tensor<?x?x?x64xf32>) -> tensor<?x8x?x64xf32>
  %a = pl.attention %q, %k, %v {scale = 0.125 : f64} : (tensor<?x8x?x64xf32>, tensor<?x?x?x64xf32>, tensor<?x?x?x64xf32>) -> tensor<?x8x?x64xf32>
  // CHECK: pl.rope %{{.*}} {theta = 1.000000e+04 : f64} : tensor<?x?x?x?xf32>
  %r = pl.rope %x {theta = 10000.0 : f64} : tensor<?x?x?x?xf32>
  // CHECK: pl.softmax %{{.*}} {axis = 0 : i64} : tensor<?x?x?x?xf32>
  %s = pl.softmax %r {axis = 0 : i64} : tensor<?x?x?x?xf32>
  return %a, %s : tensor<?x8x?x64xf32>, tensor<?x?x?x?xf32>
}
