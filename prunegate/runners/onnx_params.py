"""What an ONNX model's parameters are, float or quantised, and whether it is quantised.

A float model's parameters are its float initializers (weights, biases, folded batch norms). A
quantised one keeps its weights as integers beside float scales and integer zero points: the
weights and biases count (wherever a quantised operator reads them), the scales and zero points
do not, and a weight is zero where its integer equals its zero point (what it dequantises to).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .base import Counts

if TYPE_CHECKING:  # pragma: no cover
    from onnx import ModelProto, NodeProto, TensorProto

_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16

# Quantised operators: the positions of their inputs that hold data (weights, biases, the
# activations), each with the position of its zero point (None: none, e.g. an int32 bias). Every
# other input of these operators is a scale or a zero point: a quantisation parameter.
_DATA_INPUTS: dict[str, dict[int, int | None]] = {
    "QuantizeLinear": {0: None},
    "DequantizeLinear": {0: 2},
    "QLinearConv": {0: 2, 3: 5, 8: None},
    "QLinearMatMul": {0: 2, 3: 5},
    "ConvInteger": {0: 2, 1: 3},
    "MatMulInteger": {0: 2, 1: 3},
    "QGemm": {0: 2, 3: 5, 6: None},  # com.microsoft
    "QLinearAdd": {0: 2, 3: 5},
    "QLinearMul": {0: 2, 3: 5},
    "QLinearConcat": {},  # (its inputs come in triples after y's scale and zero point)
    "DynamicQuantizeLinear": {0: None},
}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def _is_quantised_op(node: NodeProto) -> bool:
    return node.op_type in _DATA_INPUTS or node.op_type.startswith("QLinear")


def quantisation(model: ModelProto) -> str | None:
    """ "QDQ" (Quantize/DequantizeLinear around float operators), "QLinear" (integer operators:
    QLinearConv, ConvInteger, ...), "QDQ + QLinear", or None for a model without either."""
    ops = {node.op_type for node in model.graph.node if _is_quantised_op(node)}
    kinds = (["QDQ"] if ops & QDQ_OPS else []) + (["QLinear"] if ops - QDQ_OPS else [])
    return " + ".join(kinds) or None


def _array(tensor: TensorProto) -> np.ndarray:
    from onnx import numpy_helper

    array = numpy_helper.to_array(tensor)
    if array.dtype.kind not in "fiub":  # bfloat16 (an ml_dtypes type) is not one torch can take
        array = array.astype(np.float32)
    return np.array(array)  # a writable copy: torch warns on read-only arrays


def _nonzero(values: np.ndarray, zero_point: np.ndarray | None, axis: int) -> int:
    """Elements that dequantise to something else than zero: values != zero point (per tensor,
    or per channel along `axis`)."""
    if zero_point is None or zero_point.size == 0:
        return int(np.count_nonzero(values))
    zero = zero_point.astype(np.int64)
    if zero.size > 1:
        if not values.ndim or values.shape[axis % values.ndim] != zero.size:
            matching = [i for i, n in enumerate(values.shape) if n == zero.size]
            if not matching:  # not a layout this knows: count the stored zeros
                return int(np.count_nonzero(values))
            axis = matching[0]
        shape = [1] * values.ndim
        shape[axis % values.ndim] = zero.size
        zero = zero.reshape(shape)
    return int(np.count_nonzero(values.astype(np.int64) != zero))


def _axis(node: NodeProto, position: int) -> int:
    """The channel axis of a per-channel zero point: DequantizeLinear's `axis` attribute (default
    1); a quantised operator's weight, its output channels (0 for a conv, the last for a matmul)."""
    if node.op_type == "DequantizeLinear":
        return next((a.i for a in node.attribute if a.name == "axis"), 1)
    return -1 if "MatMul" in node.op_type or node.op_type == "QGemm" else 0  # [K, N] weights: per column


def count_onnx_parameters(model: ModelProto) -> Counts:
    """The model's parameters (float initializers, and integer weights and biases that quantised
    operators read) and how many are nonzero; scales and zero points are not parameters."""
    initializers = {t.name: t for t in model.graph.initializer}
    quantisation_parameters: set[str] = set()
    integer_data: dict[str, tuple[str | None, int]] = {}  # initializer -> (its zero point, channel axis)
    for node in model.graph.node:
        if not _is_quantised_op(node):
            continue
        data = _DATA_INPUTS.get(node.op_type, {0: None})
        for position, name in enumerate(node.input):
            if name not in initializers:
                continue
            if position in data:
                zero_at = data[position]
                zero = node.input[zero_at] if zero_at is not None and zero_at < len(node.input) else None
                integer_data.setdefault(name, (zero or None, _axis(node, position)))
            else:
                quantisation_parameters.add(name)
    counts = Counts()
    for name, tensor in initializers.items():
        if name in quantisation_parameters and name not in integer_data:
            continue
        if tensor.data_type in _FLOAT_TYPES:
            counts.add(torch.from_numpy(_array(tensor).astype(np.float32, copy=False)))
        elif name in integer_data:
            values = _array(tensor)
            zero_name, axis = integer_data[name]
            zero = _array(initializers[zero_name]) if zero_name in initializers else None
            counts.parameters += int(values.size)
            counts.nonzero += _nonzero(values, zero, axis)
    return counts
