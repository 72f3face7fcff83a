// RUN: lora-opt %s -split-input-file -verify-diagnostics
// Verifier errors of pl.embedding, pl.rms_norm, pl.linear, pl.lora_linear and pl.matmul.

func.func @embedding_table_rank(%ids: tensor<2x8xi64>, %e: tensor<256xf32>) -> tensor<2x8x64xf32> {
  // expected-error @+1 {{'pl.embedding' op table must be (vocab, hidden), got 256}}
  %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<256xf32>) -> tensor<2x8x64xf32>
  return %h : tensor<2x8x64xf32>
}

// -----

func.func @embedding_rank(%ids: tensor<2x8xi64>, %e: tensor<256x64xf32>) -> tensor<2x64xf32> {
  // expected-error @+1 {{'pl.embedding' op result rank 2 must be ids rank 2 + 1 (ids are 2x8, result is 2x64)}}
  %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<256x64xf32>) -> tensor<2x64xf32>
  return %h : tensor<2x64xf32>
}

// -----

func.func @embedding_seq(%ids: tensor<2x8xi64>, %e: tensor<256x64xf32>) -> tensor<2x4x64xf32> {
  // expected-error @+1 {{'pl.embedding' op result dim 1 is 4 but ids dim 1 is 8}}
  %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<256x64xf32>) -> tensor<2x4x64xf32>
  return %h : tensor<2x4x64xf32>
}

// -----

func.func @embedding_hidden(%ids: tensor<2x8xi64>, %e: tensor<256x64xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{'pl.embedding' op result hidden size 32 does not match table hidden size 64 (table is 256x64)}}
  %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<256x64xf32>) -> tensor<2x8x32xf32>
  return %h : tensor<2x8x32xf32>
}

// -----

func.func @embedding_element_type(%ids: tensor<2x8xi64>, %e: tensor<256x64xf32>) -> tensor<2x8x64xf16> {
  // expected-error @+1 {{'pl.embedding' op result element type 'f16' differs from the table's 'f32'}}
  %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<256x64xf32>) -> tensor<2x8x64xf16>
  return %h : tensor<2x8x64xf16>
}

// -----

func.func @embedding_float_ids(%ids: tensor<2x8xf32>, %e: tensor<256x64xf32>) -> tensor<2x8x64xf32> {
  // expected-error @+1 {{'pl.embedding' op operand #0 must be ranked tensor of signless integer values}}
  %h = pl.embedding %ids, %e : (tensor<2x8xf32>, tensor<256x64xf32>) -> tensor<2x8x64xf32>
  return %h : tensor<2x8x64xf32>
}

// -----

func.func @norm_scalar(%x: tensor<f32>, %g: tensor<1xf32>) -> tensor<f32> {
  // expected-error @+1 {{'pl.rms_norm' op input must have rank >= 1, got a 0-d tensor}}
  %n = pl.rms_norm %x, %g {eps = 1.0e-5 : f64} : (tensor<f32>, tensor<1xf32>) -> tensor<f32>
  return %n : tensor<f32>
}

// -----

func.func @norm_weight_rank(%x: tensor<2x8x64xf32>, %g: tensor<8x64xf32>) -> tensor<2x8x64xf32> {
  // expected-error @+1 {{'pl.rms_norm' op weight must be rank 1, got 8x64}}
  %n = pl.rms_norm %x, %g {eps = 1.0e-5 : f64} : (tensor<2x8x64xf32>, tensor<8x64xf32>) -> tensor<2x8x64xf32>
  return %n : tensor<2x8x64xf32>
}

// -----

func.func @norm_weight(%x: tensor<2x8x64xf32>, %g: tensor<32xf32>) -> tensor<2x8x64xf32> {
  // expected-error @+1 {{'pl.rms_norm' op weight size 32 does not match the input's last dim 64 (input is 2x8x64)}}
  %n = pl.rms_norm %x, %g {eps = 1.0e-5 : f64} : (tensor<2x8x64xf32>, tensor<32xf32>) -> tensor<2x8x64xf32>
  return %n : tensor<2x8x64xf32>
}

// -----

func.func @norm_result(%x: tensor<2x8x64xf32>, %g: tensor<64xf32>) -> tensor<2x8x64xf16> {
  // expected-error @+1 {{'pl.rms_norm' op result type 'tensor<2x8x64xf16>' must equal the input type 'tensor<2x8x64xf32>'}}
  %n = pl.rms_norm %x, %g {eps = 1.0e-5 : f64} : (tensor<2x8x64xf32>, tensor<64xf32>) -> tensor<2x8x64xf16>
  return %n : tensor<2x8x64xf16>
}

// -----

