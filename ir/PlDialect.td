//===- PlDialect.td - Parallora training-graph dialect -------*- tablegen -*-===//
//
// The `pl` dialect describes LLaMA training graphs at block granularity: the ops a
// transformer layer is made of (rms_norm, linear, rope, attention, swiglu, ...), the
// LoRA adapter as a first-class op, and parameters that are either frozen or trainable.
// Tensors are MLIR builtin ranked tensors; batch and sequence dims may be dynamic (`?`)
// until lora-compile fixes them.
//
//===----------------------------------------------------------------------===//
#ifndef PARALLORA_PL_DIALECT
#define PARALLORA_PL_DIALECT

include "mlir/IR/OpBase.td"

def Pl_Dialect : Dialect {
  let name = "pl";
  let summary = "Parallora's dialect for LLaMA + LoRA training graphs";
  let description = [{
    Ops at LLaMA-block granularity plus parameters (`pl.param`) marked frozen or
    trainable. A LoRA adapter on a linear layer is one op, `pl.lora_linear`, so that
    passes (training, sharding) see the adapter and the base weight together.

    Discardable attributes used across passes:
      * `pl.layer` (i64): decoder layer index of an op (-1 for embedding/head).
      * `pl.model` (dictionary, on the module): the LLaMA config the graph was built from.
  }];
  let cppNamespace = "::parallora::pl";
  let useFoldAPI = kEmitFoldAdaptorFolder;
}

class Pl_Op<string mnemonic, list<Trait> traits = []> :
    Op<Pl_Dialect, mnemonic, traits>;

#endif // PARALLORA_PL_DIALECT
