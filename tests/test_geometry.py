"""Geometry: output sizes, padding, parameter counts — against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convcli.errors import GeometryError, OptionError
from convcli.geometry import (
    conv_layer,
    conv_output_hw,
    conv_pad_amounts,
    output_shape,
    parse_input,
    parse_input_shape,
    pool_layer,
    pool_output_hw,
)
from convcli.layer import ConvSpec, Padding, PaddingMode, PoolSpec, SinglePair, on_signal, parse_pair


def positions(size: int, extent: int, stride: int) -> int:
    """Count window positions by walking them: the obvious definition of an output size."""
    return len(range(0, size - extent + 1, stride)) if size >= extent else 0


def tf_same(size: int, k: int, s: int, d: int = 1) -> tuple[int, int, int]:
    """TensorFlow's documented 'SAME' rule (tf.nn.convolution docs), written out independently."""
    out = math.ceil(size / s)
    extent = (k - 1) * d + 1
    pad_total = max((out - 1) * s + extent - size, 0)
    return out, pad_total // 2, pad_total - pad_total // 2


# --- the seeds' and Keras' worked numbers ---------------------------------------------------------

def test_seed_keras_shapes_725x1280x3_32_filters_4x4():
    g = conv_layer((725, 1280, 3), kernel_size=(4, 4), filters=32)
    assert g.output_shape == (722, 1277, 32)
    assert g.weights_shape == (4, 4, 3, 32)
    assert g.bias_shape == (32,)
    assert g.params == 1568
    assert g.macs == 722 * 1277 * 32 * 4 * 4 * 3


def test_seed_1d_and_2d_sizes():
    assert output_shape((1, 8, 1), kernel_size=(1, 3)) == (1, 6, 1)
    assert output_shape((8, 8, 1), kernel_size=3) == (6, 6, 1)


@pytest.mark.parametrize("size", [7, 8, 224, 225])
def test_same_stride_2_odd_and_even_matches_tensorflow_rule(size):
    out, before, after = tf_same(size, 3, 2)
    assert conv_output_hw((size, size), (3, 3), stride=(2, 2), dilation=(1, 1),
                          padding=Padding.parse("same")) == (out, out)
    assert conv_pad_amounts((size, size), (3, 3), stride=(2, 2), dilation=(1, 1),
                            padding=Padding.parse("same")) == (before, after, before, after)
    # The odd pixel goes to the bottom/right, as TensorFlow (not PyTorch's symmetric padding).
    assert after - before in (0, 1)


def test_same_even_sizes_put_the_odd_pixel_bottom_right():
    assert conv_pad_amounts((8, 8), (3, 3), stride=(2, 2), dilation=(1, 1),
                            padding=Padding.parse("same")) == (0, 1, 0, 1)
    assert conv_pad_amounts((8, 8), (4, 4), stride=(1, 1), dilation=(1, 1),
                            padding=Padding.parse("same")) == (1, 2, 1, 2)


def test_keras_maxpool_2x2_stride_2_on_3x3_valid_and_same():
    valid = PoolSpec.from_options(mode="max", size=2)
    same = PoolSpec.from_options(mode="max", size=2, padding="same")
    assert pool_output_hw((3, 3), valid) == (1, 1)  # seeds/002: (1,3,3,2) -> (1,1,1,2)
    assert pool_output_hw((3, 3), same) == (2, 2)
    assert pool_layer((3, 3, 2), valid).output_shape == (1, 1, 2)
    assert pool_layer((3, 3, 2), valid).params == 0


def test_vgg_block1_params():
    spec = ConvSpec.from_options(padding="same")
    first = conv_layer((224, 224, 3), kernel_size=(3, 3), filters=64, spec=spec)
    second = conv_layer(first.output_shape, kernel_size=(3, 3), filters=64, spec=spec)
    assert (first.output_shape, first.params, second.params) == ((224, 224, 64), 1792, 36928)


