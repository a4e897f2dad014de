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
    parse_input_shape,
    pool_layer,
    pool_output_hw,
)
from convcli.layer import ConvSpec, Padding, PaddingMode, PoolSpec, parse_pair


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
