// --inject-lora on the 1-layer tiny model built by models/llama_builder (D=32, 4 q heads / 2 kv
// heads of 8, I=64, V=128), plus @tied: a head tied to the embedding and trainable base weights.
// RUN: lora-opt %s --inject-lora="rank=4 alpha=8 targets=q_proj,v_proj" | FileCheck %s --check-prefix=QV
// RUN: lora-opt %s --inject-lora | FileCheck %s --check-prefix=DEFAULT
// RUN: lora-opt %s --inject-lora="rank=4 alpha=8 targets=all-linear" | FileCheck %s --check-prefix=ALL
// RUN: lora-opt %s --inject-lora="rank=4 alpha=8 use-rslora=true targets=o_proj" | FileCheck %s --check-prefix=RSLORA
// RUN: lora-opt %s --inject-lora="rank=2 alpha=16 dropout=0.1 targets=mlp.down_proj,up_proj" | FileCheck %s --check-prefix=MLP

// QV-LABEL: func.func @forward
// QV: %[[X:.+]] = pl.rms_norm
// QV: %[[QW:.+]] = pl.param "model.layers.0.self_attn.q_proj.weight" {init = "normal(0.0,0.02)", pl.layer = 0 : i64} : tensor<32x32xf32>
// QV-NEXT: %[[QA:.+]] = pl.param "model.layers.0.self_attn.q_proj.lora_A.weight" {init = "kaiming_uniform(a=2.23606797749979)", pl.layer = 0 : i64, trainable} : tensor<4x32xf32>
// QV-NEXT: %[[QB:.+]] = pl.param "model.layers.0.self_attn.q_proj.lora_B.weight" {init = "zeros", pl.layer = 0 : i64, trainable} : tensor<32x4xf32>
// QV-NEXT: pl.lora_linear %[[X]], %[[QW]], %[[QA]], %[[QB]] {alpha = 8.000000e+00 : f64, module = "model.layers.0.self_attn.q_proj", pl.layer = 0 : i64, rank = 4 : i64, scaling = 2.000000e+00 : f64} : (tensor<2x8x32xf32>, tensor<32x32xf32>, tensor<4x32xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
// QV: pl.param "model.layers.0.self_attn.k_proj.weight"
// QV-NEXT: pl.linear
// QV: %[[VW:.+]] = pl.param "model.layers.0.self_attn.v_proj.weight" {{.*}} : tensor<16x32xf32>
// QV-NEXT: %[[VA:.+]] = pl.param "model.layers.0.self_attn.v_proj.lora_A.weight" {{.*}} : tensor<4x32xf32>
// QV-NEXT: %[[VB:.+]] = pl.param "model.layers.0.self_attn.v_proj.lora_B.weight" {{.*}} : tensor<16x4xf32>
// QV-NEXT: pl.lora_linear %[[X]], %[[VW]], %[[VA]], %[[VB]] {{{.*}}module = "model.layers.0.self_attn.v_proj", pl.layer = 0 : i64, rank = 4 : i64{{.*}}} : {{.*}} -> tensor<2x8x16xf32>
// QV-NOT: pl.lora_linear
// QV-NOT: trainable
// QV: return
// QV-LABEL: func.func @tied
// QV: pl.param "model.embed_tokens.weight" {pl.layer = -1 : i64} : tensor<128x32xf32>
// QV: pl.param "model.layers.3.self_attn.q_proj.weight" {pl.layer = 3 : i64} : tensor<32x32xf32>
// QV: pl.lora_linear {{.*}}module = "model.layers.3.self_attn.q_proj"
// QV: pl.lora_linear {{.*}}module = "model.layers.3.self_attn.v_proj"
// QV: pl.linear %{{.*}}, %{{.*}} {pl.layer = -1 : i64} : (tensor<2x8x32xf32>, tensor<128x32xf32>) -> tensor<2x8x128xf32>