def test_depthwise_counts_as_keras_depthwise_conv2d():
    # Keras DepthwiseConv2D(3, depth_multiplier=2) on 3 channels: 3*3*3*2 + 3*2 = 60 parameters.
    g = conv_layer((10, 11, 3), kernel_size=(3, 3), filters=2, spec=ConvSpec.from_options(depthwise=True))
    assert g.params == 60
    assert g.output_shape == (8, 9, 6)
    assert g.weights_shape == (3, 3, 3, 2)
    assert g.macs == 8 * 9 * 3 * 2 * 9


def test_locally_connected_counts_one_filter_per_position():
    # Keras LocallyConnected2D(2, 3) on 5x5x3: kernel (9, 27, 2), bias (3, 3, 2): 9*(27*2 + 2) = 504.
    g = conv_layer((5, 5, 3), kernel_size=(3, 3), filters=2, locally_connected=True)
    assert g.output_shape == (3, 3, 2)
    assert g.weights_shape == (9, 27, 2)
    assert g.bias_shape == (3, 3, 2)
    assert g.params == 504


def test_no_bias_counts():
    assert conv_layer((8, 8, 3), kernel_size=(3, 3), filters=4, use_bias=False).params == 3 * 3 * 3 * 4


def test_causal_pads_left_only_for_1d_signals():
    spec = ConvSpec.from_options(padding="causal", dilation=2)
    g = conv_layer((1, 8, 1), kernel_size=(1, 3), filters=1, spec=spec)
    assert g.pads == (0, 0, 4, 0)
    assert g.output_shape == (1, 8, 1)


def test_full_padding_grows_by_kernel_minus_one():
    g = conv_layer((5, 6, 1), kernel_size=(3, 2), filters=1, spec=ConvSpec.from_options(padding="full"))
    assert g.output_shape == (7, 7, 1)


def test_explicit_padding_forms():
    assert Padding.parse("1").amounts == (1, 1, 1, 1)
    assert Padding.parse("1,2").amounts == (1, 1, 2, 2)
    assert Padding.parse("1,2,3,4").amounts == (1, 2, 3, 4)
    assert Padding.parse((0, 1, 2, 3)).mode is PaddingMode.EXPLICIT
    g = conv_layer((5, 5, 1), kernel_size=(3, 3), filters=1, spec=ConvSpec.from_options(padding="1,2,3,4"))
    assert g.output_shape == (5 + 3 - 2, 5 + 7 - 2, 1)


def test_explain_fills_in_the_numbers():
    g = conv_layer((725, 1280, 3), kernel_size=(4, 4), filters=32)
    text = "\n".join(g.explain)
    assert "floor((725 + 0 + 0 − ((4−1)·1+1)) / 1) + 1 = 722" in text
    assert "params = (4·4·3 + 1)·32 = 1,568" in text


def test_receptive_field_recurrence():
    spec = ConvSpec.from_options(stride=2, dilation=2)
    first = conv_layer((64, 64, 1), kernel_size=(3, 3), filters=1, spec=spec)
    assert first.receptive_field == (5, 5) and first.jump == (2, 2)
    second = conv_layer(first.output_shape, kernel_size=(3, 3), filters=1, spec=spec,
                        rf_in=first.receptive_field, jump_in=first.jump)
    assert second.receptive_field == (5 + 2 * 2 * 2, 5 + 2 * 2 * 2) and second.jump == (4, 4)


@pytest.mark.parametrize("text, expected", [
    ("725x1280x3", (725, 1280, 3)), ("725,1280,3", (725, 1280, 3)), ("8x8", (8, 8, 1)), ("8", (1, 8, 1)),
    ("2×3×4", (2, 3, 4)),
])
def test_parse_input_shape(text, expected):
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("text, signal", [("8", True), ("1x8", False), ("1x8x1", False), ("1,8,1", False),
                                          ("8x8", False)])
