"""prunegate.runners.onnx_params: which initializers of an ONNX model are parameters."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from prunegate.runners.onnx_params import count_onnx_parameters, quantisation


def _model(nodes, initializers):
    graph = helper.make_graph(nodes, "g", [], [], initializer=[numpy_helper.from_array(a, n) for n, a in initializers])
    return helper.make_model(graph)


def test_a_qdq_weight_counts_zero_where_it_equals_its_per_channel_zero_point() -> None:
    weight = np.array([[1, 5, 5], [0, 0, 7]], np.int8)  # [out, in], dequantised along axis 0
    zero = np.array([5, 0], np.int8)
    scale = np.array([0.1, 0.2], np.float32)
    model = _model(
        [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], axis=0)],
        [("w", weight), ("s", scale), ("z", zero)],
    )
    counts = count_onnx_parameters(model)
    # the reference: dequantise by hand and count the nonzero reals
    real = (weight.astype(np.float32) - zero[:, None]) * scale[:, None]
    assert (counts.parameters, counts.nonzero) == (weight.size, int(np.count_nonzero(real)))
    assert quantisation(model) == "QDQ"


def test_qlinear_weights_and_int32_biases_count_scales_and_zero_points_do_not() -> None:
    w = np.zeros((4, 2, 3, 3), np.uint8) + 128
    w[0, 0, 0, 0] = 3
    bias = np.array([0, 9, 0, 1], np.int32)
    names = [("xs", np.float32(0.1)), ("xz", np.uint8(0)), ("w", w), ("ws", np.float32(0.5)), ("wz", np.uint8(128))]
    names += [("ys", np.float32(0.2)), ("yz", np.uint8(0)), ("b", bias), ("shape", np.array([1, -1], np.int64))]
    conv = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"])
    model = _model([conv], [(n, np.asarray(a)) for n, a in names])
    counts = count_onnx_parameters(model)
    assert counts.parameters == w.size + bias.size  # not the 6 scalars, not the shape
    assert counts.nonzero == 1 + 2
    assert quantisation(model) == "QLinear"


def test_a_float_model_is_not_quantised_and_counts_its_float_initializers() -> None:
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [("a", np.array([1.0, 0.0], np.float32)), ("shape", np.array([2], np.int64))],
    )
    counts = count_onnx_parameters(model)
    assert (counts.parameters, counts.nonzero) == (2, 1) and quantisation(model) is None