// PEFT's LLaMA defaults: r=16, alpha=32, q_proj and v_proj.
// DEFAULT-LABEL: func.func @forward
// DEFAULT: pl.param "model.layers.0.self_attn.q_proj.lora_A.weight" {{.*}} : tensor<16x32xf32>
// DEFAULT: pl.param "model.layers.0.self_attn.q_proj.lora_B.weight" {{.*}} : tensor<32x16xf32>
// DEFAULT: pl.lora_linear {{.*}} {alpha = 3.200000e+01 : f64, module = "model.layers.0.self_attn.q_proj", pl.layer = 0 : i64, rank = 16 : i64, scaling = 2.000000e+00 : f64}
// DEFAULT: pl.lora_linear {{.*}}module = "model.layers.0.self_attn.v_proj"
// DEFAULT-NOT: pl.lora_linear
// DEFAULT: return

// all-linear: every linear of the decoder layers, never the LM head (tied or not).
// ALL-LABEL: func.func @forward
// ALL-COUNT-7: pl.lora_linear
// ALL-NOT: pl.lora_linear
// ALL: pl.param "lm_head.weight"
// ALL-NEXT: pl.linear
// ALL-LABEL: func.func @tied
// ALL-COUNT-2: pl.lora_linear
// ALL-NOT: pl.lora_linear
// ALL: pl.linear %{{.*}}, %{{.*}} {pl.layer = -1 : i64} : (tensor<2x8x32xf32>, tensor<128x32xf32>) -> tensor<2x8x128xf32>
// ALL: return

// rsLoRA: scaling = alpha / sqrt(rank) = 8 / 2.
// RSLORA-LABEL: func.func @forward
// RSLORA: pl.param "model.layers.0.self_attn.o_proj.lora_B.weight" {{.*}} : tensor<32x4xf32>
// RSLORA-NEXT: pl.lora_linear {{.*}} {alpha = 8.000000e+00 : f64, module = "model.layers.0.self_attn.o_proj", pl.layer = 0 : i64, rank = 4 : i64, scaling = 4.000000e+00 : f64}

// Dotted targets match the end of the module path; dropout is kept on the op.
// MLP-LABEL: func.func @forward
// MLP: pl.linear
// MLP: pl.param "model.layers.0.mlp.up_proj.lora_A.weight" {{.*}} : tensor<2x32xf32>
// MLP: pl.lora_linear {{.*}} {alpha = 1.600000e+01 : f64, dropout = 1.000000e-01 : f64, module = "model.layers.0.mlp.up_proj", pl.layer = 0 : i64, rank = 2 : i64, scaling = 8.000000e+00 : f64}
// MLP: pl.param "model.layers.0.mlp.down_proj.lora_A.weight" {{.*}} : tensor<2x64xf32>
// MLP-NEXT: pl.param "model.layers.0.mlp.down_proj.lora_B.weight" {{.*}} : tensor<32x2xf32>
// MLP-NEXT: pl.lora_linear {{.*}}module = "model.layers.0.mlp.down_proj"
// MLP-NOT: pl.lora_linear

