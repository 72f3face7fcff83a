// RUN: lora-opt %s | lora-opt | FileCheck %s

// CHECK-LABEL: func.func @gqa
func.func @gqa(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x16x16xf32>, %v: tensor<2x2x16x16xf32>) -> (tensor<2x4x16x16xf32>, tensor<2x4x16x16xf32>) {
  // CHECK: pl.rope %{{.*}} {rope_scaling = {factor = 3.200000e+01 : f64, high_freq_factor = 4.000000e+00 : f64, low_freq_factor = 1.000000e+00 : f64, original_max_position_embeddings = 8192 : i64}, theta = 5.000000e+05 : f64} : tensor<2x4x16x16xf32>
  %qr = pl.rope %q {theta = 500000.0 : f64, rope_scaling = {factor = 32.0 : f64, low_freq_factor = 1.0 : f64, high_freq_factor = 4.0 : f64, original_max_position_embeddings = 8192 : i64}} : tensor<2x4x16x16xf32>
  // CHECK: pl.rope %{{.*}} {theta = 1.000000e+04 : f64} : tensor<2x2x16x16xf32>
  %kr = pl.rope %k {theta = 10000.0 : f64} : tensor<2x2x16x16xf32>
  // CHECK: pl.attention %{{.*}}, %{{.*}}, %{{.*}} {causal, scale = 2.500000e-01 : f64}
  %a = pl.attention %qr, %kr, %v {causal, scale = 0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>) -> tensor<2x4x16x16xf32>
  // CHECK: pl.softmax %{{.*}} {axis = -1 : i64}
  %s = pl.softmax %a {axis = -1 : i64} : tensor<2x4x16x16xf32>
  return %a, %s : tensor<2x4x16x16xf32>, tensor<2x4x16x16xf32>
}
