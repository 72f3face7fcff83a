// RUN: lora-opt %s | lora-opt | FileCheck %s
// Round trip of pl.param and pl.constant.

// CHECK-LABEL: func.func @params
func.func @params() -> (tensor<4x8xf32>, tensor<8x4xf32>, tensor<8xf32>, tensor<16x8xbf16>) {
  // CHECK: pl.param "model.layers.0.self_attn.q_proj.lora_A.weight" {init = "kaiming_uniform(a=2.23606797749979)", trainable} : tensor<4x8xf32>
  %a = pl.param "model.layers.0.self_attn.q_proj.lora_A.weight" {trainable, init = "kaiming_uniform(a=2.23606797749979)"} : tensor<4x8xf32>
  // CHECK: pl.param "model.layers.0.self_attn.q_proj.lora_B.weight" {init = "zeros", trainable} : tensor<8x4xf32>
  %b = pl.param "model.layers.0.self_attn.q_proj.lora_B.weight" {trainable, init = "zeros"} : tensor<8x4xf32>
  // CHECK: pl.param "model.norm.weight" {init = "ones"} : tensor<8xf32>
  %n = pl.param "model.norm.weight" {init = "ones"} : tensor<8xf32>
  // CHECK: pl.param "model.embed_tokens.weight" : tensor<16x8xbf16>
  %e = pl.param "model.embed_tokens.weight" : tensor<16x8xbf16>
  return %a, %b, %n, %e : tensor<4x8xf32>, tensor<8x4xf32>, tensor<8xf32>, tensor<16x8xbf16>
}

// CHECK-LABEL: func.func @constants
func.func @constants() -> (tensor<2xi64>, tensor<2x2xf32>, tensor<f32>) {
  // CHECK: pl.constant dense<[1, 2]> : tensor<2xi64> : tensor<2xi64>
  %c = pl.constant dense<[1, 2]> : tensor<2xi64> : tensor<2xi64>
  // CHECK: pl.constant dense<{{\[\[}}1.000000e+00, 2.000000e+00], [3.000000e+00, 4.000000e+00]]> : tensor<2x2xf32> : tensor<2x2xf32>
  %m = pl.constant dense<[[1.0, 2.0], [3.0, 4.0]]> : tensor<2x2xf32> : tensor<2x2xf32>
  // CHECK: pl.constant dense<5.000000e-01> : tensor<f32> : tensor<f32>
  %s = pl.constant dense<0.5> : tensor<f32> : tensor<f32>
  return %c, %m, %s : tensor<2xi64>, tensor<2x2xf32>, tensor<f32>
}