func.func @norm_eps(%x: tensor<2x8x64xf32>, %g: tensor<64xf32>) -> tensor<2x8x64xf32> {
  // expected-error @+1 {{'pl.rms_norm' op eps must be > 0, got -1}}
  %n = pl.rms_norm %x, %g {eps = -1.0 : f64} : (tensor<2x8x64xf32>, tensor<64xf32>) -> tensor<2x8x64xf32>
  return %n : tensor<2x8x64xf32>
}

// -----

func.func @linear_weight_rank(%x: tensor<2x8x64xf32>, %w: tensor<64xf32>) -> tensor<2x8x64xf32> {
  // expected-error @+1 {{'pl.linear' op weight must be (out, in), got 64}}
  %y = pl.linear %x, %w : (tensor<2x8x64xf32>, tensor<64xf32>) -> tensor<2x8x64xf32>
  return %y : tensor<2x8x64xf32>
}

// -----

func.func @linear_scalar_input(%x: tensor<f32>, %w: tensor<4x1xf32>) -> tensor<4xf32> {
  // expected-error @+1 {{'pl.linear' op input must have rank >= 1, got a 0-d tensor}}
  %y = pl.linear %x, %w : (tensor<f32>, tensor<4x1xf32>) -> tensor<4xf32>
  return %y : tensor<4xf32>
}

// -----

func.func @linear_in(%x: tensor<2x8x64xf32>, %w: tensor<128x32xf32>) -> tensor<2x8x128xf32> {
  // expected-error @+1 {{'pl.linear' op input feature dim 64 does not match weight in-features 32 (weight is 128x32)}}
  %y = pl.linear %x, %w : (tensor<2x8x64xf32>, tensor<128x32xf32>) -> tensor<2x8x128xf32>
  return %y : tensor<2x8x128xf32>
}

// -----

func.func @linear_result_rank(%x: tensor<2x8x64xf32>, %w: tensor<128x64xf32>) -> tensor<16x128xf32> {
  // expected-error @+1 {{'pl.linear' op result rank 2 differs from input rank 3 (input is 2x8x64, result is 16x128)}}
  %y = pl.linear %x, %w : (tensor<2x8x64xf32>, tensor<128x64xf32>) -> tensor<16x128xf32>
  return %y : tensor<16x128xf32>
}

// -----

func.func @linear_leading(%x: tensor<2x8x64xf32>, %w: tensor<128x64xf32>) -> tensor<2x4x128xf32> {
  // expected-error @+1 {{'pl.linear' op result dim 1 is 4 but input dim 1 is 8}}
  %y = pl.linear %x, %w : (tensor<2x8x64xf32>, tensor<128x64xf32>) -> tensor<2x4x128xf32>
  return %y : tensor<2x4x128xf32>
}

// -----

func.func @linear_out(%x: tensor<2x8x64xf32>, %w: tensor<128x64xf32>) -> tensor<2x8x100xf32> {
  // expected-error @+1 {{'pl.linear' op result features 100 do not match weight out-features 128 (weight is 128x64)}}
  %y = pl.linear %x, %w : (tensor<2x8x64xf32>, tensor<128x64xf32>) -> tensor<2x8x100xf32>
  return %y : tensor<2x8x100xf32>
}

// -----

func.func @linear_bias(%x: tensor<2x8x64xf32>, %w: tensor<128x64xf32>, %b: tensor<64xf32>) -> tensor<2x8x128xf32> {
  // expected-error @+1 {{'pl.linear' op bias must be (128), got 64}}
  %y = pl.linear %x, %w, %b : (tensor<2x8x64xf32>, tensor<128x64xf32>, tensor<64xf32>) -> tensor<2x8x128xf32>
  return %y : tensor<2x8x128xf32>
}

// -----