module attributes {pl.model = {head_dim = 8 : i64, hidden_size = 32 : i64, intermediate_size = 64 : i64, max_position_embeddings = 256 : i64, num_attention_heads = 4 : i64, num_hidden_layers = 1 : i64, num_key_value_heads = 2 : i64, rms_norm_eps = 1.000000e-05 : f64, rope_theta = 5.000000e+05 : f64, tie_word_embeddings = false, vocab_size = 128 : i64}} {
  func.func @forward(%arg0: tensor<2x8xi64>) -> tensor<2x8x128xf32> {
    %0 = pl.param "model.embed_tokens.weight" {init = "normal(0.0,0.02)", pl.layer = -1 : i64} : tensor<128x32xf32>
    %1 = pl.embedding %arg0, %0 {pl.layer = -1 : i64} : (tensor<2x8xi64>, tensor<128x32xf32>) -> tensor<2x8x32xf32>
    %2 = pl.param "model.layers.0.input_layernorm.weight" {init = "ones", pl.layer = 0 : i64} : tensor<32xf32>
    %3 = pl.rms_norm %1, %2 {eps = 1.000000e-05 : f64, pl.layer = 0 : i64} : (tensor<2x8x32xf32>, tensor<32xf32>) -> tensor<2x8x32xf32>
    %4 = pl.param "model.layers.0.self_attn.q_proj.weight" {init = "normal(0.0,0.02)", pl.layer = 0 : i64} : tensor<32x32xf32>
    %5 = pl.linear %3, %4 {pl.layer = 0 : i64} : (tensor<2x8x32xf32>, tensor<32x32xf32>) -> tensor<2x8x32xf32>
    %6 = pl.reshape %5 {pl.layer = 0 : i64} : (tensor<2x8x32xf32>) -> tensor<2x8x4x8xf32>
    %7 = pl.transpose %6 {perm = array<i64: 0, 2, 1, 3>, pl.layer = 0 : i64} : (tensor<2x8x4x8xf32>) -> tensor<2x4x8x8xf32>
    %8 = pl.param "model.layers.0.self_attn.k_proj.weight" {init = "normal(0.0,0.02)", pl.layer = 0 : i64} : tensor<16x32xf32>
    %9 = pl.linear %3, %8 {pl.layer = 0 : i64} : (tensor<2x8x32xf32>, tensor<16x32xf32>) -> tensor<2x8x16xf32>
    %10 = pl.reshape %9 {pl.layer = 0 : i64} : (tensor<2x8x16xf32>) -> tensor<2x8x2x8xf32>
    %11 = pl.transpose %10 {perm = array<i64: 0, 2, 1, 3>, pl.layer = 0 : i64} : (tensor<2x8x2x8xf32>) -> tensor<2x2x8x8xf32>
    %12 = pl.param "model.layers.0.self_attn.v_proj.weight" {init = "normal(0.0,0.02)", pl.layer = 0 : i64} : tensor<16x32xf32>
    %13 = pl.linear %3, %12 {pl.layer = 0 : i64} : (tensor<2x8x32xf32>, tensor<16x32xf32>) -> tensor<2x8x16xf32>
    %14 = pl.reshape %13 {pl.layer = 0 : i64} : (tensor<2x8x16xf32>) -> tensor<2x8x2x8xf32>
    %15 = pl.transpose %14 {perm = array<i64: 0, 2, 1, 3>, pl.layer = 0 : i64} : (tensor<2x8x2x8xf32>) -> tensor<2x2x8x8xf32>
    %16 = pl.rope %7 {pl.layer = 0 : i64, theta = 5.000000e+05 : f64} : tensor<2x4x8x8xf32>
    %17 = pl.rope %11 {pl.layer = 0 : i64, theta = 5.000000e+05 : f64} : tensor<2x2x8x8xf32>
    %18 = pl.attention %16, %17, %15 {causal, pl.layer = 0 : i64, scale = 0.35355339059327373 : f64} : (tensor<2x4x8x8xf32>, tensor<2x2x8x8xf32>, tensor<2x2x8x8xf32>) -> tensor<2x4x8x8xf32>
    %19 = pl.transpose %18 {perm = array<i64: 0, 2, 1, 3>, pl.layer = 0 : i64} : (tensor<2x4x8x8xf32>) -> tensor<2x8x4x8xf32>
    %20 = pl.reshape %19 {pl.layer = 0 : i64} : (tensor<2x8x4x8xf32>) -> tensor<2x8x32xf32>
    %21 = pl.param "model.layers.0.self_attn.o_proj.weight" {init = "normal(0.0,0.02)", pl.layer = 0 : i64} : tensor<32x32xf32>
    %22 = pl.linear %20, %21 {pl.layer = 0 : i64} : (tensor<2x8x32xf32>, tensor<32x32xf32>) -> tensor<2x8x32xf32>
    %23 = pl.add %1, %22 {pl.layer = 0 : i64} : tensor<2x8x32xf32>
    %24 = pl.param "model.layers.0.post_attention_layernorm.weight" {init = "ones", pl.layer = 0 : i64} : tensor<32xf32>
    %25 = pl.rms_norm %23, %24 {eps = 1.000000e-05 : f64, pl.layer = 0 : i64} : (tensor<2x8x32xf32>, tensor<32xf32>) -> tensor<2x8x32xf32>
    %26 = pl.param "model.layers.0.mlp.gate_proj.weight" {init = "normal(0.0,0.02)", pl.layer = 0 : i64} : tensor<64x32xf32>
    %27 = pl.linear %25, %26 {pl.layer = 0 : i64} : (tensor<2x8x32xf32>, tensor<64x32xf32>) -> tensor<2x8x64xf32>
    %28 = pl.param "model.layers.0.mlp.up_proj.weight" {init = "normal(0.0,0.02)", pl.layer = 0 : i64} : tensor<64x32xf32>
    %29 = pl.linear %25, %28 {pl.layer = 0 : i64} : (tensor<2x8x32xf32>, tensor<64x32xf32>) -> tensor<2x8x64xf32>
    %30 = pl.swiglu %27, %29 {pl.layer = 0 : i64} : tensor<2x8x64xf32>
    %31 = pl.param "model.layers.0.mlp.down_proj.weight" {init = "normal(0.0,0.02)", pl.layer = 0 : i64} : tensor<32x64xf32>
    %32 = pl.linear %30, %31 {pl.layer = 0 : i64} : (tensor<2x8x64xf32>, tensor<32x64xf32>) -> tensor<2x8x32xf32>
    %33 = pl.add %23, %32 {pl.layer = 0 : i64} : tensor<2x8x32xf32>
    %34 = pl.param "model.norm.weight" {init = "ones", pl.layer = -1 : i64} : tensor<32xf32>
    %35 = pl.rms_norm %33, %34 {eps = 1.000000e-05 : f64, pl.layer = -1 : i64} : (tensor<2x8x32xf32>, tensor<32xf32>) -> tensor<2x8x32xf32>
    %36 = pl.param "lm_head.weight" {init = "normal(0.0,0.02)", pl.layer = -1 : i64} : tensor<128x32xf32>
    %37 = pl.linear %35, %36 {pl.layer = -1 : i64} : (tensor<2x8x32xf32>, tensor<128x32xf32>) -> tensor<2x8x128xf32>
    return %37 : tensor<2x8x128xf32>
  }

