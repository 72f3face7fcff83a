// Input --append-loss refuses: each error names what it expected and what it got.
// RUN: lora-opt %s -split-input-file -verify-diagnostics --append-loss

// No @forward (here: the loss was already appended).
// expected-error @+1 {{append-loss: the module has no func @forward (the model's forward pass)}}
module {
  func.func @train_step(%ids: tensor<2x8xi64>) -> tensor<2x8x64xf32> {
    %e = pl.param "model.embed_tokens.weight" : tensor<64x16xf32>
    %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<64x16xf32>) -> tensor<2x8x16xf32>
    %w = pl.param "lm_head.weight" : tensor<64x16xf32>
    %l = pl.linear %h, %w : (tensor<2x8x16xf32>, tensor<64x16xf32>) -> tensor<2x8x64xf32>
    return %l : tensor<2x8x64xf32>
  }
}

// -----

// A forward that returns hidden states (B, T, D) flattened to 2-D, not logits (B, T, V).
// expected-error @+1 {{append-loss: @forward must map input_ids (B, T) to logits (B, T, V), got '(tensor<2x8xi64>) -> tensor<16x16xf32>'}}
func.func @forward(%ids: tensor<2x8xi64>) -> tensor<16x16xf32> {
  %e = pl.param "model.embed_tokens.weight" : tensor<64x16xf32>
  %h = pl.embedding %ids, %e : (tensor<2x8xi64>, tensor<64x16xf32>) -> tensor<2x8x16xf32>
  %r = pl.reshape %h : (tensor<2x8x16xf32>) -> tensor<16x16xf32>
  return %r : tensor<16x16xf32>
}

// -----

// An ONNX export with symbolic batch and sequence dims that were never fixed.
// expected-error @+1 {{append-loss: input_ids has dynamic dims 'tensor<?x?xi64>'; fix the batch and sequence length first (lora-compile --batch/--seq-len)}}
func.func @forward(%ids: tensor<?x?xi64>) -> tensor<?x?x64xf32> {
  %e = pl.param "model.embed_tokens.weight" : tensor<64x16xf32>
  %h = pl.embedding %ids, %e : (tensor<?x?xi64>, tensor<64x16xf32>) -> tensor<?x?x16xf32>
  %w = pl.param "lm_head.weight" : tensor<64x16xf32>
  %l = pl.linear %h, %w : (tensor<?x?x16xf32>, tensor<64x16xf32>) -> tensor<?x?x64xf32>
  return %l : tensor<?x?x64xf32>
}
