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
  let arguments = (ins StrAttr:$name, UnitAttr:$trainable, OptionalAttr<StrAttr>:$init);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$name attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Pl_ConstantOp : Pl_Op<"constant", [Pure, ConstantLike]> {
  let summary = "a constant tensor";
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
  let arguments = (ins Pl_IntTensor:$ids, Pl_FloatTensor:$table);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$ids `,` $table attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_RMSNormOp : Pl_Op<"rms_norm", [Pure]> {
  let summary = "LLaMA RMSNorm over the last dim: x * rsqrt(mean(x^2) + eps) * weight";
  let arguments = (ins Pl_FloatTensor:$input, Pl_FloatTensor:$weight, F64Attr:$eps);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$input `,` $weight attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_LinearOp : Pl_Op<"linear", [Pure]> {
  let summary = "y = x W^T (+ b), W is (out, in) as in torch.nn.Linear";
  let arguments = (ins Pl_FloatTensor:$input, Pl_FloatTensor:$weight,
                       Optional<Pl_FloatTensor>:$bias);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$input `,` $weight (`,` $bias^)? attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_LoraLinearOp : Pl_Op<"lora_linear", [Pure]> {
  let summary = "linear layer with a LoRA adapter: x W^T + scaling * (dropout(x) A^T) B^T";
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
  let arguments = (ins Pl_FloatTensor:$lhs, Pl_FloatTensor:$rhs,
                       DefaultValuedAttr<BoolAttr, "false">:$transpose_lhs,
                       DefaultValuedAttr<BoolAttr, "false">:$transpose_rhs);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_RopeOp : Pl_Op<"rope", [Pure, SameOperandsAndResultType]> {
  let summary = "rotary position embedding (LLaMA rotate-half) on (B, H, T, Dh), positions 0..T-1";
  let arguments = (ins Pl_FloatTensor:$input, F64Attr:$theta,
                       OptionalAttr<DictionaryAttr>:$rope_scaling);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Pl_AttentionOp : Pl_Op<"attention", [Pure]> {
  let summary = "scaled dot-product attention with grouped-query heads, optionally causal";
  let arguments = (ins Pl_FloatTensor:$query, Pl_FloatTensor:$key, Pl_FloatTensor:$value,
                       UnitAttr:$causal, F64Attr:$scale);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$query `,` $key `,` $value attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_SiluOp : Pl_Op<"silu", [Pure, SameOperandsAndResultType]> {
  let summary = "x * sigmoid(x)";
  let arguments = (ins Pl_FloatTensor:$input);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($result)";
}

def Pl_SwigluOp : Pl_Op<"swiglu", [Pure, SameOperandsAndResultType]> {
  let summary = "silu(gate) * up, LLaMA's MLP activation";
  let arguments = (ins Pl_FloatTensor:$gate, Pl_FloatTensor:$up);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$gate `,` $up attr-dict `:` type($result)";
}

def Pl_AddOp : Pl_Op<"add", [Pure, Commutative, SameOperandsAndResultType]> {
  let summary = "elementwise sum (residual connections)";
  let arguments = (ins Pl_FloatTensor:$lhs, Pl_FloatTensor:$rhs);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

def Pl_MulOp : Pl_Op<"mul", [Pure, Commutative, SameOperandsAndResultType]> {
  let summary = "elementwise product";
  let arguments = (ins Pl_FloatTensor:$lhs, Pl_FloatTensor:$rhs);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

def Pl_ReshapeOp : Pl_Op<"reshape", [Pure]> {
  let summary = "reshape to the result type (same element count)";
  let arguments = (ins Pl_Tensor:$input);
  let results = (outs Pl_Tensor:$result);
  let assemblyFormat = "$input attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_TransposeOp : Pl_Op<"transpose", [Pure]> {
  let summary = "permute dims: result.dim(i) = input.dim(perm[i])";
  let arguments = (ins Pl_Tensor:$input, DenseI64ArrayAttr:$perm);
  let results = (outs Pl_Tensor:$result);
  let assemblyFormat = "$input attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Pl_SoftmaxOp : Pl_Op<"softmax", [Pure, SameOperandsAndResultType]> {
  let summary = "softmax along one axis";
  let arguments = (ins Pl_FloatTensor:$input, I64Attr:$axis);
  let results = (outs Pl_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Pl_CrossEntropyOp : Pl_Op<"cross_entropy", [Pure]> {
  let summary = "mean next-token cross-entropy of logits (..., V) against labels (...)";
  let arguments = (ins Pl_FloatTensor:$logits, Pl_IntTensor:$labels,
                       DefaultValuedAttr<I64Attr, "-100">:$ignore_index);
  let results = (outs 0DTensorOf<[F32]>:$loss);
  let assemblyFormat = "$logits `,` $labels attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Escape hatch for the importer
//===----------------------------------------------------------------------===//

def Pl_GenericOp : Pl_Op<"generic"> {
  let summary = "an imported op that was not raised to a pl op, kept with its attributes";
  let arguments = (ins Variadic<AnyType>:$inputs, StrAttr:$op_type,
                       OptionalAttr<DictionaryAttr>:$op_attrs);
  let results = (outs Variadic<AnyType>:$outputs);
  let assemblyFormat = "$op_type `(` $inputs `)` attr-dict `:` functional-type($inputs, $outputs)";
}

#endif // PARALLORA_PL_OPS
