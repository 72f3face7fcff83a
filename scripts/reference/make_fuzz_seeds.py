#!/usr/bin/env python3
"""Writes small ONNX seed models for the fuzz_onnx libFuzzer target (tests/fixtures/fuzz/onnx/).
They exercise the folder (Shape/Range/ConstantOfShape/Expand/Where/CumSum/Slice/Concat/Gather...)
and the initializer paths (raw, typed, external). Run with the reference venv's python."""
import os
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "fuzz", "onnx")
os.makedirs(out, exist_ok=True)
ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
i64 = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.int64), name)

# 1. the shapes subgraph of a causal mask, folded completely
nodes = [
    helper.make_node("Shape", ["input_ids"], ["shape"]),
    helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
    helper.make_node("Range", ["zero", "seq", "one"], ["pos"]),
    helper.make_node("Unsqueeze", ["pos", "axes0"], ["row"]),
    helper.make_node("Unsqueeze", ["pos", "axes1"], ["col"]),
    helper.make_node("LessOrEqual", ["row", "col"], ["keep"]),
    helper.make_node("ConstantOfShape", ["shape"], ["zeros"], value=numpy_helper.from_array(np.array([0.0], np.float32))),
    helper.make_node("CumSum", ["pos", "zero"], ["cs"]),
    helper.make_node("Where", ["keep", "fzero", "neginf"], ["mask"]),
    helper.make_node("Expand", ["mask", "shape4"], ["mask4"]),
    helper.make_node("Slice", ["mask4", "s_start", "s_end", "s_axes"], ["sl"]),
    helper.make_node("Concat", ["sl", "sl"], ["cat"], axis=-1),
    helper.make_node("Cast", ["cat"], ["out"], to=TensorProto.FLOAT),
]
inits = [i64("one", 1), i64("zero", 0), i64("axes0", [0]), i64("axes1", [1]), i64("shape4", [1, 1, 4, 4]),
         i64("s_start", [0]), i64("s_end", [2]), i64("s_axes", [-1]),
         numpy_helper.from_array(np.array(0.0, np.float32), "fzero"),
         numpy_helper.from_array(np.array(-np.inf, np.float32), "neginf")]
g = helper.make_graph(nodes, "mask", [ids], [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), os.path.join(out, "mask.onnx"))

# 2. embedding + rms-norm-like chain + linear with raw and typed initializers
w = numpy_helper.from_array(np.random.RandomState(0).randn(8, 4).astype(np.float32), "table")
wt = helper.make_tensor("wt", TensorProto.FLOAT, [4, 4], np.arange(16, dtype=np.float32).tolist())
nodes = [
    helper.make_node("Gather", ["table", "input_ids"], ["emb"], axis=0),
    helper.make_node("Pow", ["emb", "two"], ["sq"]),
    helper.make_node("ReduceMean", ["sq", "axes_last"], ["mean"], keepdims=1),
    helper.make_node("Add", ["mean", "eps"], ["v"]),
    helper.make_node("Sqrt", ["v"], ["s"]),
    helper.make_node("Reciprocal", ["s"], ["r"]),
    helper.make_node("Mul", ["emb", "r"], ["n"]),
    helper.make_node("Transpose", ["wt"], ["wtt"], perm=[1, 0]),
    helper.make_node("MatMul", ["n", "wtt"], ["y"]),
    helper.make_node("Reshape", ["y", "newshape"], ["y2"]),
    helper.make_node("Softmax", ["y2"], ["p"], axis=-1),
]
inits = [w, wt, numpy_helper.from_array(np.array(2.0, np.float32), "two"), i64("axes_last", [-1]),
         numpy_helper.from_array(np.array(1e-5, np.float32), "eps"), i64("newshape", [0, -1, 2, 2])]
g = helper.make_graph(nodes, "block", [ids], [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)], inits)
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), os.path.join(out, "block.onnx"))

# 3. an external-data initializer (the data file is absent: an error path)
t = TensorProto(); t.name = "ext"; t.data_type = TensorProto.FLOAT; t.dims.extend([2, 2])
t.data_location = TensorProto.EXTERNAL
for k, v in (("location", "missing.data"), ("offset", "0"), ("length", "16")):
    e = t.external_data.add(); e.key = k; e.value = v
g = helper.make_graph([helper.make_node("Identity", ["ext"], ["o"])], "ext", [],
                      [helper.make_tensor_value_info("o", TensorProto.FLOAT, [2, 2])], [t])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), os.path.join(out, "external.onnx"))
print("wrote", sorted(os.listdir(out)))