  // A tied LM head reads the embedding table; base weights lose `trainable`.
  func.func @tied(%ids: tensor<2x8xi64>, %h: tensor<2x8x32xf32>) -> tensor<2x8x128xf32> {
    %e = pl.param "model.embed_tokens.weight" {pl.layer = -1 : i64, trainable} : tensor<128x32xf32>
    %x = pl.embedding %ids, %e {pl.layer = -1 : i64} : (tensor<2x8xi64>, tensor<128x32xf32>) -> tensor<2x8x32xf32>
    %w = pl.param "model.layers.3.self_attn.q_proj.weight" {pl.layer = 3 : i64, trainable} : tensor<32x32xf32>
    %q = pl.linear %x, %w {pl.layer = 3 : i64} : (tensor<2x8x32xf32>, tensor<32x32xf32>) -> tensor<2x8x32xf32>
    %v = pl.param "model.layers.3.self_attn.v_proj.weight" {pl.layer = 3 : i64} : tensor<32x32xf32>
    %y = pl.linear %q, %v {pl.layer = 3 : i64} : (tensor<2x8x32xf32>, tensor<32x32xf32>) -> tensor<2x8x32xf32>
    %logits = pl.linear %y, %e {pl.layer = -1 : i64} : (tensor<2x8x32xf32>, tensor<128x32xf32>) -> tensor<2x8x128xf32>
    return %logits : tensor<2x8x128xf32>
  }
}
