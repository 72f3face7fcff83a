// RUN: lora-opt %s | lora-opt | FileCheck %s
// Round trip of the packing operands: pl.rope / pl.rope_grad positions and pl.attention /
// pl.attention_grad segment ids (lora-compile --packing).

// CHECK-LABEL: func.func @packed
func.func @packed(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x16x16xf32>, %v: tensor<2x2x16x16xf32>,
                  %pos: tensor<2x16xi64>, %seg: tensor<2x16xi32>) -> tensor<2x4x16x16xf32> {
  // CHECK: pl.rope %{{.*}} positions(%{{.*}} : tensor<2x16xi64>) {theta = 1.000000e+04 : f64} : tensor<2x4x16x16xf32>
  %qr = pl.rope %q positions(%pos : tensor<2x16xi64>) {theta = 10000.0 : f64} : tensor<2x4x16x16xf32>
  // CHECK: pl.rope %{{.*}} {theta = 1.000000e+04 : f64} : tensor<2x2x16x16xf32>
  %kr = pl.rope %k {theta = 10000.0 : f64} : tensor<2x2x16x16xf32>
  // CHECK: pl.attention %{{.*}}, %{{.*}}, %{{.*}} segments %{{.*}} {causal, scale = 2.500000e-01 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x16xi32>) -> tensor<2x4x16x16xf32>
  %a = pl.attention %qr, %kr, %v segments %seg {causal, scale = 0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x16xi32>) -> tensor<2x4x16x16xf32>
  // CHECK: pl.attention_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} segments %{{.*}} {causal, scale = 2.500000e-01 : f64} : (tensor<2x4x16x16xf32>, tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x16xi32>) -> (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>)
  %dq, %dk, %dv = pl.attention_grad %a, %qr, %kr, %v segments %seg {causal, scale = 0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x16xi32>) -> (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>)
  // CHECK: pl.rope_grad %{{.*}} positions(%{{.*}} : tensor<2x16xi64>) {theta = 1.000000e+04 : f64} : tensor<2x4x16x16xf32>
  %dx = pl.rope_grad %dq positions(%pos : tensor<2x16xi64>) {theta = 10000.0 : f64} : tensor<2x4x16x16xf32>
  return %dx : tensor<2x4x16x16xf32>
}

// Dynamic batch and sequence: the positions' dims are checked only where known.
// CHECK-LABEL: func.func @dynamic
func.func @dynamic(%x: tensor<?x4x?x16xf32>, %pos: tensor<?x?xi64>) -> tensor<?x4x?x16xf32> {
  // CHECK: pl.rope %{{.*}} positions(%{{.*}} : tensor<?x?xi64>)
  %r = pl.rope %x positions(%pos : tensor<?x?xi64>) {theta = 10000.0 : f64} : tensor<?x4x?x16xf32>
  return %r : tensor<?x4x?x16xf32>
}
