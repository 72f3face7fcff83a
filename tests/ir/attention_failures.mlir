// RUN: lora-opt %s -split-input-file -verify-diagnostics

func.func @rope_rank(%x: tensor<2x16x64xf32>) -> tensor<2x16x64xf32> {
  // expected-error @+1 {{input must be (batch, heads, seq, head_dim), got 2x16x64}}
  %r = pl.rope %x {theta = 10000.0 : f64} : tensor<2x16x64xf32>
  return %r : tensor<2x16x64xf32>
}

// -----

func.func @rope_odd(%x: tensor<2x4x16x15xf32>) -> tensor<2x4x16x15xf32> {
  // expected-error @+1 {{head_dim must be even, got 15}}
  %r = pl.rope %x {theta = 10000.0 : f64} : tensor<2x4x16x15xf32>
  return %r : tensor<2x4x16x15xf32>
}

// -----

func.func @rope_theta(%x: tensor<2x4x16x16xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{theta must be > 0}}
  %r = pl.rope %x {theta = 0.0 : f64} : tensor<2x4x16x16xf32>
  return %r : tensor<2x4x16x16xf32>
}

// -----

func.func @rope_scaling(%x: tensor<2x4x16x16xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{rope_scaling needs a numeric 'low_freq_factor' entry}}
  %r = pl.rope %x {theta = 10000.0 : f64, rope_scaling = {factor = 8.0 : f64}} : tensor<2x4x16x16xf32>
  return %r : tensor<2x4x16x16xf32>
}

// -----

func.func @gqa_heads(%q: tensor<2x6x16x16xf32>, %k: tensor<2x4x16x16xf32>) -> tensor<2x6x16x16xf32> {
  // expected-error @+1 {{query heads 6 are not a multiple of key/value heads 4}}
  %a = pl.attention %q, %k, %k {causal, scale = 0.25 : f64} : (tensor<2x6x16x16xf32>, tensor<2x4x16x16xf32>, tensor<2x4x16x16xf32>) -> tensor<2x6x16x16xf32>
  return %a : tensor<2x6x16x16xf32>
}

// -----

func.func @head_dim(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x16x8xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{query head_dim 16 differs from key head_dim 8}}
  %a = pl.attention %q, %k, %k {scale = 0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x8xf32>, tensor<2x2x16x8xf32>) -> tensor<2x4x16x16xf32>
  return %a : tensor<2x4x16x16xf32>
}

// -----

func.func @kv_differ(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x16x16xf32>, %v: tensor<2x2x8x16xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{key 2x2x16x16 and value 2x2x8x16 differ}}
  %a = pl.attention %q, %k, %v {scale = 0.25 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x8x16xf32>) -> tensor<2x4x16x16xf32>
  return %a : tensor<2x4x16x16xf32>
}

// -----

func.func @scale(%q: tensor<2x4x16x16xf32>, %k: tensor<2x2x16x16xf32>) -> tensor<2x4x16x16xf32> {
  // expected-error @+1 {{scale must be > 0}}
  %a = pl.attention %q, %k, %k {scale = 0.0 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>) -> tensor<2x4x16x16xf32>
  return %a : tensor<2x4x16x16xf32>
}

// -----

func.func @softmax_axis(%x: tensor<2x4xf32>) -> tensor<2x4xf32> {
  // expected-error @+1 {{axis 2 is out of range for rank 2}}
  %s = pl.softmax %x {axis = 2 : i64} : tensor<2x4xf32>
  return %s : tensor<2x4xf32>
}
