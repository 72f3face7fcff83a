// --recompute-layers on a 1-layer LLaMA with LoRA on q and v (tests/passes/lora/inject_lora.mlir):
// the layer's forward is cloned (pl.recompute) right before the first backward op that needs it
// (swiglu's gradient), from the layer's input (%1, the embedding output: a checkpoint) and the
// params; the backward reads the clones; the original forward is untouched.
// RUN: lora-opt %S/../lora/inject_lora.mlir --inject-lora --append-loss --autodiff --recompute-layers | FileCheck %s
// RUN: not lora-opt %S/../lora/inject_lora.mlir --inject-lora --append-loss --recompute-layers 2>&1 | FileCheck %s --check-prefix=NOBWD

// CHECK-LABEL: func.func @train_step
// CHECK: %[[X:.+]] = pl.embedding
// CHECK: %[[N:.+]] = pl.rms_norm %[[X]], %[[W:[0-9]+]] {eps = {{.*}}, pl.layer = 0 : i64}
// CHECK: pl.cross_entropy %
// CHECK: pl.cross_entropy_grad
// CHECK: %[[RN:.+]] = pl.rms_norm %[[X]], %[[W]] {eps = {{.*}}, pl.layer = 0 : i64, pl.recompute}
// CHECK-NEXT: %[[RQ:.+]] = pl.lora_linear %[[RN]], {{.*}}module = "model.layers.0.self_attn.q_proj", pl.layer = 0 : i64, pl.recompute
// CHECK: %[[RA:.+]] = pl.attention {{.*}}pl.recompute
// CHECK: %[[RH:.+]] = pl.add %[[X]], %{{.+}} {pl.layer = 0 : i64, pl.recompute}
// CHECK: %[[RG:.+]] = pl.linear %{{.+}} {pl.layer = 0 : i64, pl.recompute}
// CHECK: %[[RU:.+]] = pl.linear %{{.+}} {pl.layer = 0 : i64, pl.recompute}
// CHECK-NEXT: pl.swiglu_grad %{{.+}}, %[[RG]], %[[RU]]
// CHECK: pl.rms_norm_grad %{{.+}}, %[[RH]],
// CHECK: pl.lora_linear_grad %{{.+}}, %[[RN]],
// CHECK: return

// NOBWD: error: recompute-layers: @train_step has no backward after its loss; run --autodiff first
