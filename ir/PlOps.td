//===- PlOps.td - Parallora training-graph ops --------------*- tablegen -*-===//
//
// Shapes follow Hugging Face's LlamaForCausalLM: hidden states are (B, T, D); attention
// works on (B, H, T, Dh) after the model's own transpose; linear weights are (out, in).
//
//===----------------------------------------------------------------------===//
#ifndef PARALLORA_PL_OPS
#define PARALLORA_PL_OPS

include "ir/PlDialect.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "mlir/Interfaces/InferTypeOpInterface.td"
include "mlir/IR/BuiltinAttributeInterfaces.td"

def Pl_Tensor : RankedTensorOf<[AnyFloat, AnySignlessInteger, I1]>;
def Pl_FloatTensor : RankedTensorOf<[AnyFloat]>;
def Pl_IntTensor : RankedTensorOf<[AnySignlessInteger]>;

//===----------------------------------------------------------------------===//
// Values
//===----------------------------------------------------------------------===//

def Pl_ParamOp : Pl_Op<"param", [Pure]> {
  let summary = "a named model parameter, frozen or trainable";
  let description = [{
    A model weight identified by its Hugging Face parameter name. `trainable` marks the
    parameters the optimizer updates (LoRA adapters); the others are frozen. `init` says how
    the runtime fills the tensor: `"normal(0.0,0.02)"`, `"ones"`, `"zeros"`,
    `"kaiming_uniform(a=2.23606797749979)"` or `"checkpoint"` (loaded from safetensors).
    The result must be a statically shaped float tensor.

    ```mlir
    %a = pl.param "model.layers.0.self_attn.q_proj.lora_A.weight" {init = "kaiming_uniform(a=2.23606797749979)", trainable} : tensor<8x2048xf32>
    ```
  }];
  let arguments = (ins StrAttr:$name, UnitAttr:$trainable, OptionalAttr<StrAttr>:$init);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$name attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Pl_ConstantOp : Pl_Op<"constant", [Pure, ConstantLike]> {
  let summary = "a constant tensor";
  let description = [{
    A constant tensor; `value` (an elements attribute) must have exactly the result type.

    ```mlir
    %c = pl.constant dense<[1, 2]> : tensor<2xi64> : tensor<2xi64>
    ```
  }];
  let arguments = (ins ElementsAttr:$value);
  let results = (outs Pl_Tensor:$result);
  let assemblyFormat = "attr-dict $value `:` type($result)";
  let hasFolder = 1;
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// LLaMA blocks
//===----------------------------------------------------------------------===//

def Pl_EmbeddingOp : Pl_Op<"embedding", [Pure]> {
  let summary = "token embedding lookup: table[ids]";
  let description = [{
    Gathers rows of `table` (V, D) at the integer `ids` (B, T); the result is (B, T, D) with
    the table's element type. B and T may be dynamic.

    ```mlir
    %h = pl.embedding %ids, %table : (tensor<2x?xi64>, tensor<128256x2048xf32>) -> tensor<2x?x2048xf32>
    ```
  }];
  let arguments = (ins Pl_IntTensor:$ids, Pl_FloatTensor:$table);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$ids `,` $table attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_RMSNormOp : Pl_Op<"rms_norm", [Pure]> {
  let summary = "LLaMA RMSNorm over the last dim: x * rsqrt(mean(x^2) + eps) * weight";
  let description = [{
    Normalizes over the last dim D: `x * rsqrt(mean(x^2, -1) + eps) * weight`. `weight` is
    (D); the result has the input's type; `eps` > 0.

    ```mlir
    %n = pl.rms_norm %x, %g {eps = 1.000000e-05 : f64} : (tensor<2x?x2048xf32>, tensor<2048xf32>) -> tensor<2x?x2048xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$input, Pl_FloatTensor:$weight, F64Attr:$eps);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$input `,` $weight attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_LinearOp : Pl_Op<"linear", [Pure]> {
  let summary = "y = x W^T (+ b), W is (out, in) as in torch.nn.Linear";
  let description = [{
    `input` is (..., K), `weight` is (N, K) as `torch.nn.Linear` stores it, the optional
    `bias` is (N); the result is (..., N) with the input's leading dims.

    ```mlir
    %y = pl.linear %x, %w : (tensor<2x?x2048xf32>, tensor<512x2048xf32>) -> tensor<2x?x512xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$input, Pl_FloatTensor:$weight,
                       Optional<Pl_FloatTensor>:$bias);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$input `,` $weight (`,` $bias^)? attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_LoraLinearOp : Pl_Op<"lora_linear", [Pure]> {
  let summary = "linear layer with a LoRA adapter: x W^T + scaling * (dropout(x) A^T) B^T";
  let description = [{
    The base linear layer plus a LoRA adapter in peft's layout: `weight` is (N, K),
    `lora_a` is (r, K), `lora_b` is (N, r), with r equal to the `rank` attribute (> 0).
    `scaling` (> 0) is usually `alpha / rank`; `dropout` in [0, 1) applies to the adapter
    input only; `module` is the adapted module's path (e.g. `model.layers.0.self_attn.q_proj`).
    The result is (..., N).

    ```mlir
    %y = pl.lora_linear %x, %w, %a, %b {alpha = 1.600000e+01 : f64, module = "model.layers.0.self_attn.q_proj", rank = 8 : i64, scaling = 2.000000e+00 : f64} : (tensor<2x?x2048xf32>, tensor<2048x2048xf32>, tensor<8x2048xf32>, tensor<2048x8xf32>) -> tensor<2x?x2048xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$input, Pl_FloatTensor:$weight,
                       Pl_FloatTensor:$lora_a, Pl_FloatTensor:$lora_b,
                       I64Attr:$rank, F64Attr:$alpha, F64Attr:$scaling,
                       DefaultValuedAttr<F64Attr, "0.0">:$dropout, StrAttr:$module);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$input `,` $weight `,` $lora_a `,` $lora_b attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_MatMulOp : Pl_Op<"matmul", [Pure]> {
  let summary = "batched matrix product op(a) @ op(b) with transpose flags on the last two dims";
  let description = [{
    Operands and result have the same rank >= 2 and equal batch (leading) dims.
    `transpose_lhs` / `transpose_rhs` swap the last two dims of an operand first, so that
    op(lhs) is (..., M, K), op(rhs) is (..., K, N) and the result is (..., M, N).

    ```mlir
    %s = pl.matmul %q, %k {transpose_rhs = true} : (tensor<2x32x?x64xf32>, tensor<2x32x?x64xf32>) -> tensor<2x32x?x?xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$lhs, Pl_FloatTensor:$rhs,
                       DefaultValuedAttr<BoolAttr, "false">:$transpose_lhs,
                       DefaultValuedAttr<BoolAttr, "false">:$transpose_rhs);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_RopeOp : Pl_Op<"rope", [Pure, AllTypesMatch<["input", "result"]>]> {
  let summary = "rotary position embedding (LLaMA rotate-half) on (B, H, T, Dh), positions 0..T-1 or given";
  let description = [{
    Rotates pairs (i, i + Dh/2) of the head dim by angle `pos * theta^(-2i/Dh)` on an input
    (B, H, T, Dh) with Dh even; `theta` > 0. The optional `rope_scaling` dictionary holds
    LLaMA 3's frequency scaling with f64 or i64 entries `factor`, `low_freq_factor`,
    `high_freq_factor` and `original_max_position_embeddings`.

    The position of token t of row b is t, or `positions[b, t]` when the optional integer
    `positions` (B, T) is given (Hugging Face's `position_ids`; sequence packing restarts them
    at 0 for every example packed into a row). Given positions must lie in [0, T).

    ```mlir
    %r = pl.rope %q {rope_scaling = {factor = 3.200000e+01 : f64, high_freq_factor = 4.000000e+00 : f64, low_freq_factor = 1.000000e+00 : f64, original_max_position_embeddings = 8192 : i64}, theta = 5.000000e+05 : f64} : tensor<2x32x?x64xf32>
    %p = pl.rope %k positions(%pos : tensor<2x16xi64>) {theta = 1.000000e+04 : f64} : tensor<2x4x16x16xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$input, F64Attr:$theta,
                       OptionalAttr<DictionaryAttr>:$rope_scaling, Optional<Pl_IntTensor>:$positions);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$input (`positions` `(` $positions^ `:` type($positions) `)`)? attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Pl_AttentionOp : Pl_Op<"attention", [Pure]> {
  let summary = "scaled dot-product attention with grouped-query heads, optionally causal and per segment";
  let description = [{
    `softmax(q k^T * scale [+ causal mask]) v` with `query` (B, Hq, T, Dh) and `key`,
    `value` (B, Hkv, S, Dh); Hq must be a multiple of Hkv (grouped-query attention: each
    key/value head serves Hq / Hkv query heads). The result has the query's type; `scale` > 0.

    With the optional integer `segment_ids` (B, T) (self-attention: S == T), query i of a row
    sees key j only if `segment_ids[b, j] == segment_ids[b, i]` (and j <= i when causal): the
    block-diagonal mask of sequence packing, where each example packed into a row is one
    segment and attention never crosses from one example into another.

    ```mlir
    %o = pl.attention %q, %k, %v {causal, scale = 1.250000e-01 : f64} : (tensor<2x32x?x64xf32>, tensor<2x8x?x64xf32>, tensor<2x8x?x64xf32>) -> tensor<2x32x?x64xf32>
    %p = pl.attention %q, %k, %v segments %seg {causal, scale = 2.500000e-01 : f64} : (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x16xi64>) -> tensor<2x4x16x16xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$query, Pl_FloatTensor:$key, Pl_FloatTensor:$value,
                       UnitAttr:$causal, F64Attr:$scale, Optional<Pl_IntTensor>:$segment_ids);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$query `,` $key `,` $value (`segments` $segment_ids^)? attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_SiluOp : Pl_Op<"silu", [Pure, SameOperandsAndResultType]> {
  let summary = "x * sigmoid(x)";
  let description = [{
    Elementwise `x * sigmoid(x)`; operand and result have the same type.

    ```mlir
    %s = pl.silu %x : tensor<2x?x8192xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$input);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($result)";
}

def Pl_SwigluOp : Pl_Op<"swiglu", [Pure, SameOperandsAndResultType]> {
  let summary = "silu(gate) * up, LLaMA's MLP activation";
  let description = [{
    Elementwise `silu(gate) * up` on two tensors of the result's type; the fused form of
    LLaMA's `act_fn(gate_proj(x)) * up_proj(x)`.

    ```mlir
    %h = pl.swiglu %gate, %up : tensor<2x?x8192xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$gate, Pl_FloatTensor:$up);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$gate `,` $up attr-dict `:` type($result)";
}

def Pl_AddOp : Pl_Op<"add", [Pure, Commutative, SameOperandsAndResultType]> {
  let summary = "elementwise sum (residual connections)";
  let description = [{
    Elementwise `lhs + rhs`; both operands and the result have the same type (no broadcasting).

    ```mlir
    %h = pl.add %x, %attn : tensor<2x?x2048xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$lhs, Pl_FloatTensor:$rhs);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

def Pl_MulOp : Pl_Op<"mul", [Pure, Commutative, SameOperandsAndResultType]> {
  let summary = "elementwise product";
  let description = [{
    Elementwise `lhs * rhs`; both operands and the result have the same type (no broadcasting).

    ```mlir
    %p = pl.mul %x, %y : tensor<2x?x2048xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$lhs, Pl_FloatTensor:$rhs);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

def Pl_ReshapeOp : Pl_Op<"reshape", [Pure]> {
  let summary = "reshape to the result type (same element count)";
  let description = [{
    Reinterprets the input in row-major order as the result type: same element type, and
    the same element count when both shapes are static.

    ```mlir
    %r = pl.reshape %x : (tensor<2x?x2048xf32>) -> tensor<2x?x32x64xf32>
    ```
  }];
  let arguments = (ins Pl_Tensor:$input);
  let results = (outs Pl_Tensor:$result);
  let assemblyFormat = "$input attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_TransposeOp : Pl_Op<"transpose", [Pure]> {
  let summary = "permute dims: result.dim(i) = input.dim(perm[i])";
  let description = [{
    `perm` is a permutation of 0..rank-1 and `result.dim(i) = input.dim(perm[i])`.

    ```mlir
    %t = pl.transpose %x {perm = array<i64: 0, 2, 1, 3>} : (tensor<2x?x32x64xf32>) -> tensor<2x32x?x64xf32>
    ```
  }];
  let arguments = (ins Pl_Tensor:$input, DenseI64ArrayAttr:$perm);
  let results = (outs Pl_Tensor:$result);
  let assemblyFormat = "$input attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_SoftmaxOp : Pl_Op<"softmax", [Pure, SameOperandsAndResultType]> {
  let summary = "softmax along one axis";
  let description = [{
    Softmax along `axis`, which is in [-rank, rank) (negative counts from the end);
    operand and result have the same type.

    ```mlir
    %p = pl.softmax %s {axis = -1 : i64} : tensor<2x32x?x?xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$input, I64Attr:$axis);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Pl_CrossEntropyOp : Pl_Op<"cross_entropy", [Pure]> {
  let summary = "mean next-token cross-entropy of logits (..., V) against labels (...)";
  let description = [{
    Mean cross-entropy of `logits` (..., V) against integer `labels` (...) (the logits shape
    without its last dim), skipping positions whose label is `ignore_index` (default -100,
    as in PyTorch). With `shift_labels` (Hugging Face's causal-LM loss) the logits at position
    t predict the label at t + 1 along the second-to-last logits dim, so the last position is
    not scored. The loss is a 0-d f32 tensor.

    ```mlir
    %loss = pl.cross_entropy %logits, %labels : (tensor<2x?x128256xf32>, tensor<2x?xi64>) -> tensor<f32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$logits, Pl_IntTensor:$labels,
                       DefaultValuedAttr<I64Attr, "-100">:$ignore_index, UnitAttr:$shift_labels);
  let results = (outs 0DTensorOf<[F32]>:$loss);
  let assemblyFormat = "$logits `,` $labels attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Training step: gradient ops (built by --autodiff) and the optimizer
//===----------------------------------------------------------------------===//

def Pl_CrossEntropyGradOp : Pl_Op<"cross_entropy_grad", [Pure]> {
  let summary = "gradient of pl.cross_entropy's loss with respect to the logits";
  let description = [{
    `grad_scale * (softmax(logits) - onehot(labels)) / count` at scored positions and 0
    elsewhere, where `count` is the number of scored (non-ignored) positions; `ignore_index`
    and `shift_labels` mean what they mean on `pl.cross_entropy`. `grad_scale` is the loss
    seed: 1 for one batch, `1 / micro_batches` when micro-batch gradients are accumulated.

    ```mlir
    %dl = pl.cross_entropy_grad %logits, %labels {grad_scale = 5.000000e-01 : f64, shift_labels} : (tensor<2x16x256xf32>, tensor<2x16xi64>) -> tensor<2x16x256xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$logits, Pl_IntTensor:$labels,
                       DefaultValuedAttr<I64Attr, "-100">:$ignore_index, UnitAttr:$shift_labels,
                       F64Attr:$grad_scale);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$logits `,` $labels attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_RMSNormGradOp : Pl_Op<"rms_norm_grad", [Pure]> {
  let summary = "input gradient of pl.rms_norm (the weight is frozen)";
  let description = [{
    With r = rsqrt(mean(x^2) + eps) over the last dim D and g = dy * weight:
    `dx = r * (g - x * r^2 * mean(g * x))`. The result has the type of `x`.

    ```mlir
    %dx = pl.rms_norm_grad %dy, %x, %w {eps = 1.000000e-05 : f64} : (tensor<2x16x64xf32>, tensor<2x16x64xf32>, tensor<64xf32>) -> tensor<2x16x64xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$grad, Pl_FloatTensor:$input, Pl_FloatTensor:$weight, F64Attr:$eps);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$grad `,` $input `,` $weight attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_LinearGradInputOp : Pl_Op<"linear_grad_input", [Pure]> {
  let summary = "input gradient of a frozen linear layer: dx = dy W";
  let description = [{
    `grad` is (..., N), `weight` is (N, K); the result is (..., K).

    ```mlir
    %dx = pl.linear_grad_input %dy, %w : (tensor<2x16x256xf32>, tensor<256x64xf32>) -> tensor<2x16x64xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$grad, Pl_FloatTensor:$weight);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$grad `,` $weight attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_LoraLinearGradOp : Pl_Op<"lora_linear_grad", [Pure]> {
  let summary = "gradients of pl.lora_linear: input and both adapter matrices";
  let description = [{
    For `y = x W^T + s (x A^T) B^T` with s = `scaling`:
    `dx = dy W + s (dy B) A`, `dA = s (dy B)^T x` (r, K), `dB = s dy^T (x A^T)` (N, r),
    summing over all leading dims. The base weight W is frozen. With `dropout` p > 0 (copied
    from the forward op with its `module`), the adapter path reads D(x) = x * mask / (1 - p),
    the forward's mask recomputed from its counters: `dA = s (dy B)^T D(x)`,
    `dB = s dy^T (D(x) A^T)`, `dx = dy W + D(s (dy B) A)`.

    ```mlir
    %dx, %da, %db = pl.lora_linear_grad %dy, %x, %w, %a, %b {scaling = 2.000000e+00 : f64} : (tensor<2x16x64xf32>, tensor<2x16x64xf32>, tensor<64x64xf32>, tensor<4x64xf32>, tensor<64x4xf32>) -> (tensor<2x16x64xf32>, tensor<4x64xf32>, tensor<64x4xf32>)
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$grad, Pl_FloatTensor:$input, Pl_FloatTensor:$weight,
                       Pl_FloatTensor:$lora_a, Pl_FloatTensor:$lora_b, F64Attr:$scaling,
                       DefaultValuedAttr<F64Attr, "0.0">:$dropout,
                       DefaultValuedStrAttr<StrAttr, "">:$module);
  let results = (outs Pl_FloatTensor:$grad_input, Pl_FloatTensor:$grad_lora_a, Pl_FloatTensor:$grad_lora_b);
  let assemblyFormat = "$grad `,` $input `,` $weight `,` $lora_a `,` $lora_b attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_RopeGradOp : Pl_Op<"rope_grad", [Pure, AllTypesMatch<["grad", "result"]>]> {
  let summary = "gradient of pl.rope: the rotation by the negative angle";
  let description = [{
    Rope is an orthogonal map per position, so its adjoint rotates each pair back:
    `dx = dy cos - rotate_half(dy) sin` in rotate-half form. Attributes and the optional
    `positions` as on `pl.rope`.

    ```mlir
    %dx = pl.rope_grad %dy {theta = 1.000000e+04 : f64} : tensor<2x4x16x16xf32>
    %dp = pl.rope_grad %dy positions(%pos : tensor<2x16xi64>) {theta = 1.000000e+04 : f64} : tensor<2x4x16x16xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$grad, F64Attr:$theta, OptionalAttr<DictionaryAttr>:$rope_scaling,
                       Optional<Pl_IntTensor>:$positions);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$grad (`positions` `(` $positions^ `:` type($positions) `)`)? attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Pl_AttentionGradOp : Pl_Op<"attention_grad", [Pure]> {
  let summary = "gradients of pl.attention with respect to query, key and value";
  let description = [{
    With P = softmax(q k^T * scale [+ causal mask]): `dv = P^T do`, `dP = do v^T`,
    `dS = P * (dP - rowsum(dP * P))`, `dq = dS k * scale`, `dk = dS^T q * scale`; for grouped
    heads, dk and dv sum over the query heads that share a key/value head. The optional
    `segment_ids` mask P as on `pl.attention` (masked entries are 0 in every product).

    ```mlir
    %dq, %dk, %dv = pl.attention_grad %do, %q, %k, %v {causal, scale = 2.500000e-01 : f64} : (tensor<2x4x16x16xf32>, tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>) -> (tensor<2x4x16x16xf32>, tensor<2x2x16x16xf32>, tensor<2x2x16x16xf32>)
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$grad, Pl_FloatTensor:$query, Pl_FloatTensor:$key,
                       Pl_FloatTensor:$value, UnitAttr:$causal, F64Attr:$scale, Optional<Pl_IntTensor>:$segment_ids);
  let results = (outs Pl_FloatTensor:$grad_query, Pl_FloatTensor:$grad_key, Pl_FloatTensor:$grad_value);
  let assemblyFormat = "$grad `,` $query `,` $key `,` $value (`segments` $segment_ids^)? attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_SwigluGradOp : Pl_Op<"swiglu_grad", [Pure]> {
  let summary = "gradients of pl.swiglu with respect to gate and up";
  let description = [{
    With sg = sigmoid(gate): `dgate = dy * up * sg * (1 + gate * (1 - sg))`,
    `dup = dy * gate * sg`.

    ```mlir
    %dg, %du = pl.swiglu_grad %dy, %g, %u : (tensor<2x16x128xf32>, tensor<2x16x128xf32>, tensor<2x16x128xf32>) -> (tensor<2x16x128xf32>, tensor<2x16x128xf32>)
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$grad, Pl_FloatTensor:$gate, Pl_FloatTensor:$up);
  let results = (outs Pl_FloatTensor:$grad_gate, Pl_FloatTensor:$grad_up);
  let assemblyFormat = "$grad `,` $gate `,` $up attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_AccumulateGradOp : Pl_Op<"accumulate_grad", [MemoryEffects<[MemWrite]>]> {
  let summary = "add a gradient into the persistent accumulator of a trainable parameter";
  let description = [{
    `grad` is added to the gradient accumulator of the trainable `pl.param` named `param`
    (same shape). Accumulators persist across micro-batches and are read and zeroed by
    `pl.adamw_step`; this is how gradient accumulation is expressed.

    ```mlir
    pl.accumulate_grad %da {param = "model.layers.0.self_attn.q_proj.lora_A.weight"} : tensor<4x64xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$grad, StrAttr:$param);
  let assemblyFormat = "$grad attr-dict `:` type($grad)";
}

def Pl_AdamWStepOp : Pl_Op<"adamw_step", [MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "global-norm clipping and AdamW over the accumulated gradients of all trainables";
  let description = [{
    One optimizer step over the trainable params named in `params` (torch semantics):
    the global L2 norm of all accumulated gradients is computed; if `max_grad_norm` > 0 and
    the norm exceeds it, every gradient is scaled by `max_grad_norm / (norm + 1e-6)`
    (`clip_grad_norm_`); then `torch.optim.AdamW` with bias correction and decoupled weight
    decay updates each param and its two moments; the accumulators are zeroed. A non-finite
    norm skips the update. The learning rate of each step comes from the runtime's schedule
    (module attribute `pl.train`), so it is not an attribute here.

    ```mlir
    pl.adamw_step {beta1 = 9.000000e-01 : f64, beta2 = 9.990000e-01 : f64, eps = 1.000000e-08 : f64, max_grad_norm = 1.000000e+00 : f64, params = ["model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.0.self_attn.q_proj.lora_B.weight"], weight_decay = 0.000000e+00 : f64}
    ```
  }];
  let arguments = (ins StrArrayAttr:$params, F64Attr:$beta1, F64Attr:$beta2, F64Attr:$eps,
                       F64Attr:$weight_decay, F64Attr:$max_grad_norm);
  let assemblyFormat = "attr-dict";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Collectives (inserted by passes/parallel; a `group` names mesh axes, e.g. "tp", "dp,tp")
//===----------------------------------------------------------------------===//

def Pl_AllReduceOp : Pl_Op<"all_reduce", [SameOperandsAndResultType]> {
  let summary = "sum over the ranks of a mesh group";
  let description = [{
    Every rank of `group` (the ranks sharing this rank's coordinates on the other mesh axes)
    contributes its `input`; all get the sum. Inserted where a partial sum (the output of a
    row-parallel linear, a vocabulary-parallel embedding) meets a consumer that needs the
    whole value. Its gradient is the identity (the gradient of a replicated value is
    replicated).

    ```mlir
    %y = pl.all_reduce %partial {group = "tp"} : tensor<2x8x64xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$input, StrAttr:$group);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
  let hasVerifier = 1;
}

def Pl_CopyToGroupOp : Pl_Op<"copy_to_group", [SameOperandsAndResultType]> {
  let summary = "identity forward; the gradient is summed over the group (Megatron's f)";
  let description = [{
    Marks a replicated value entering a computation that is sharded over `group` (the input
    of column-parallel linears). Forward it is the identity; in the backward every rank holds
    only its shard's contribution to the gradient, so the gradient is all-reduced over `group`.

    ```mlir
    %x1 = pl.copy_to_group %x {group = "tp"} : tensor<2x8x64xf32>
    ```
  }];
  let arguments = (ins Pl_FloatTensor:$input, StrAttr:$group);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
  let hasVerifier = 1;
}

def Pl_SendOp : Pl_Op<"send", [MemoryEffects<[MemWrite]>]> {
  let summary = "send a value to another pipeline stage";
  let description = [{
    Sends `input` to the rank of pipeline stage `stage` with this rank's data- and
    tensor-parallel coordinates. `tag` pairs it with the `pl.recv` of the same tag there.

    ```mlir
    pl.send %h {stage = 1 : i64, tag = 0 : i64} : tensor<2x8x64xf32>
    ```
  }];
  let arguments = (ins Pl_Tensor:$input, I64Attr:$stage, I64Attr:$tag);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

def Pl_RecvOp : Pl_Op<"recv", [MemoryEffects<[MemRead]>]> {
  let summary = "receive a value from another pipeline stage";
  let description = [{
    Receives the value `pl.send` with the same `tag` sent on pipeline stage `stage`.

    ```mlir
    %h = pl.recv {stage = 0 : i64, tag = 0 : i64} : tensor<2x8x64xf32>
    ```
  }];
  let arguments = (ins I64Attr:$stage, I64Attr:$tag);
  let results = (outs Pl_Tensor:$result);
  let assemblyFormat = "attr-dict `:` type($result)";
}

def Pl_GradAllReduceOp : Pl_Op<"grad_all_reduce", [MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "one bucket of gradient accumulators summed over a group, then scaled";
  let description = [{
    The accumulated gradients of the trainables named in `params` are summed over `group` as
    one message and multiplied by `scale` (1/dp: the mean over data-parallel replicas). Runs
    in `@optimizer_step` before `pl.adamw_step`; buckets are ordered as the backward produces
    the gradients (last layer first).

    ```mlir
    pl.grad_all_reduce {group = "dp", params = ["model.layers.1.mlp.down_proj.lora_A.weight"], scale = 5.000000e-01 : f64}
    ```
  }];
  let arguments = (ins StrArrayAttr:$params, StrAttr:$group, F64Attr:$scale);
  let assemblyFormat = "attr-dict";
  let hasVerifier = 1;
}

def Pl_ParamBroadcastOp : Pl_Op<"param_broadcast", [MemoryEffects<[MemRead, MemWrite]>]> {
  let summary = "ZeRO-1: each trainable takes its owner's updated value";
  let description = [{
    With the optimizer state sharded over `group` (ZeRO-1), only the owner of a trainable
    (`owners[i]`, its index in the group) runs AdamW on it; afterwards the owners send the
    updated values to the other members. Runs in `@optimizer_step` after `pl.adamw_step`.

    ```mlir
    pl.param_broadcast {group = "dp", owners = array<i64: 0, 1>, params = ["model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.0.self_attn.q_proj.lora_B.weight"]}
    ```
  }];
  let arguments = (ins StrArrayAttr:$params, StrAttr:$group, DenseI64ArrayAttr:$owners);
  let assemblyFormat = "attr-dict";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Escape hatch for the importer
//===----------------------------------------------------------------------===//

def Pl_GenericOp : Pl_Op<"generic"> {
  let summary = "an imported op that was not raised to a pl op, kept with its attributes";
  let description = [{
    Keeps an ONNX node the importer could not raise to a `pl` op: `op_type` is the ONNX op
    type, `op_attrs` its attributes. Passes treat it as opaque (it is not `Pure`: nothing
    is known of its side effects).

    ```mlir
    %y = pl.generic "CumSum"(%x, %axis) {op_attrs = {exclusive = 0 : i64}} : (tensor<3xf32>, tensor<i64>) -> tensor<3xf32>
    ```
  }];
  let arguments = (ins Variadic<AnyType>:$inputs, StrAttr:$op_type,
                       OptionalAttr<DictionaryAttr>:$op_attrs);
  let results = (outs Variadic<AnyType>:$outputs);
  let assemblyFormat = "$op_type `(` $inputs `)` attr-dict `:` functional-type($inputs, $outputs)";
}

#endif // PARALLORA_PL_OPS
