// RUN: lora-opt %s -split-input-file -verify-diagnostics
// Verifier errors of pl.rope, pl.attention and pl.softmax.

func.func @rope_rank(%x: tensor<2x16x64xf32>) -> tensor<2x16x64xf32> {
  // expected-error @+1 {{'pl.rope' op input must be (batch, heads, seq, head_dim), got 2x16x64}}
  %r = pl.rope %x {theta = 10000.0 : f64} : tensor<2x16x64xf32>
  return %r : tensor<2x16x64xf32>
}

// -----

func.func @rope_odd(%x: tensor<2x4x16x15xf32>) -> tensor<2x4x16x15xf32> {
  // expected-error @+1 {{'pl.rope' op head_dim must be even, got 15}}
  %r = pl.rope %x {theta = 10000.0 : f64} : tensor<2x4x16x15xf32>
  return %r : tensor<2x4x16x15xf32>
}

// -----

func.func @rope_theta(%x: tensor<2x4x16x16xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.rope' op theta must be > 0, got 0}}
  %r = pl.rope %x {theta = 0.0 : f64} : tensor<2x4x16x16xf32>
  return %r : tensor<2x4x16x16xf32>
}

// -----

func.func @rope_scaling_missing(%x: tensor<2x4x16x16xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.rope' op rope_scaling needs an f64 or i64 'low_freq_factor' entry, it has none}}
  %r = pl.rope %x {theta = 10000.0 : f64, rope_scaling = {factor = 8.0 : f64}} : tensor<2x4x16x16xf32>
  return %r : tensor<2x4x16x16xf32>
}

// -----

func.func @rope_scaling_type(%x: tensor<2x4x16x16xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.rope' op rope_scaling needs an f64 or i64 'factor' entry, got "8"}}
  %r = pl.rope %x {theta = 10000.0 : f64, rope_scaling = {factor = "8", low_freq_factor = 1.0 : f64, high_freq_factor = 4.0 : f64, original_max_position_embeddings = 8192 : i64}} : tensor<2x4x16x16xf32>
  return %r : tensor<2x4x16x16xf32>
}

// -----

func.func @rope_scaling_width(%x: tensor<2x4x16x16xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.rope' op rope_scaling needs an f64 or i64 'original_max_position_embeddings' entry, got 8192 : i32}}
  %r = pl.rope %x {theta = 10000.0 : f64, rope_scaling = {factor = 8.0 : f64, low_freq_factor = 1.0 : f64, high_freq_factor = 4.0 : f64, original_max_position_embeddings = 8192 : i32}} : tensor<2x4x16x16xf32>
  return %r : tensor<2x4x16x16xf32>
}

// -----

func.func @rope_result(%x: tensor<2x4x16x16xf32>) -> tensor<2x4x16x16xf16> {
  // expected-error @+1 {{'pl.rope' op failed to verify that all of {input, result} have same type}}
  %r = "pl.rope"(%x) {theta = 10000.0 : f64} : (tensor<2x4x16x16xf32>) -> tensor<2x4x16x16xf16>
  return %r : tensor<2x4x16x16xf16>
}

// -----

func.func @attention_rank(%q: tensor<2x16x64xf32>, %k: tensor<2x2x16x16xf32>) -> tensor<2x16x64xf32> {
  // expected-error @+1 {{'pl.attention' op query, key and value must be (batch, heads, seq, head_dim), got 2x16x64, 2x2x16x16, 2x2x16x16}}
  %a = pl.attention %q, %k, %k {scale = 0.25 : f64} : (tensor<2x16x64xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>) -> tensor<2x16x64xf32>
  return %a : tensor<2x16x64xf32>
}

// -----

func.func @kv_differ(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x16x16xf32>, %v: tensor<2x2x8x16xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.attention' op key 2x2x16x16 and value 2x2x8x16 differ}}
  %a = pl.attention %q, %k, %v {scale = 0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x8x16xf32>) -> tensor<2x4x16x16xf32>
  return %a : tensor<2x4x16x16xf32>
}

// -----

func.func @attention_batch(%q: tensor<3x4x16x16xf32>, %k: tensor<2x2x16x16xf32>) -> tensor<3x4x16x16xf32> {
  // expected-error @+1 {{'pl.attention' op query batch 3 differs from key/value batch 2}}
  %a = pl.attention %q, %k, %k {scale = 0.25 : f64} : (tensor<3x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>) -> tensor<3x4x16x16xf32>
  return %a : tensor<3x4x16x16xf32>
}

// -----

func.func @gqa_heads(%q: tensor<2x6x16x16xf32>, %k: tensor<2x4x16x16xf32>) -> tensor<2x6x16x16xf32> {
  // expected-error @+1 {{'pl.attention' op query heads 6 are not a multiple of key/value heads 4}}
  %a = pl.attention %q, %k, %k {causal, scale = 0.25 : f64} : (tensor<2x6x16x16xf32>, tensor<2x4x16x16xf32>, tensor<2x4x16x16xf32>) -> tensor<2x6x16x16xf32>
  return %a : tensor<2x6x16x16xf32>
}

// -----

func.func @head_dim(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x16x8xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.attention' op query head_dim 16 differs from key/value head_dim 8}}
  %a = pl.attention %q, %k, %k {scale = 0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x8xf32>, tensor<2x2x16x8xf32>) -> tensor<2x4x16x16xf32>
  return %a : tensor<2x4x16x16xf32>
}

// -----

func.func @attention_result(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x8x16xf32>) -> tensor<2x4x8x16xf32> {
  // expected-error @+1 {{'pl.attention' op result type 'tensor<2x4x8x16xf32>' must equal the query type 'tensor<2x4x16x16xf32>'}}
  %a = pl.attention %q, %k, %k {scale = 0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x8x16xf32>, tensor<2x2x8x16xf32>) -> tensor<2x4x8x16xf32>
  return %a : tensor<2x4x8x16xf32>
}

// -----

func.func @scale(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x16x16xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{'pl.attention' op scale must be > 0, got -0.25}}
  %a = pl.attention %q, %k, %k {scale = -0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>) -> tensor<2x4x16x16xf32>
  return %a : tensor<2x4x16x16xf32>
}

// -----

func.func @softmax_axis(%x: tensor<2x4xf32>) -> tensor<2x4xf32> {
  // expected-error @+1 {{'pl.softmax' op axis 2 is out of range [-2, 2) for rank 2}}
  %s = pl.softmax %x {axis = 2 : i64} : tensor<2x4xf32>
  return %s : tensor<2x4xf32>
}

// -----

func.func @softmax_negative_axis(%x: tensor<2x4xf32>) -> tensor<2x4xf32> {
  // expected-error @+1 {{'pl.softmax' op axis -3 is out of range [-2, 2) for rank 2}}
  %s = pl.softmax %x {axis = -3 : i64} : tensor<2x4xf32>
  return %s : tensor<2x4xf32>
}