def test_only_one_number_is_a_signal(text, signal):
    assert parse_input(text) == (parse_input_shape(text), signal)


# --- 1-D signals: values written as one number, Conv1D reports --------------------------------------

@pytest.mark.parametrize("value, pair, on_a_signal", [
    (3, (3, 3), (1, 3)), ("3", (3, 3), (1, 3)), ([3], (3, 3), (1, 3)),
    ("3,3", (3, 3), (3, 3)), ("3x3", (3, 3), (3, 3)), ([3, 3], (3, 3), (3, 3)), ("2,3", (2, 3), (2, 3)),
])
def test_a_pair_remembers_whether_it_was_one_number(value, pair, on_a_signal):
    parsed = parse_pair(value, "--stride")
    assert parsed == pair  # a plain (h, w) pair to geometry and the engine
    assert on_signal(parsed) == on_a_signal
    assert type(parse_pair(parsed, "--stride")) is type(parsed)  # parsing again keeps how it was written


def test_a_single_pair_survives_pickling_for_batch_workers():
    import pickle

    spec = ConvSpec.from_options(stride=2, padding=1, dilation="2,1")
    again = pickle.loads(pickle.dumps(spec))
    assert isinstance(again.stride, SinglePair) and again.stride == (2, 2)
    assert again.on_signal() == spec.on_signal() == ConvSpec.from_options(
        stride="1,2", padding="0,0,1,1", dilation="2,1")


@pytest.mark.parametrize("text, on_a_signal", [
    ("1", (0, 0, 1, 1)), ("1,1", (1, 1, 1, 1)), ("0,2", (0, 0, 2, 2)), ("1,0,2,3", (1, 0, 2, 3)),
])
def test_one_padding_number_pads_the_ends_of_a_signal_only(text, on_a_signal):
    padding = Padding.parse(text)
    assert padding.amounts == ((int(text),) * 4 if "," not in text else padding.amounts)
    assert padding.on_signal().amounts == on_a_signal
    assert padding.on_signal().pads_rows == (on_a_signal[:2] != (0, 0))
    assert Padding.parse("same").on_signal() == Padding.parse("same")


def test_pool_sizes_on_a_signal():
    assert PoolSpec.from_options(mode="max").on_signal().size == (1, 2)  # MaxPooling1D() pools 2
    spec = PoolSpec.from_options(mode="max", size=3, stride="1,2").on_signal()
    assert (spec.size, spec.strides) == ((1, 3), (1, 2))
    assert PoolSpec.from_options(mode="avg", size="2,2").on_signal().size == (2, 2)


def test_conv1d_reports_keras_conv1d_kernel_shape_and_names():
    # Keras 3.15.1: Conv1D(4, 3) on (8, 3) has kernel (3, 3, 4), bias (4,), 40 parameters.
    g = conv_layer((1, 8, 3), kernel_size=(1, 3), filters=4, one_d=True)
    assert (g.type, g.output_shape, g.weights_shape, g.bias_shape, g.params) == (
        "conv1d", (1, 6, 4), (3, 3, 4), (4,), 40)
    assert g.macs == conv_layer((1, 8, 3), kernel_size=(1, 3), filters=4).macs == 6 * 4 * 3 * 3
    assert g.explain[0] == "length: floor((8 + 0 + 0 − ((3−1)·1+1)) / 1) + 1 = 6  [valid padding]"
    assert "params = (3·3 + 1)·4 = 40" in g.explain


def test_depthwise_conv1d_reports_keras_depthwise_conv1d_kernel_shape():
    # Keras 3.15.1: DepthwiseConv1D(3, depth_multiplier=2) on (8, 3) has kernel (3, 3, 2), bias (6,),
    # 24 parameters and output (6, 6).
    g = conv_layer((1, 8, 3), kernel_size=(1, 3), filters=2, spec=ConvSpec.from_options(depthwise=True), one_d=True)
    assert (g.type, g.output_shape, g.weights_shape, g.bias_shape, g.params) == (
        "depthwise_conv1d", (1, 6, 6), (3, 3, 2), (6,), 24)


