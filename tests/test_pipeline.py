"""Pipeline files (``--pipeline``): parsing, validation messages, geometry and running.

Shapes, parameter counts and receptive fields are checked against tables computed
here from the Keras formulas and the standard recurrence, never by calling
:mod:`convcli.geometry`; outputs against scipy/numpy references.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from convcli.errors import GeometryError, KernelError, OptionError
from convcli.layer import Activation, Border, PaddingMode, PoolMode
from convcli.pipeline import MAX_PIPELINE_BYTES, MAX_YAML_ALIASES, load_pipeline, parse_pipeline
from convcli.stack import ConvStep, PoolStep

REPO = Path(__file__).resolve().parents[1]
VGG16 = REPO / "examples" / "vgg16.yaml"
EDGE_POOL = REPO / "examples" / "edge-pool.yaml"

VGG16_BLOCKS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]


def _parse(layers, **kw):
    return parse_pipeline({"layers": layers}, base_dir=kw.pop("base_dir", "."), source=kw.pop("source", "net.yaml"))


# --------------------------------------------------------------------------- VGG16


def _vgg16_reference(h: int, w: int, c: int):
    """Keras' VGG16 base, layer by layer: (name, output shape, params, MACs, rf, jump).

    Conv2D(F, 3, padding='same'): shape kept, params (3·3·cin + 1)·F, MACs H·W·F·9·cin;
    MaxPooling2D(2): floor halving. Receptive field r += (k−1)·j, j *= s.
    """
    rows, rf, jump = [], 1, 1
    for block, (filters, convs) in enumerate(VGG16_BLOCKS, 1):
        for i in range(1, convs + 1):
            params = (3 * 3 * c + 1) * filters
            macs = h * w * filters * 9 * c
            c = filters
            rf += 2 * jump
            rows.append((f"block{block}_conv{i}", (h, w, c), params, macs, rf, jump))
        h, w = h // 2, w // 2
        rf += jump
        jump *= 2
        rows.append((f"block{block}_pool", (h, w, c), 0, 0, rf, jump))
    return rows


def test_vgg16_example_matches_keras_on_224x224x3():
    stack = load_pipeline(VGG16)
    assert len(stack.steps) == 18
    assert sum(isinstance(s, ConvStep) for s in stack.steps) == 13
    assert sum(isinstance(s, PoolStep) for s in stack.steps) == 5
    geometry = stack.geometry((224, 224, 3))
    expected = _vgg16_reference(224, 224, 3)
    for g, (name, shape, params, macs, rf, jump) in zip(geometry, expected):
        assert (g.name, g.output_shape, g.params, g.macs) == (name, shape, params, macs)
        assert (g.receptive_field, g.jump) == ((rf, rf), (jump, jump))
    # Keras' published numbers (model.summary() of VGG16(include_top=False)).
    assert geometry[0].output_shape == (224, 224, 64) and geometry[0].params == 1_792
    assert geometry[1].output_shape == (224, 224, 64) and geometry[1].params == 36_928
    assert sum(g.params for g in geometry) == 14_714_688
    assert geometry[-1].output_shape == (7, 7, 512)
    assert geometry[-1].receptive_field == (212, 212) and geometry[-1].jump == (32, 32)
    assert geometry[1].weights_shape == (3, 3, 64, 64) and geometry[1].bias_shape == (64,)


@pytest.mark.parametrize("shape", [(225, 199, 3), (64, 96, 1), (33, 32, 4)])
def test_vgg16_on_odd_and_even_sizes(shape):
    geometry = load_pipeline(VGG16).geometry(shape)
    for g, (name, out, params, macs, rf, jump) in zip(geometry, _vgg16_reference(*shape)):
        assert (g.name, g.output_shape, g.params, g.macs, g.receptive_field, g.jump) == \
            (name, out, params, macs, (rf, rf), (jump, jump))


def test_vgg16_cannot_run_and_names_the_layer():
    stack = load_pipeline(VGG16)
    with pytest.raises(GeometryError, match=r"vgg16\.yaml: layers\[0\] \(block1_conv1\): has no weights"):
        stack.check_runnable()
    with pytest.raises(GeometryError, match=r"layers\[0\] \(block1_conv1\): has no weights"):
        stack.run(np.zeros((8, 8, 3), np.float32))


def test_vgg16_too_small_input_names_the_layer():
    # 16×16: after four pools the map is 1×1; the fifth pool (2×2 valid) has nothing to pool.
    with pytest.raises(GeometryError, match=r"layers\[17\] \(block5_pool\): pool 2×2 is larger than its input 1×1"):
        load_pipeline(VGG16).geometry((16, 16, 3))


# --------------------------------------------------------------------------- receptive field


def _out_size(n, k, s, d, padding):
    extent = (k - 1) * d + 1
    return math.ceil(n / s) if padding == "same" else (n - extent) // s + 1


@pytest.mark.parametrize("seed", range(12))
def test_receptive_field_and_shapes_follow_the_recurrence(seed):
    rng = np.random.default_rng(seed)
    layers, reference = [], []
    h, w, c = int(rng.integers(150, 260)), int(rng.integers(150, 260)), int(rng.integers(1, 5))
    shape = (h, w, c)
    r, j = [1, 1], [1, 1]
    for index in range(int(rng.integers(2, 7))):
        if index == 0 or rng.random() < 0.6:
            k = [int(v) for v in rng.integers(1, 6, 2)]
            s = [int(v) for v in rng.integers(1, 3, 2)]
            d = [int(v) for v in rng.integers(1, 3, 2)]
            f = int(rng.integers(1, 9))
            padding = str(rng.choice(["valid", "same"]))
            out_h, out_w = _out_size(h, k[0], s[0], d[0], padding), _out_size(w, k[1], s[1], d[1], padding)
            if min(out_h, out_w) < 1:
                break  # the map is too small for more layers; geometry's error is tested elsewhere
            layers.append({"conv": {"filters": f, "kernel_size": k, "stride": s, "dilation": d, "padding": padding}})
            h, w = out_h, out_w
            params = (k[0] * k[1] * c + 1) * f
            c = f
        else:
            k = [int(v) for v in rng.integers(2, 4, 2)]
            s = [int(v) for v in rng.integers(1, 4, 2)]
            d = [1, 1]
            padding = str(rng.choice(["valid", "same"]))
            out_h, out_w = _out_size(h, k[0], s[0], 1, padding), _out_size(w, k[1], s[1], 1, padding)
            if min(out_h, out_w) < 1:
                break
            layers.append({"pool": {"mode": str(rng.choice(["max", "avg"])), "size": k, "stride": s,
                                    "padding": padding}})
            h, w = out_h, out_w
            params = 0
        for axis in (0, 1):
            r[axis] += (k[axis] - 1) * d[axis] * j[axis]
            j[axis] *= s[axis]
        reference.append(((h, w, c), params, tuple(r), tuple(j)))
    stack = _parse(layers)
    for g, (out, params, rf, jump) in zip(stack.geometry(shape), reference):
        assert (g.output_shape, g.params, g.receptive_field, g.jump) == (out, params, rf, jump)


# --------------------------------------------------------------------------- names


def test_default_names_are_keras_like():
    stack = _parse([
        {"conv": {"filters": 2, "kernel_size": 3}},
        {"pool": {"mode": "max"}},
        {"conv": {"filters": 2, "kernel_size": 3, "depthwise": True}},
        {"conv": {"filters": 2, "kernel_size": 1}},
        {"pool": {"mode": "avg"}},
        {"pool": None},
        {"pool": {"mode": "avg", "size": 1}},
        {"conv": {"filters": 2, "kernel_size": 1, "depthwise": True}},
    ])
    assert [s.name for s in stack.steps] == [
        "conv2d", "max_pooling2d", "depthwise_conv2d", "conv2d_1", "average_pooling2d", "max_pooling2d_1",
        "average_pooling2d_1", "depthwise_conv2d_1",
    ]


def test_default_names_skip_names_given_by_the_user():
    stack = _parse([
        {"conv": {"filters": 2, "kernel_size": 3}},
        {"conv": {"filters": 2, "kernel_size": 3, "name": "conv2d_1"}},
        {"conv": {"filters": 2, "kernel_size": 3}},
    ])
    assert [s.name for s in stack.steps] == ["conv2d", "conv2d_1", "conv2d_2"]


def test_defaults_are_the_cli_defaults():
    stack = _parse([{"conv": {"filters": 3, "kernel_size": "3,5"}}, {"pool": {}}])
    conv, pool = stack.steps
    assert conv.kernel_size == (3, 5) and conv.filters == 3 and conv.use_bias
    spec = conv.spec
    assert (spec.stride, spec.dilation, spec.padding.mode, spec.border, spec.flip, spec.depthwise,
            spec.activation, spec.negative_slope) == (
        (1, 1), (1, 1), PaddingMode.VALID, Border.ZEROS, False, False, Activation.NONE, 0.3)
    assert (pool.spec.mode, pool.spec.size, pool.spec.strides, pool.spec.padding) == (
        PoolMode.MAX, (2, 2), (2, 2), PaddingMode.VALID)


def test_values_take_the_cli_syntax():
    stack = _parse([
        {"conv": {"filters": 4, "kernel_size": [3, 1], "stride": "2,1", "dilation": 2, "padding": "1,2,3,4",
                  "border": "reflect", "flip": True, "activation": "leaky_relu", "negative_slope": 0.1,
                  "bias": False}},
        {"pool": {"mode": "avg", "size": "3", "stride": [1, 2], "padding": "same"}},
    ])
    conv, pool = stack.steps
    spec = conv.spec
    assert spec.stride == (2, 1) and spec.dilation == (2, 2)
    assert spec.padding.mode is PaddingMode.EXPLICIT and spec.padding.amounts == (1, 2, 3, 4)
    assert spec.border is Border.REFLECT and spec.flip and spec.activation is Activation.LEAKY_RELU
    assert spec.negative_slope == pytest.approx(0.1) and not conv.use_bias
    assert (pool.spec.mode, pool.spec.size, pool.spec.strides, pool.spec.padding) == (
        PoolMode.AVG, (3, 3), (1, 2), PaddingMode.SAME)
    # use_bias false: Keras counts kh·kw·cin·F parameters.
    assert stack.geometry((20, 21, 2))[0].params == 3 * 1 * 2 * 4


def test_json_pipeline(tmp_path):
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"layers": [{"conv": {"filters": 8, "kernel_size": 3, "padding": "same"}},
                                           {"pool": {"size": 2}}]}))
    geometry = load_pipeline(path).geometry((31, 30, 3))
    assert [g.output_shape for g in geometry] == [(31, 30, 8), (15, 15, 8)]
    assert geometry[0].params == (27 + 1) * 8


def test_yaml_aliases_reuse_a_layer(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text("layers:\n  - conv: &c {filters: 4, kernel_size: 3}\n  - conv: *c\n")
    stack = load_pipeline(path)
    assert [s.name for s in stack.steps] == ["conv2d", "conv2d_1"]
    assert [g.output_shape for g in stack.geometry((10, 9, 1))] == [(8, 7, 4), (6, 5, 4)]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("layers, error, match", [
    ([{"conv": {"filters": 2, "kernel_size": 3}}, {"pool": {}}, {"conv": {"filters": 2, "kernel_size": 3, "stride": 0}}],
     OptionError, r"^net\.yaml: layers\[2\]\.stride: must be at least 1, got \(0, 0\)$"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "dilation": "1,0"}}],
     OptionError, r"layers\[0\]\.dilation: must be at least 1, got 1,0"),
    ([{"conv": {"filters": 2, "kernel_size": 0}}], OptionError, r"layers\[0\]\.kernel_size: must be at least 1"),
    ([{"conv": {"filters": 2, "kernel_size": [1, 2, 3]}}], OptionError,
     r"layers\[0\]\.kernel_size: expected N or NH,NW, got 3 numbers"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "padding": "sometimes"}}], OptionError,
     r"layers\[0\]\.padding: 'sometimes' is not valid, same, full, causal"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "padding": -1}}], OptionError,
     r"layers\[0\]\.padding: padding amounts must be >= 0"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "border": "mirror"}}], OptionError,
     r"layers\[0\]\.border: 'mirror' is not one of zeros, reflect, replicate, circular"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "activation": "gelu"}}], OptionError,
     r"layers\[0\]\.activation: 'gelu' is not one of none, relu"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "negative_slope": "steep"}}], OptionError,
     r"layers\[0\]\.negative_slope: expected a number, got 'steep'"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "negative_slope": float("nan")}}], OptionError,
     r"layers\[0\]\.negative_slope: expected a number, got nan"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "depthwise": "yes"}}], OptionError,
     r"layers\[0\]\.depthwise: expected true or false, got 'yes'"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "flip": 1}}], OptionError,
     r"layers\[0\]\.flip: expected true or false, got 1"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "strides": 2}}], OptionError,
     r"layers\[0\]\.conv: unknown key 'strides' \(known: kernels, filters, kernel_size, stride,"),
    ([{"conv": {"filters": 2, "kernel_size": 3}}, {"pool": {"pool_size": 2}}], OptionError,
     r"layers\[1\]\.pool: unknown key 'pool_size' \(known: mode, size, stride, padding, name\)"),
    ([{"conv": {"filters": 2, "kernel_size": 3}}, {"dense": {"units": 10}}], OptionError,
     r"layers\[1\]: 'dense' is not a layer type; use conv or pool"),
    ([{"conv": {"filters": 2, "kernel_size": 3}, "pool": {}}], OptionError,
     r"layers\[0\]: expected one of \{conv: \{\.\.\.\}\} or \{pool: \{\.\.\.\}\}, got keys 'conv', 'pool'"),
    (["conv"], OptionError, r"layers\[0\]: expected one of .* got a string"),
    ([{}], OptionError, r"layers\[0\]: expected one of .* got a mapping"),
    ([{"conv": None}], OptionError, r"layers\[0\]\.conv: expected a mapping of options, got nothing"),
    ([{"conv": [3, 3]}], OptionError, r"layers\[0\]\.conv: expected a mapping of options, got a list"),
    ([{"conv": {"kernels": ["edge"], "filters": 2}}], OptionError,
     r"layers\[0\]\.conv: give either kernels or filters \+ kernel_size, not both \(got kernels and filters\)"),
    ([{"conv": {"stride": 2}}], OptionError,
     r"layers\[0\]\.conv: needs kernels \(built-in names or kernel files\) or filters \+ kernel_size"),
    ([{"conv": {"filters": 2}}], OptionError,
     r"layers\[0\]\.conv: a shape-only layer needs both filters and kernel_size; kernel_size is missing"),
    ([{"conv": {"kernel_size": 3}}], OptionError,
     r"layers\[0\]\.conv: a shape-only layer needs both filters and kernel_size; filters is missing"),
    ([{"conv": {"filters": 0, "kernel_size": 3}}], OptionError,
     r"layers\[0\]\.filters: expected a whole number of at least 1, got 0"),
    ([{"conv": {"filters": 2.5, "kernel_size": 3}}], OptionError,
     r"layers\[0\]\.filters: expected a whole number of at least 1, got 2\.5"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "bias": [1, 2, 3]}}], OptionError,
     r"layers\[0\]\.bias: 3 values for 2 filters; give one number or 2"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "bias": []}}], OptionError,
     r"layers\[0\]\.bias: the list is empty"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "bias": "none"}}], OptionError,
     r"layers\[0\]\.bias: expected true, false, a number or a list of numbers, got 'none'"),
    ([{"conv": {"filters": 2, "kernel_size": 3}}, {"pool": {"mode": "min"}}], OptionError,
     r"layers\[1\]\.mode: 'min' is not one of max, avg"),
    ([{"conv": {"filters": 2, "kernel_size": 3}}, {"pool": {"size": 0}}], OptionError,
     r"layers\[1\]\.size: must be at least 1, got \(0, 0\)"),
    ([{"conv": {"filters": 2, "kernel_size": 3}}, {"pool": {"stride": "2,0"}}], OptionError,
     r"layers\[1\]\.stride: must be at least 1, got 2,0"),
    ([{"conv": {"filters": 2, "kernel_size": 3}}, {"pool": {"padding": "full"}}], OptionError,
     r"layers\[1\]\.padding: 'full' is not one of valid, same"),
    ([{"conv": {"filters": 2, "kernel_size": 3}}, {"pool": {"padding": 1}}], OptionError,
     r"layers\[1\]\.padding: 1 is not one of valid, same"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "name": "../escape"}}], OptionError,
     r"layers\[0\]\.name: '\.\./escape' is not a layer name"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "name": 7}}], OptionError,
     r"layers\[0\]\.name: 7 is not a layer name"),
    ([{"conv": {"filters": 2, "kernel_size": 3, "name": "a"}}, {"pool": {"name": "a"}}], OptionError,
     r"layers\[1\]\.name: 'a' is already the name of layers\[0\]"),
    ([], OptionError, r"^net\.yaml: layers: the list is empty; give at least one conv layer$"),
    ([{"pool": {}}], OptionError, r"layers: no conv layer among the 1 layers; give at least one"),
])
def test_validation_errors_name_the_layer_and_key(layers, error, match):
    with pytest.raises(error, match=match):
        _parse(layers)


@pytest.mark.parametrize("data, match", [
    ([{"conv": {}}], r"^net\.yaml: expected a mapping with a 'layers' list at the top, got a list$"),
    ({"layers": [], "input": "224x224x3"}, r"net\.yaml: unknown key 'input' \(known: layers, name, description\)"),
    ({"name": "x"}, r"net\.yaml: no 'layers' list"),
    ({"layers": {"conv": {}}}, r"net\.yaml: layers: expected a list of conv and pool layers, got a mapping"),
])
def test_top_level_errors(data, match):
    with pytest.raises(OptionError, match=match):
        parse_pipeline(data, base_dir=".", source="net.yaml")


def test_name_and_description_are_accepted():
    stack = parse_pipeline({"name": "tiny", "description": "one layer",
                            "layers": [{"conv": {"filters": 1, "kernel_size": 1}}]}, base_dir=".", source="x")
    assert len(stack.steps) == 1


def test_file_errors(tmp_path):
    with pytest.raises(OptionError, match=r"missing\.yaml: cannot read the pipeline file \(No such file"):
        load_pipeline(tmp_path / "missing.yaml")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_PIPELINE_BYTES + 1))
    with pytest.raises(OptionError, match=r"big\.yaml: pipeline file is larger than 1,048,576 bytes"):
        load_pipeline(big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"layers: \xff\xfe")
    with pytest.raises(OptionError, match=r"bin\.yaml: not a UTF-8 text file \(byte 8\)"):
        load_pipeline(binary)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("layers:\n  - conv: {filters: 2\n")
    with pytest.raises(OptionError, match=r"bad\.yaml: invalid YAML at line 3, column 1: "):
        load_pipeline(bad_yaml)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"layers": [}')
    with pytest.raises(OptionError, match=r"bad\.json: invalid JSON at line 1, column 13: Expecting value"):
        load_pipeline(bad_json)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("layers: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(OptionError, match=r"unsafe\.yaml: invalid YAML at line 1, column 9: .*constructor"):
        load_pipeline(unsafe)


def test_alias_bomb_is_refused(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nlayers: []\n")
    with pytest.raises(OptionError, match=rf"bomb\.yaml: invalid YAML at line \d+, column \d+: more than {MAX_YAML_ALIASES} aliases"):
        load_pipeline(path)


def test_geometry_errors_name_file_and_layer():
    stack = _parse([{"conv": {"filters": 2, "kernel_size": 3}}, {"pool": {}},
                    {"conv": {"filters": 2, "kernel_size": 5}}])
    with pytest.raises(GeometryError, match=(
            r"^net\.yaml: layers\[2\] \(conv2d_1\): kernel extent 5×5 \(kernel 5×5, dilation 1,1\) is larger than"
            r" the padded input 3×4 \(input 3×4, padding valid\); the output would be 0×0$")):
        stack.geometry((8, 10, 1))
    causal = _parse([{"conv": {"filters": 1, "kernel_size": [1, 3], "padding": "causal"}}])
    with pytest.raises(GeometryError, match=r"layers\[0\] \(conv2d\): padding 'causal' is for 1-D signals"):
        causal.geometry((4, 8, 1))
    assert causal.geometry((1, 8, 1))[0].output_shape == (1, 8, 1)


def test_shape_only_layer_makes_check_runnable_fail_naming_it():
    stack = parse_pipeline({"layers": [{"conv": {"kernels": "3x3: 0,0,0 0,1,0 0,0,0"}},
                                       {"conv": {"filters": 4, "kernel_size": 3, "name": "head"}}]},
                           base_dir=".", source="two.yaml")
    with pytest.raises(GeometryError, match=r"^two\.yaml: layers\[1\] \(head\): has no weights \(filters \+ kernel_size"):
        stack.check_runnable()
