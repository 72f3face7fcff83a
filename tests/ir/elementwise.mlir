// RUN: lora-opt %s | lora-opt | FileCheck %s

// CHECK-LABEL: func.func @mlp_and_loss
func.func @mlp_and_loss(%g: tensor<2x8x128xf32>, %u: tensor<2x8x128xf32>, %x: tensor<2x8x4x16xf32>, %labels: tensor<2x8xi64>) -> (tensor<2x8x128xf32>, tensor<f32>, tensor<2x4x8x16xf32>, tensor<3xf32>) {
  // CHECK: pl.silu
  %s = pl.silu %g : tensor<2x8x128xf32>
  // CHECK: pl.swiglu %{{.*}}, %{{.*}} : tensor<2x8x128xf32>
  %w = pl.swiglu %g, %u : tensor<2x8x128xf32>
  // CHECK: pl.add
  %a = pl.add %s, %w : tensor<2x8x128xf32>
  // CHECK: pl.mul
  %m = pl.mul %a, %u : tensor<2x8x128xf32>
  // CHECK: pl.transpose %{{.*}} {perm = array<i64: 0, 2, 1, 3>} : (tensor<2x8x4x16xf32>) -> tensor<2x4x8x16xf32>
  %t = pl.transpose %x {perm = array<i64: 0, 2, 1, 3>} : (tensor<2x8x4x16xf32>) -> tensor<2x4x8x16xf32>
  // CHECK: pl.reshape %{{.*}} : (tensor<2x8x128xf32>) -> tensor<2x8x4x32xf32>
  %r = pl.reshape %m : (tensor<2x8x128xf32>) -> tensor<2x8x4x32xf32>
  %logits = pl.reshape %r : (tensor<2x8x4x32xf32>) -> tensor<2x8x128xf32>
  // CHECK: pl.cross_entropy %{{.*}}, %{{.*}} : (tensor<2x8x128xf32>, tensor<2x8xi64>) -> tensor<f32>
  %l = pl.cross_entropy %logits, %labels : (tensor<2x8x128xf32>, tensor<2x8xi64>) -> tensor<f32>
  // CHECK: pl.generic "CumSum"(%{{.*}}) : (tensor<3xf32>) -> tensor<3xf32>
  %c = pl.constant dense<[1.0, 2.0, 3.0]> : tensor<3xf32>
  %cs = pl.generic "CumSum"(%c) : (tensor<3xf32>) -> tensor<3xf32>
  return %m, %l, %t, %cs : tensor<2x8x128xf32>, tensor<f32>, tensor<2x4x8x16xf32>, tensor<3xf32>
}
