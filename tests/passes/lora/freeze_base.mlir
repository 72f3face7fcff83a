// --freeze-base: only LoRA adapter params (lora_a / lora_b operands) are trainable afterwards,
// as after importing a PEFT export whose params carry no trainability.
// RUN: lora-opt %s --freeze-base | FileCheck %s
// Idempotent, and a no-op after --inject-lora (which keeps the same invariant).
// RUN: lora-opt %s --freeze-base --freeze-base | FileCheck %s
// RUN: lora-opt %s --inject-lora="rank=4 alpha=8 targets=v_proj" --freeze-base | FileCheck %s --check-prefix=INJECT

// CHECK-LABEL: func.func @peft_import
// CHECK: pl.param "model.embed_tokens.weight" : tensor<128x32xf32>
// CHECK: pl.param "model.layers.0.self_attn.q_proj.weight" {pl.layer = 0 : i64} : tensor<32x32xf32>
// CHECK: pl.param "model.layers.0.self_attn.q_proj.lora_A.weight" {pl.layer = 0 : i64, trainable} : tensor<8x32xf32>
// CHECK: pl.param "model.layers.0.self_attn.q_proj.lora_B.weight" {pl.layer = 0 : i64, trainable} : tensor<32x8xf32>
// CHECK: pl.lora_linear
// CHECK: pl.param "model.layers.0.self_attn.v_proj.weight" {pl.layer = 0 : i64} : tensor<32x32xf32>
// CHECK-NOT: trainable
// CHECK: return

// INJECT-LABEL: func.func @peft_import
// INJECT: pl.param "model.embed_tokens.weight" : tensor<128x32xf32>
// INJECT: pl.param "model.layers.0.self_attn.q_proj.lora_A.weight" {pl.layer = 0 : i64, trainable}
// INJECT: pl.param "model.layers.0.self_attn.q_proj.lora_B.weight" {pl.layer = 0 : i64, trainable}
// INJECT-NEXT: pl.lora_linear {{.*}}module = "model.layers.0.self_attn.q_proj"
// INJECT: pl.param "model.layers.0.self_attn.v_proj.weight" {pl.layer = 0 : i64} : tensor<32x32xf32>
// INJECT-NEXT: pl.param "model.layers.0.self_attn.v_proj.lora_A.weight" {init = "kaiming_uniform(a=2.23606797749979)", pl.layer = 0 : i64, trainable} : tensor<4x32xf32>
// INJECT-NEXT: pl.param "model.layers.0.self_attn.v_proj.lora_B.weight" {init = "zeros", pl.layer = 0 : i64, trainable} : tensor<32x4xf32>
// INJECT-NEXT: pl.lora_linear {{.*}}module = "model.layers.0.self_attn.v_proj"
// INJECT-NOT: trainable
// INJECT: return

func.func @peft_import(%ids: tensor<2x8xi64>) -> tensor<2x8x32xf32> {
  %e = pl.param "model.embed_tokens.weight" {trainable} : tensor<128x32xf32>
  %x = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<128x32xf32>) -> tensor<2x8x32xf32>
  %wq = pl.param "model.layers.0.self_attn.q_proj.weight" {pl.layer = 0 : i64, trainable} : tensor<32x32xf32>
  %a = pl.param "model.layers.0.self_attn.q_proj.lora_A.weight" {pl.layer = 0 : i64} : tensor<8x32xf32>
  %b = pl.param "model.layers.0.self_attn.q_proj.lora_B.weight" {pl.layer = 0 : i64} : tensor<32x8xf32>
  %q = pl.lora_linear %x, %wq, %a, %b {rank = 8 : i64, alpha = 16.0 : f64, scaling = 2.0 : f64, module = "model.layers.0.self_attn.q_proj", pl.layer = 0 : i64} : (tensor<2x8x32xf32>, tensor<32x32xf32>, tensor<8x32xf32>, tensor<32x8xf32>) -> tensor<2x8x32xf32>
  %wv = pl.param "model.layers.0.self_attn.v_proj.weight" {pl.layer = 0 : i64} : tensor<32x32xf32>
  %v = pl.linear %q, %wv {pl.layer = 0 : i64} : (tensor<2x8x32xf32>, tensor<32x32xf32>) -> tensor<2x8x32xf32>
  return %v : tensor<2x8x32xf32>
}