def test_locally_connected1d_and_pools_1d():
    g = conv_layer((1, 8, 2), kernel_size=(1, 3), filters=4, locally_connected=True, one_d=True)
    assert (g.type, g.weights_shape, g.bias_shape, g.params) == ("locally_connected1d", (6, 6, 4), (6, 4),
                                                                 6 * (3 * 2 * 4 + 4))
    pool = PoolSpec.from_options(mode="avg", size="1,2")
    p = pool_layer((1, 7, 2), pool, one_d=True)
    assert (p.type, p.output_shape, p.explain[0]) == ("average_pooling1d", (1, 3, 2),
                                                      "length: floor((7 − 2) / 2) + 1 = 3")
    assert pool_layer((1, 7, 2), pool).type == "avg_pool"


def test_a_1d_layer_needs_a_1xl_input_and_a_1xk_kernel():
    with pytest.raises(GeometryError, match=r"conv: a 1-D layer needs a 1×L input, a 1×K kernel and no rows of padding;"
                                            r" got input 1×8, kernel 3×3, padding valid"):
        conv_layer((1, 8, 1), kernel_size=(3, 3), filters=1, one_d=True)
    with pytest.raises(GeometryError, match=r"got input 1×8, kernel 1×3, padding 1,1,1,1"):
        conv_layer((1, 8, 1), kernel_size=(1, 3), filters=1, spec=ConvSpec.from_options(padding="1,1"), one_d=True)
    with pytest.raises(GeometryError, match=r"pool: a 1-D pool needs a 1×L input and a 1×N window; got input 2×8,"
                                            r" window 1×2"):
        pool_layer((2, 8, 1), PoolSpec.from_options(mode="max", size="1,2"), one_d=True)


# --- errors -------------------------------------------------------------------------------------

def test_kernel_larger_than_input_names_the_numbers():
    with pytest.raises(GeometryError, match=r"kernel extent 5×5 .* padded input 4×4 .* output would be 0×0"):
        conv_layer((4, 4, 1), kernel_size=(5, 5), filters=1)


def test_dilated_kernel_larger_than_input():
    with pytest.raises(GeometryError, match=r"kernel extent 5×5 \(kernel 3×3, dilation 2,2\)"):
        conv_layer((4, 9, 1), kernel_size=(3, 3), filters=1, spec=ConvSpec.from_options(dilation=2))


def test_depth_mismatch_names_both_numbers():
    with pytest.raises(GeometryError, match=r"kernels are 3×3×4 but the input has 3 channels"):
        conv_layer((8, 8, 3), kernel_size=(3, 3), filters=1, kernel_depth=4)


def test_depthwise_depth_mismatch():
    with pytest.raises(GeometryError, match=r"depthwise kernels of depth 2 do not match the input's 3 channels"):
        conv_layer((8, 8, 3), kernel_size=(3, 3), filters=1, kernel_depth=2,
                   spec=ConvSpec.from_options(depthwise=True))


def test_causal_on_an_image_is_refused():
    with pytest.raises(GeometryError, match=r"'causal' is for 1-D signals .* input is 8×8"):
        conv_layer((8, 8, 1), kernel_size=(3, 3), filters=1, spec=ConvSpec.from_options(padding="causal"))


def test_pool_larger_than_input():
    with pytest.raises(GeometryError, match=r"pool 3×3 is larger than its input 2×2"):
        pool_layer((2, 2, 1), PoolSpec.from_options(mode="max", size=3))


