// RUN: lora-opt %s -split-input-file -verify-diagnostics

func.func @embedding_table_rank(%ids: tensor<2x8xi64>, %e: tensor<256xf32>) -> tensor<2x8x64xf32> {
  // expected-error @+1 {{table must be (vocab, hidden), got rank 1}}
  %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<256xf32>) -> tensor<2x8x64xf32>
  return %h : tensor<2x8x64xf32>
}

// -----

func.func @embedding_hidden(%ids: tensor<2x8xi64>, %e: tensor<256x64xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{result hidden size 32 does not match table hidden size 64}}
  %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<256x64xf32>) -> tensor<2x8x32xf32>
  return %h : tensor<2x8x32xf32>
}

// -----

func.func @embedding_rank(%ids: tensor<2x8xi64>, %e: tensor<256x64xf32>) -> tensor<2x64xf32> {
  // expected-error @+1 {{result rank 2 must be ids rank 2 + 1}}
  %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<256x64xf32>) -> tensor<2x64xf32>
  return %h : tensor<2x64xf32>
}

// -----

func.func @norm_weight(%x: tensor<2x8x64xf32>, %g: tensor<32xf32>) -> tensor<2x8x64xf32> {
  // expected-error @+1 {{weight size 32 does not match the input's last dim 64}}
  %n = pl.rms_norm %x, %g {eps = 1.0e-5 : f64} : (tensor<2x8x64xf32>, tensor<32xf32>) -> tensor<2x8x64xf32>
  return %n : tensor<2x8x64xf32>
}

// -----

func.func @norm_eps(%x: tensor<2x8x64xf32>, %g: tensor<64xf32>) -> tensor<2x8x64xf32> {
  // expected-error @+1 {{eps must be > 0}}
  %n = pl.rms_norm %x, %g {eps = 0.0 : f64} : (tensor<2x8x64xf32>, tensor<64xf32>) -> tensor<2x8x64xf32>
  return %n : tensor<2x8x64xf32>
}

// -----

func.func @linear_in(%x: tensor<2x8x64xf32>, %w: tensor<128x32xf32>) -> tensor<2x8x128xf32> {
  // expected-error @+1 {{input feature dim 64 does not match weight in-features 32 (weight is 128x32)}}
  %y = pl.linear %x, %w : (tensor<2x8x64xf32>, tensor<128x32xf32>) -> tensor<2x8x128xf32>
  return %y : tensor<2x8x128xf32>
}

// -----

func.func @linear_out(%x: tensor<2x8x64xf32>, %w: tensor<128x64xf32>) -> tensor<2x8x100xf32> {
  // expected-error @+1 {{result features 100 do not match weight out-features 128}}
  %y = pl.linear %x, %w : (tensor<2x8x64xf32>, tensor<128x64xf32>) -> tensor<2x8x100xf32>
  return %y : tensor<2x8x100xf32>
}

// -----

func.func @linear_bias(%x: tensor<2x8x64xf32>, %w: tensor<128x64xf32>, %b: tensor<64xf32>) -> tensor<2x8x128xf32> {
  // expected-error @+1 {{bias must be (128), got 64}}
  %y = pl.linear %x, %w, %b : (tensor<2x8x64xf32>, tensor<128x64xf32>, tensor<64xf32>) -> tensor<2x8x128xf32>
  return %y : tensor<2x8x128xf32>
}

// -----

func.func @lora_rank(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{rank attribute 8 does not match lora_a 4x64 / lora_b 32x4}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 8 : i64, alpha = 16.0 : f64, scaling = 2.0 : f64, module = "m"} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_a_in(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x32xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{lora_a in-features 32 do not match weight in-features 64}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 2.0 : f64, module = "m"} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x32xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_b_out(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64xf32>, %b: tensor<16x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{lora_b out-features 16 do not match weight out-features 32}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 2.0 : f64, module = "m"} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<16x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_dropout(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{dropout must be in [0, 1), got 1}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 2.0 : f64, dropout = 1.0 : f64, module = "m"} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_scaling(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{scaling must be > 0}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 0.0 : f64, module = "m"} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_module(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{needs the module path it adapts}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 2.0 : f64, module = ""} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @matmul_k(%a: tensor<2x8x16xf32>, %b: tensor<2x8x16xf32>) -> tensor<2x8x16xf32> {
  // expected-error @+1 {{contraction dims differ: 16 vs 8}}
  %m = pl.matmul %a, %b : (tensor<2x8x16xf32>, tensor<2x8x16xf32>) -> tensor<2x8x16xf32>
  return %m : tensor<2x8x16xf32>
}

// -----

func.func @matmul_batch(%a: tensor<2x8x16xf32>, %b: tensor<3x16x8xf32>) -> tensor<2x8x8xf32> {
  // expected-error @+1 {{batch dim 0 differs: 2 vs 3}}
  %m = pl.matmul %a, %b : (tensor<2x8x16xf32>, tensor<3x16x8xf32>) -> tensor<2x8x8xf32>
  return %m : tensor<2x8x8xf32>
}

// -----

func.func @matmul_result(%a: tensor<2x8x16xf32>, %b: tensor<2x16x4xf32>) -> tensor<2x8x8xf32> {
  // expected-error @+1 {{result must be 8x4 in its last dims, got 2x8x8}}
  %m = pl.matmul %a, %b : (tensor<2x8x16xf32>, tensor<2x16x4xf32>) -> tensor<2x8x8xf32>
  return %m : tensor<2x8x8xf32>
}

// -----

func.func @matmul_rank(%a: tensor<8xf32>, %b: tensor<8xf32>) -> tensor<8xf32> {
  // expected-error @+1 {{operands and result must have the same rank >= 2}}
  %m = pl.matmul %a, %b : (tensor<8xf32>, tensor<8xf32>) -> tensor<8xf32>
  return %m : tensor<8xf32>
}
