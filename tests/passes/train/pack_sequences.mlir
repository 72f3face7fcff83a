// --pack-sequences on the 1-layer tiny model (tests/passes/lora/inject_lora.mlir's input): @forward
// gains position_ids and segment_ids, every pl.rope reads the positions and every pl.attention
// the segment ids; --append-loss keeps them before labels; --autodiff's rope_grad and
// attention_grad take the same operands as their forward ops (the grad rules).
// RUN: lora-opt %S/../lora/inject_lora.mlir --inject-lora="rank=4 alpha=8 targets=q_proj,v_proj" --pack-sequences | FileCheck %s
// RUN: lora-opt %S/../lora/inject_lora.mlir --inject-lora="rank=4 alpha=8 targets=q_proj,v_proj" --pack-sequences \
// RUN:   --append-loss --autodiff | FileCheck %s --check-prefix=GRAD
// Without the pass nothing reads positions or segments.
// RUN: lora-opt %S/../lora/inject_lora.mlir --inject-lora="rank=4 alpha=8 targets=q_proj,v_proj" --append-loss --autodiff \
// RUN:   | FileCheck %s --check-prefix=PLAIN

// CHECK-LABEL: func.func @forward(%arg0: tensor<2x8xi64> {pl.name = "input_ids"}, %arg1: tensor<2x8xi64> {pl.name = "position_ids"}, %arg2: tensor<2x8xi64> {pl.name = "segment_ids"}) -> tensor<2x8x128xf32>
// CHECK: %[[Q:.+]] = pl.rope %{{.+}} positions(%arg1 : tensor<2x8xi64>) {pl.layer = 0 : i64, theta = 5.000000e+05 : f64} : tensor<2x4x8x8xf32>
// CHECK-NEXT: %[[K:.+]] = pl.rope %{{.+}} positions(%arg1 : tensor<2x8xi64>) {pl.layer = 0 : i64, theta = 5.000000e+05 : f64} : tensor<2x2x8x8xf32>
// CHECK-NEXT: pl.attention %[[Q]], %[[K]], %{{.+}} segments %arg2 {causal, pl.layer = 0 : i64, scale = {{.+}} : f64} : (tensor<2x4x8x8xf32>, tensor<2x2x8x8xf32>, tensor<2x2x8x8xf32>, tensor<2x8xi64>) -> tensor<2x4x8x8xf32>
// The module's other functions are not the model: left alone.
// CHECK-LABEL: func.func @tied(%arg0: tensor<2x8xi64>, %arg1: tensor<2x8x32xf32>)

// GRAD-LABEL: func.func @train_step(%arg0: tensor<2x8xi64> {pl.name = "input_ids"}, %arg1: tensor<2x8xi64> {pl.name = "position_ids"}, %arg2: tensor<2x8xi64> {pl.name = "segment_ids"}, %arg3: tensor<2x8xi64> {pl.name = "labels"}) -> tensor<f32>
// GRAD: pl.cross_entropy %{{.+}}, %arg3
// GRAD: pl.attention_grad %{{.+}}, %{{.+}}, %{{.+}}, %{{.+}} segments %arg2 {causal, pl.layer = 0 : i64, scale = {{.+}}} : (tensor<2x4x8x8xf32>, tensor<2x4x8x8xf32>, tensor<2x2x8x8xf32>, tensor<2x2x8x8xf32>, tensor<2x8xi64>)
// Only q has an adapter upstream of its rope: one rope_grad, with the forward's positions.
// GRAD-NEXT: pl.rope_grad %grad_query positions(%arg1 : tensor<2x8xi64>) {pl.layer = 0 : i64, theta = 5.000000e+05 : f64} : tensor<2x4x8x8xf32>
// GRAD-NOT: pl.rope_grad
// GRAD-LABEL: func.func @eval_step(%arg0: tensor<2x8xi64> {pl.name = "input_ids"}, %arg1: tensor<2x8xi64> {pl.name = "position_ids"}, %arg2: tensor<2x8xi64> {pl.name = "segment_ids"}, %arg3: tensor<2x8xi64> {pl.name = "labels"})

// PLAIN-LABEL: func.func @train_step(%arg0: tensor<2x8xi64> {pl.name = "input_ids"}, %arg1: tensor<2x8xi64> {pl.name = "labels"}) -> tensor<f32>
// PLAIN-NOT: positions
// PLAIN-NOT: segments
// PLAIN: pl.attention_grad %{{.+}}, %{{.+}}, %{{.+}}, %{{.+}} {causal
// PLAIN-NEXT: pl.rope_grad %grad_query {pl.layer = 0 : i64, theta = 5.000000e+05 : f64} : tensor<2x4x8x8xf32>
// PLAIN-NOT: positions
// PLAIN-NOT: segments