def test_filters_and_kernel_size_must_be_positive():
    with pytest.raises(GeometryError, match=r"filters must be at least 1, got 0"):
        conv_layer((8, 8, 1), kernel_size=(3, 3), filters=0)
    with pytest.raises(GeometryError, match=r"kernel size must be at least 1×1, got 0×3"):
        conv_layer((8, 8, 1), kernel_size=(0, 3), filters=1)


@pytest.mark.parametrize("value, message", [
    (0, r"stride: must be at least 1, got \(0, 0\)"),
    ("1,2,3", r"stride: expected N or NH,NW, got 3 numbers"),
    ("a", r"stride: expected N or N,M with whole numbers, got 'a'"),
    (True, r"stride: expected a whole number"),
])
def test_parse_pair_errors(value, message):
    with pytest.raises(OptionError, match=message):
        parse_pair(value, "stride")


@pytest.mark.parametrize("value, message", [
    ("middle", r"'middle' is not valid, same, full, causal"),
    ("1,2,3", r"expected P, PH,PW or T,B,L,R, got 3 numbers"),
    ("-1", r"padding amounts must be >= 0"),
])
def test_padding_parse_errors(value, message):
    with pytest.raises(OptionError, match=message):
        Padding.parse(value)


@pytest.mark.parametrize("text", ["", "3x", "axb", "0x4x3", "1x2x3x4"])
def test_parse_input_shape_errors(text):
    with pytest.raises(OptionError, match=r"--input"):
        parse_input_shape(text)


def test_enum_option_errors():
    with pytest.raises(OptionError, match=r"border: 'mirror' is not one of zeros, reflect, replicate, circular"):
        ConvSpec.from_options(border="mirror")
    with pytest.raises(OptionError, match=r"pool-padding: 'full' is not one of valid, same"):
        PoolSpec.from_options(mode="max", padding="full")


# --- properties ---------------------------------------------------------------------------------

sizes = st.integers(1, 40)
small = st.integers(1, 5)


@given(size=sizes, k=small, s=small, d=st.integers(1, 3), pad=st.sampled_from(["valid", "same", "full", "2,1"]))
def test_output_size_equals_counted_window_positions(size, k, s, d, pad):
    padding = Padding.parse(pad)
    top, bottom, _, _ = conv_pad_amounts((size, 1), (k, 1), stride=(s, 1), dilation=(d, 1), padding=padding)
    out, _ = conv_output_hw((size, 1), (k, 1), stride=(s, 1), dilation=(d, 1), padding=padding)
    assert out == positions(size + top + bottom, (k - 1) * d + 1, s)
    if pad == "same":
        assert (out, top, bottom) == tf_same(size, k, s, d)


@given(size=sizes, p=small, s=small, pad=st.sampled_from(["valid", "same"]))
def test_pool_size_equals_keras_rule(size, p, s, pad):
    pool = PoolSpec.from_options(mode="avg", size=p, stride=s, padding=pad)
    out, _ = pool_output_hw((size, 1), pool)
    expected = math.ceil(size / s) if pad == "same" else (positions(size, p, s))
    assert out == expected


