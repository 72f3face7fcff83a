// --append-loss: @forward (input_ids -> logits) becomes @train_step (input_ids, labels -> loss)
// with HF's shifted next-token cross-entropy, and an identical @eval_step for validation.
// RUN: lora-opt %s --append-loss | FileCheck %s
// RUN: lora-opt %s --append-loss="ignore-index=7" | FileCheck %s --check-prefix=IGNORE

// CHECK-LABEL: func.func @train_step(%arg0: tensor<2x8xi64> {pl.name = "input_ids"}, %arg1: tensor<2x8xi64> {pl.name = "labels"}) -> tensor<f32>
// CHECK: %[[E:.+]] = pl.param "model.embed_tokens.weight"
// CHECK-NEXT: %[[H:.+]] = pl.embedding %arg0, %[[E]]
// CHECK: %[[LOGITS:.+]] = pl.linear %[[H]], %{{.+}} {pl.layer = -1 : i64} : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
// ignore_index -100 (HF's default) is the op's default, so the printer omits it.
// CHECK-NEXT: %[[LOSS:.+]] = pl.cross_entropy %[[LOGITS]], %arg1 {pl.layer = -1 : i64, shift_labels} : (tensor<2x8x64xf32>, tensor<2x8xi64>) -> tensor<f32>
// CHECK-NEXT: return %[[LOSS]] : tensor<f32>
// The forward is kept, unchanged, as @eval_step; no @forward remains.
// CHECK-LABEL: func.func @eval_step(%arg0: tensor<2x8xi64> {pl.name = "input_ids"}, %arg1: tensor<2x8xi64> {pl.name = "labels"}) -> tensor<f32>
// CHECK: pl.embedding %arg0
// CHECK: pl.cross_entropy {{.*}} {pl.layer = -1 : i64, shift_labels}
// CHECK-NOT: @forward

// IGNORE: pl.cross_entropy {{.*}}{ignore_index = 7 : i64, pl.layer = -1 : i64, shift_labels}
// IGNORE: pl.cross_entropy {{.*}}{ignore_index = 7 : i64, pl.layer = -1 : i64, shift_labels}

func.func @forward(%ids: tensor<2x8xi64>) -> tensor<2x8x64xf32> {
  %e = pl.param "model.embed_tokens.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
  %h = pl.embedding %ids, %e {pl.layer = -1 : i64} : (tensor<2x8xi64>, tensor<64x16xf32>) -> tensor<2x8x16xf32>
  %w = pl.param "lm_head.weight" {pl.layer = -1 : i64} : tensor<64x16xf32>
  %l = pl.linear %h, %w {pl.layer = -1 : i64} : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
  return %l : tensor<2x8x64xf32>
}
