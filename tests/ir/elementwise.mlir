// RUN: lora-opt %s | lora-opt | FileCheck %s
// Round trip of pl.silu, pl.swiglu, pl.add, pl.mul, pl.reshape, pl.transpose,
// pl.cross_entropy and pl.generic.

// CHECK-LABEL: func.func @mlp_and_loss
func.func @mlp_and_loss(%g: tensor<2x8x128xf32>, %u: tensor<2x8x128xf32>, %x: tensor<2x8x4x16xf32>, %labels: tensor<2x8xi64>) -> (tensor<2x8x128xf32>, tensor<f32>, tensor<2x4x8x16xf32>) {
  // CHECK: pl.silu %{{.*}} : tensor<2x8x128xf32>
  %s = pl.silu %g : tensor<2x8x128xf32>
  // CHECK: pl.swiglu %{{.*}}, %{{.*}} : tensor<2x8x128xf32>
  %w = pl.swiglu %g, %u : tensor<2x8x128xf32>
  // CHECK: pl.add %{{.*}}, %{{.*}} : tensor<2x8x128xf32>
  %a = pl.add %s, %w : tensor<2x8x128xf32>
  // CHECK: pl.mul %{{.*}}, %{{.*}} : tensor<2x8x128xf32>
  %m = pl.mul %a, %u : tensor<2x8x128xf32>
  // CHECK: pl.transpose %{{.*}} {perm = array<i64: 0, 2, 1, 3>} : (tensor<2x8x4x16xf32>) -> tensor<2x4x8x16xf32>
  %t = pl.transpose %x {perm = array<i64: 0, 2, 1, 3>} : (tensor<2x8x4x16xf32>) -> tensor<2x4x8x16xf32>
  // CHECK: pl.reshape %{{.*}} : (tensor<2x8x128xf32>) -> tensor<2x8x4x32xf32>
  %r = pl.reshape %m : (tensor<2x8x128xf32>) -> tensor<2x8x4x32xf32>
  // CHECK: pl.reshape %{{.*}} : (tensor<2x8x4x32xf32>) -> tensor<2x8x128xf32>
  %logits = pl.reshape %r : (tensor<2x8x4x32xf32>) -> tensor<2x8x128xf32>
  // CHECK: pl.cross_entropy %{{.*}}, %{{.*}} : (tensor<2x8x128xf32>, tensor<2x8xi64>) -> tensor<f32>
  %l = pl.cross_entropy %logits, %labels : (tensor<2x8x128xf32>, tensor<2x8xi64>) -> tensor<f32>
  return %m, %l, %t : tensor<2x8x128xf32>, tensor<f32>, tensor<2x4x8x16xf32>
}

// CHECK-LABEL: func.func @dynamic
func.func @dynamic(%x: tensor<2x?x128xf32>, %logits: tensor<?x?x64xf32>, %labels: tensor<2x?xi32>) -> (tensor<2x?x4x32xf32>, tensor<128x?x2xf32>, tensor<f32>) {
  // Element counts cannot be compared with a dynamic dim: accepted.
  // CHECK: pl.reshape %{{.*}} : (tensor<2x?x128xf32>) -> tensor<2x?x4x32xf32>
  %r = pl.reshape %x : (tensor<2x?x128xf32>) -> tensor<2x?x4x32xf32>
  // CHECK: pl.transpose %{{.*}} {perm = array<i64: 2, 1, 0>} : (tensor<2x?x128xf32>) -> tensor<128x?x2xf32>
  %t = pl.transpose %x {perm = array<i64: 2, 1, 0>} : (tensor<2x?x128xf32>) -> tensor<128x?x2xf32>
  // CHECK: pl.cross_entropy %{{.*}}, %{{.*}} {ignore_index = 0 : i64} : (tensor<?x?x64xf32>, tensor<2x?xi32>) -> tensor<f32>
  %l = pl.cross_entropy %logits, %labels {ignore_index = 0 : i64} : (tensor<?x?x64xf32>, tensor<2x?xi32>) -> tensor<f32>
  return %r, %t, %l : tensor<2x?x4x32xf32>, tensor<128x?x2xf32>, tensor<f32>
}

// CHECK-LABEL: func.func @generic
func.func @generic(%x: tensor<3xf32>) -> (tensor<3xf32>, tensor<3xf32>) {
  // CHECK: %[[AXIS:.*]] = pl.constant dense<0> : tensor<i64> : tensor<i64>
  %axis = pl.constant dense<0> : tensor<i64> : tensor<i64>
  // CHECK: pl.generic "CumSum"(%{{.*}}, %[[AXIS]]) {op_attrs = {exclusive = 0 : i64}} : (tensor<3xf32>, tensor<i64>) -> tensor<3xf32>
  %c = pl.generic "CumSum"(%x, %axis) {op_attrs = {exclusive = 0 : i64}} : (tensor<3xf32>, tensor<i64>) -> tensor<3xf32>
  // CHECK: pl.generic "Identity"(%{{.*}}) : (tensor<3xf32>) -> tensor<3xf32>
  %i = pl.generic "Identity"(%c) : (tensor<3xf32>) -> tensor<3xf32>
  return %c, %i : tensor<3xf32>, tensor<3xf32>
}