layer_settings = st.fixed_dictionaries({
    "h": st.integers(1, 14), "w": st.integers(1, 14), "c": st.integers(1, 3),
    "kh": st.integers(1, 4), "kw": st.integers(1, 4), "filters": st.integers(1, 3),
    "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "padding": st.sampled_from(["valid", "same", "full", "1", "0,1,2,0"]),
    "depthwise": st.booleans(),
    "pool": st.sampled_from([None, "max", "avg"]),
    "pool_size": st.integers(1, 3), "pool_padding": st.sampled_from(["valid", "same"]),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer_settings)
def test_apply_produces_exactly_the_shape_that_shape_reports(p):
    """For random layer settings, the array the engine returns has the shape `shape` reports."""
    from convcli.kernels import load_kernels
    from convcli.stack import Stack

    rng = np.random.default_rng(0)
    bank = load_kernels(*[rng.standard_normal((p["kh"], p["kw"])).astype(np.float32) for _ in range(p["filters"])])
    conv = ConvSpec.from_options(stride=p["stride"], padding=p["padding"], dilation=p["dilation"],
                                 depthwise=p["depthwise"])
    pool = (PoolSpec.from_options(mode=p["pool"], size=p["pool_size"], padding=p["pool_padding"])
            if p["pool"] else None)
    stack = Stack.single(bank, conv, pool)
    x = rng.standard_normal((p["h"], p["w"], p["c"])).astype(np.float32)
    try:
        reported = stack.geometry((p["h"], p["w"], p["c"]))
    except GeometryError as err:
        with pytest.raises(GeometryError, match=str(err).split(":")[0]):
            stack.run(x)
        return
    output, _, _ = stack.run(x)
    assert output.shape == reported[-1].output_shape
    assert output.dtype == np.float32


signal_settings = st.fixed_dictionaries({
    "length": st.integers(1, 30), "k": st.integers(1, 5), "stride": st.integers(1, 3), "dilation": st.integers(1, 3),
    "padding": st.sampled_from(["valid", "same", "full", "causal", "0", "2"]),
    "pool": st.sampled_from([None, "max", "avg"]), "pool_size": st.integers(1, 3),
})


def conv1d_reference(x: np.ndarray, w: np.ndarray, *, stride: int, dilation: int, padding: str) -> np.ndarray:
    """Keras Conv1D (PyTorch Conv1d for explicit P) on one channel, written out as loops."""
    extent = (len(w) - 1) * dilation + 1
    if padding == "same":
        _, left, right = tf_same(len(x), len(w), stride, dilation)
    elif padding.isdigit():
        left = right = int(padding)
    else:
        left, right = {"valid": (0, 0), "full": (extent - 1, extent - 1), "causal": (extent - 1, 0)}[padding]
    padded = np.concatenate([np.zeros(left), x, np.zeros(right)])
    starts = range(0, len(padded) - extent + 1, stride)
    return np.array([sum(padded[i + j * dilation] * w[j] for j in range(len(w))) for i in starts])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signal_settings)
def test_one_number_settings_on_a_signal_are_keras_conv1d(p):
    """A 1-D kernel with every option written as one number is Conv1D (then MaxPooling1D) on a signal."""
    from convcli.kernels import load_kernels
    from convcli.stack import Stack

    rng = np.random.default_rng(p["length"] * 31 + p["k"])
    x = rng.standard_normal(p["length"])
    w = rng.standard_normal(p["k"])
    conv = ConvSpec.from_options(stride=p["stride"], dilation=p["dilation"], padding=p["padding"])
    pool = PoolSpec.from_options(mode=p["pool"], size=p["pool_size"]) if p["pool"] else None
    stack = Stack.single(load_kernels(w.astype(np.float32)), conv, pool).for_signal()
    expected = conv1d_reference(x, w, stride=p["stride"], dilation=p["dilation"], padding=p["padding"])
    if pool is not None and len(expected):
        n = len(expected) // p["pool_size"] * p["pool_size"]
        windows = expected[:n].reshape(-1, p["pool_size"])
        expected = windows.max(axis=1) if p["pool"] == "max" else windows.mean(axis=1)
    if len(expected) == 0:
        with pytest.raises(GeometryError):
            stack.geometry((1, p["length"], 1))
        return
    reported = stack.geometry((1, p["length"], 1))
    assert [g.type for g in reported] == ["conv1d"] + (
        [] if pool is None else ["max_pooling1d" if p["pool"] == "max" else "average_pooling1d"])
    assert reported[0].weights_shape == (p["k"], 1, 1)
    output, _, _ = stack.run(x.astype(np.float32).reshape(1, -1, 1))
    assert output.shape == reported[-1].output_shape == (1, len(expected), 1)
    np.testing.assert_allclose(output[0, :, 0], expected, rtol=1e-4, atol=1e-4)