func.func @lora_in(%x: tensor<2x8x32xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // The base-layer checks are shared with pl.linear.
  // expected-error @+1 {{'pl.lora_linear' op input feature dim 32 does not match weight in-features 64 (weight is 32x64)}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 2.0 : f64, module = "m"} : (tensor<2x8x32xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_rank_zero(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{'pl.lora_linear' op rank must be > 0, got 0}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 0 : i64, alpha = 8.0 : f64, scaling = 2.0 : f64, module = "m"} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_adapter_rank(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64x1xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{'pl.lora_linear' op lora_a and lora_b must be rank 2, got 4x64x1 and 32x4}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 2.0 : f64, module = "m"} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x64x1xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_rank(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{'pl.lora_linear' op rank attribute 8 does not match lora_a 4x64 / lora_b 32x4}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 8 : i64, alpha = 16.0 : f64, scaling = 2.0 : f64, module = "m"} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_a_in(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x32xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{'pl.lora_linear' op lora_a in-features 32 do not match weight in-features 64 (weight is 32x64)}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 2.0 : f64, module = "m"} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x32xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_b_out(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64xf32>, %b: tensor<16x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{'pl.lora_linear' op lora_b out-features 16 do not match weight out-features 32 (weight is 32x64)}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 2.0 : f64, module = "m"} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<16x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_scaling(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{'pl.lora_linear' op scaling must be > 0, got 0}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 0.0 : f64, module = "m"} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_dropout(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{'pl.lora_linear' op dropout must be in [0, 1), got 1}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 2.0 : f64, dropout = 1.0 : f64, module = "m"} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_dropout_negative(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{'pl.lora_linear' op dropout must be in [0, 1), got -0.1}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 2.0 : f64, dropout = -0.1 : f64, module = "m"} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @lora_module(%x: tensor<2x8x64xf32>, %w: tensor<32x64xf32>, %a: tensor<4x64xf32>, %b: tensor<32x4xf32>) -> tensor<2x8x32xf32> {
  // expected-error @+1 {{'pl.lora_linear' op needs the module path it adapts (attribute 'module' is empty)}}
  %l = pl.lora_linear %x, %w, %a, %b {rank = 4 : i64, alpha = 8.0 : f64, scaling = 2.0 : f64, module = ""} : (tensor<2x8x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x4xf32>) -> tensor<2x8x32xf32>
  return %l : tensor<2x8x32xf32>
}

// -----

func.func @matmul_rank(%a: tensor<8xf32>, %b: tensor<8xf32>) -> tensor<8xf32> {
  // expected-error @+1 {{'pl.matmul' op operands and result must have the same rank >= 2, got 8, 8 -> 8}}
  %m = pl.matmul %a, %b : (tensor<8xf32>, tensor<8xf32>) -> tensor<8xf32>
  return %m : tensor<8xf32>
}

// -----

func.func @matmul_batch(%a: tensor<2x8x16xf32>, %b: tensor<3x16x8xf32>) -> tensor<2x8x8xf32> {
  // expected-error @+1 {{'pl.matmul' op batch dim 0 differs: lhs 2 vs rhs 3}}
  %m = pl.matmul %a, %b : (tensor<2x8x16xf32>, tensor<3x16x8xf32>) -> tensor<2x8x8xf32>
  return %m : tensor<2x8x8xf32>
}

// -----

func.func @matmul_result_batch(%a: tensor<2x8x16xf32>, %b: tensor<2x16x8xf32>) -> tensor<3x8x8xf32> {
  // expected-error @+1 {{'pl.matmul' op result batch dim 0 is 3 but operand batch dim is 2}}
  %m = pl.matmul %a, %b : (tensor<2x8x16xf32>, tensor<2x16x8xf32>) -> tensor<3x8x8xf32>
  return %m : tensor<3x8x8xf32>
}

// -----

func.func @matmul_k(%a: tensor<2x8x16xf32>, %b: tensor<2x8x16xf32>) -> tensor<2x8x16xf32> {
  // expected-error @+1 {{'pl.matmul' op contraction dims differ: lhs 16 vs rhs 8 (lhs 2x8x16, rhs 2x8x16)}}
  %m = pl.matmul %a, %b : (tensor<2x8x16xf32>, tensor<2x8x16xf32>) -> tensor<2x8x16xf32>
  return %m : tensor<2x8x16xf32>
}

// -----

func.func @matmul_k_transposed(%a: tensor<2x8x16xf32>, %b: tensor<2x4x8xf32>) -> tensor<2x8x4xf32> {
  // transpose_rhs makes op(rhs) 8x4, so K is 16 on the lhs and 8 on the rhs.
  // expected-error @+1 {{'pl.matmul' op contraction dims differ: lhs 16 vs rhs 8 (lhs 2x8x16, rhs 2x4x8 transposed)}}
  %m = pl.matmul %a, %b {transpose_rhs = true} : (tensor<2x8x16xf32>, tensor<2x4x8xf32>) -> tensor<2x8x4xf32>
  return %m : tensor<2x8x4xf32>
}

// -----

func.func @matmul_result(%a: tensor<2x8x16xf32>, %b: tensor<2x16x4xf32>) -> tensor<2x8x8xf32> {
  // expected-error @+1 {{'pl.matmul' op result must be 8x4 in its last dims, got 2x8x8}}
  %m = pl.matmul %a, %b : (tensor<2x8x16xf32>, tensor<2x16x4xf32>) -> tensor<2x8x8xf32>
  return %m : tensor<2x8x8xf32>
}
