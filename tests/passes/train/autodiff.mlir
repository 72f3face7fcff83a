// The training phase on the 1-layer tiny model (tests/passes/lora/inject_lora.mlir's input):
// --append-loss adds HF's shifted loss, --autodiff the backward for q/v adapters only, --adamw
// the optimizer step.
// RUN: lora-opt %S/../lora/inject_lora.mlir --inject-lora="rank=4 alpha=8 targets=q_proj,v_proj" --append-loss \
// RUN:   --autodiff="micro-batches=2" --adamw="lr=1e-3 weight-decay=0.01 schedule=cosine warmup-steps=5" | FileCheck %s

// CHECK: module attributes {{{.*}}pl.train = {beta1 = 9.000000e-01 : f64, beta2 = {{.*}} : f64, eps = 1.000000e-08 : f64, lr = 1.000000e-03 : f64, max_grad_norm = 1.000000e+00 : f64, min_lr_ratio = 0.000000e+00 : f64, schedule = "cosine", total_steps = 0 : i64, warmup_steps = 5 : i64, weight_decay = 1.000000e-02 : f64}}
// CHECK-LABEL: func.func @train_step(%arg0: tensor<2x8xi64> {pl.name = "input_ids"}, %arg1: tensor<2x8xi64> {pl.name = "labels"}) -> tensor<f32>
// CHECK: %[[LOGITS:.+]] = pl.linear %{{.+}}, %[[HEAD:.+]] {pl.layer = -1 : i64} : (tensor<2x8x32xf32>, tensor<128x32xf32>) -> tensor<2x8x128xf32>
// CHECK-NEXT: %[[LOSS:.+]] = pl.cross_entropy %[[LOGITS]], %arg1 {pl.layer = -1 : i64, shift_labels}
// The loss seed is 1 / micro-batches.
// CHECK-NEXT: %[[DL:.+]] = pl.cross_entropy_grad %[[LOGITS]], %arg1 {grad_scale = 5.000000e-01 : f64, pl.layer = -1 : i64, shift_labels}
// CHECK-NEXT: pl.linear_grad_input %[[DL]], %[[HEAD]]
// CHECK-NEXT: pl.rms_norm_grad
// The residual stream's gradient is the sum of both branches.
// CHECK: pl.swiglu_grad
// CHECK: pl.add
// CHECK: pl.attention_grad
// k_proj has no adapter and its input does not depend on one: no gradient flows into it.
// CHECK-NOT: k_proj
// CHECK: pl.lora_linear_grad
// CHECK: pl.lora_linear_grad
// CHECK-DAG: pl.accumulate_grad %{{.+}} {param = "model.layers.0.self_attn.q_proj.lora_A.weight", pl.layer = 0 : i64} : tensor<4x32xf32>
// CHECK-DAG: pl.accumulate_grad %{{.+}} {param = "model.layers.0.self_attn.q_proj.lora_B.weight", pl.layer = 0 : i64} : tensor<32x4xf32>
// CHECK-DAG: pl.accumulate_grad %{{.+}} {param = "model.layers.0.self_attn.v_proj.lora_A.weight", pl.layer = 0 : i64} : tensor<4x32xf32>
// CHECK-DAG: pl.accumulate_grad %{{.+}} {param = "model.layers.0.self_attn.v_proj.lora_B.weight", pl.layer = 0 : i64} : tensor<16x4xf32>
// CHECK: return %[[LOSS]] : tensor<f32>
// Validation: the same forward and loss, no gradients.
// CHECK-LABEL: func.func @eval_step
// CHECK-NOT: _grad
// CHECK: pl.cross_entropy
// CHECK-NEXT: return
// CHECK-LABEL: func.func @optimizer_step()
// CHECK-NEXT: pl.adamw_step {beta1 = 9.000000e-01 : f64, beta2 = {{.*}} : f64, eps = 1.000000e-08 : f64, max_grad_norm = 1.000000e+00 : f64, params = ["model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.0.self_attn.q_proj.lora_B.weight", "model.layers.0.self_attn.v_proj.lora_A.weight", "model.layers.0.self_attn.v_proj.lora_B.weight"], weight_decay = 1.000000e-02 : f64}

// LoRA dropout: the gradient op carries p and the module (the mask's stream); the backward
// recomputes the forward's mask from them instead of storing it.
// RUN: lora-opt %S/../lora/inject_lora.mlir --inject-lora="rank=4 alpha=8 dropout=0.1 targets=q_proj,v_proj" --append-loss \
// RUN:   --autodiff="micro-batches=2" | FileCheck %s --check-prefix=DROP
// DROP-LABEL: func.func @train_step
// DROP: pl.lora_linear_grad {{.*}} {dropout = 1.000000e-01 : f64, module = "model.layers.0.self_attn.{{[qv]}}_proj", pl.layer = 0 : i64, scaling = 2.000000e+00 : f64}
// DROP: pl.lora_linear_grad {{.*}} {dropout = 1.000000e-01 : f64, module = "model.layers.0.self_attn.{{[qv]}}_proj", pl.layer = 0 : i64, scaling = 2.000000e+00 : f64}
