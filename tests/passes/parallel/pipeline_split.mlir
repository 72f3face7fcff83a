// --pipeline-split (pipeline parallelism) on the 1-layer tiny model of
// tests/passes/lora/inject_lora.mlir: three units, embedding | layer 0 | final norm + head + loss.
// Each function becomes one per stage; values crossing a cut go by pl.send / pl.recv (one tag
// per transfer, the gradient's way back marked pl.backward); @optimizer_step is split by where
// each adapter lives.
// RUN: lora-opt %S/../lora/inject_lora.mlir --inject-lora="rank=2 alpha=4 targets=q_proj,v_proj" --append-loss \
// RUN:   --partition="pp=2" --autodiff --adamw --sync-grads --pipeline-split="schedule=1f1b" | FileCheck %s --check-prefix=PP2
// RUN: lora-opt %S/../lora/inject_lora.mlir --inject-lora="rank=2 alpha=4 targets=q_proj,v_proj" --append-loss \
// RUN:   --partition="pp=3" --autodiff --adamw --sync-grads --pipeline-split="schedule=gpipe" | FileCheck %s --check-prefix=PP3
// Without sync-grads there is no norm group to take part in.
// RUN: lora-opt %S/../lora/inject_lora.mlir --inject-lora="rank=2 alpha=4 targets=q_proj,v_proj" --append-loss \
// RUN:   --partition="pp=3" --autodiff --adamw --pipeline-split | FileCheck %s --check-prefix=NOSYNC
// pp 1: nothing to split.
// RUN: lora-opt %S/../lora/inject_lora.mlir --inject-lora="rank=2 alpha=4 targets=q_proj,v_proj" --append-loss \
// RUN:   --autodiff --adamw --pipeline-split | FileCheck %s --check-prefix=PP1

// pp 2: the head (no FLOP-heavy layer) goes alone, the embedding joins layer 0 (balanced by FLOPs).
// PP2: module attributes {pl.mesh = {dp = 1 : i64, pp = 2 : i64, tp = 1 : i64}, {{.*}}pl.pipeline = {schedule = "1f1b", stages = 2 : i64, unit_stage = [0, 0, 1]}
// PP2-LABEL: func.func @train_step_s0(%arg0: tensor<2x8xi64> {pl.name = "input_ids"}, %arg1: tensor<2x8xi64> {pl.name = "labels"}) attributes {pl.stage = 0 : i64} {
// PP2: pl.embedding
// PP2: pl.lora_linear {{.*}}module = "model.layers.0.self_attn.q_proj"
// PP2: pl.send %{{.+}} {pl.layer = 0 : i64, stage = 1 : i64, tag = 0 : i64} : tensor<2x8x32xf32>
// PP2-NEXT: %[[G:.+]] = pl.recv {pl.backward, pl.layer = 0 : i64, stage = 1 : i64, tag = 1 : i64} : tensor<2x8x32xf32>
// The gradient of the residual stream enters layer 0's backward.
// PP2-NEXT: pl.linear_grad_input %[[G]]
// PP2: pl.add %[[G]], %{{.+}} {pl.backward, pl.layer = 0 : i64}
// PP2: pl.accumulate_grad {{.*}}"model.layers.0.self_attn.q_proj.lora_A.weight"
// PP2-NOT: pl.cross_entropy
// PP2: return{{$}}
// Only the last stage returns the loss.
// PP2-LABEL: func.func @train_step_s1(%arg0: tensor<2x8xi64> {pl.name = "input_ids"}, %arg1: tensor<2x8xi64> {pl.name = "labels"}) -> tensor<f32> attributes {pl.stage = 1 : i64} {
// PP2: pl.recv {pl.layer = -1 : i64, stage = 0 : i64, tag = 0 : i64} : tensor<2x8x32xf32>
// PP2: pl.cross_entropy
// PP2: pl.send %{{.+}} {pl.backward, pl.layer = -1 : i64, stage = 0 : i64, tag = 1 : i64} : tensor<2x8x32xf32>
// PP2-NEXT: return %{{.+}} : tensor<f32>
// Validation: forward only, with tags of its own.
// PP2-LABEL: func.func @eval_step_s0
// PP2-NOT: pl.recv
// PP2: pl.send %{{.+}} {pl.layer = 0 : i64, stage = 1 : i64, tag = 2 : i64}
// PP2-LABEL: func.func @eval_step_s1
// PP2: pl.recv {pl.layer = -1 : i64, stage = 0 : i64, tag = 2 : i64}
// PP2-NOT: pl.send
// Stage 0 updates all four adapters; stage 1 holds none and keeps only its share of the norm.
// PP2-LABEL: func.func @optimizer_step_s0() attributes {pl.stage = 0 : i64} {
// PP2-NEXT: pl.adamw_step {{.*}}params = ["model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.0.self_attn.q_proj.lora_B.weight", "model.layers.0.self_attn.v_proj.lora_A.weight", "model.layers.0.self_attn.v_proj.lora_B.weight"], pl.norm_divisors = array<i64: 1, 1, 1, 1>, pl.norm_group = "pp"
// PP2-LABEL: func.func @optimizer_step_s1() attributes {pl.norm_group = "pp", pl.stage = 1 : i64} {
// PP2-NEXT: return

// pp 3: one unit per stage; the embedding stage and the head stage hold no adapter.
// PP3: pl.pipeline = {schedule = "gpipe", stages = 3 : i64, unit_stage = [0, 1, 2]}
// PP3-LABEL: func.func @train_step_s0
// PP3-NEXT: pl.param "model.embed_tokens.weight"
// PP3-NEXT: %[[E:.+]] = pl.embedding
// PP3-NEXT: pl.send %[[E]] {pl.layer = -1 : i64, stage = 1 : i64, tag = 0 : i64} : tensor<2x8x32xf32>
// Nothing trains below layer 0: no gradient comes back to the embedding stage.
// PP3-NEXT: return
// PP3-LABEL: func.func @train_step_s1
// PP3: pl.recv {pl.layer = 0 : i64, stage = 0 : i64, tag = 0 : i64}
// PP3: pl.send %{{.+}} {pl.layer = 0 : i64, stage = 2 : i64, tag = 1 : i64}
// PP3-NEXT: pl.recv {pl.backward, pl.layer = 0 : i64, stage = 2 : i64, tag = 2 : i64}
// PP3-LABEL: func.func @train_step_s2
// PP3: pl.recv {pl.layer = -1 : i64, stage = 1 : i64, tag = 1 : i64}
// PP3: pl.send %{{.+}} {pl.backward, pl.layer = -1 : i64, stage = 1 : i64, tag = 2 : i64}
// PP3-LABEL: func.func @optimizer_step_s0() attributes {pl.norm_group = "pp", pl.stage = 0 : i64} {
// PP3-NEXT: return
// PP3-LABEL: func.func @optimizer_step_s1() attributes {pl.stage = 1 : i64} {
// PP3-NEXT: pl.adamw_step {{.*}}pl.norm_group = "pp"
// PP3-LABEL: func.func @optimizer_step_s2() attributes {pl.norm_group = "pp", pl.stage = 2 : i64} {
// PP3-NEXT: return

// NOSYNC-LABEL: func.func @optimizer_step_s0() attributes {pl.stage = 0 : i64} {
// NOSYNC-NEXT: return
// NOSYNC-LABEL: func.func @optimizer_step_s1() attributes {pl.stage = 1 : i64} {
// NOSYNC-NEXT: pl.adamw_step
// NOSYNC-NOT: pl.norm_group

// PP1-NOT: pl.pipeline
// PP1-NOT: _s0
// PP1: func.func @optimizer_step()
