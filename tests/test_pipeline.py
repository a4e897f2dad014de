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
from convcli.pipeline import MAX_PIPELINE_BYTES, load_pipeline, parse_pipeline
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
    with pytest.raises(OptionError, match=r"missing\.yaml: cannot read: No such file"):
        load_pipeline(tmp_path / "missing.yaml")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_PIPELINE_BYTES + 1))
    with pytest.raises(OptionError, match=r"big\.yaml: 1\.0 MiB, larger than the 1 MiB allowed for a pipeline file"):
        load_pipeline(big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"layers: \xff\xfe")
    with pytest.raises(OptionError, match=r"bin\.yaml: not UTF-8 text \(byte 0xff at offset 8\)"):
        load_pipeline(binary)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("layers:\n  - conv: {filters: 2\n")
    with pytest.raises(OptionError, match=r"bad\.yaml: invalid YAML: did not find expected ',' or '\}' at line 3, column 1"):
        load_pipeline(bad_yaml)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"layers": [}')
    with pytest.raises(OptionError, match=r"bad\.json: invalid JSON: Expecting value at line 1, column 13"):
        load_pipeline(bad_json)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("layers: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(OptionError, match=r"unsafe\.yaml: line 1: unsupported YAML tag 'tag:yaml\.org,2002:python/object"):
        load_pipeline(unsafe)


def test_alias_bomb_is_refused(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nlayers: []\n")
    with pytest.raises(OptionError, match=r"bomb\.yaml: YAML aliases expand to more than 1000000 nodes"):
        load_pipeline(path)
    deep = tmp_path / "deep.yaml"
    deep.write_text("layers: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(OptionError, match=r"deep\.yaml: line 1: nested deeper than 32 levels"):
        load_pipeline(deep)
    twice = tmp_path / "twice.yaml"
    twice.write_text("layers: []\nlayers: []\n")
    with pytest.raises(OptionError, match=r"twice\.yaml: line 2: duplicate key 'layers'"):
        load_pipeline(twice)


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
    # A one-row image is 2-D (Keras Conv2D has no causal padding); a signal takes it, as Conv1D.
    with pytest.raises(GeometryError, match=r"^net\.yaml: layers\[0\] \(conv2d\): padding 'causal' is for 1-D signals"
                                            r" \(Keras Conv1D\), but this layer is 2-D on a 1×8×1 input"):
        causal.geometry((1, 8, 1))
    assert causal.for_signal().geometry((1, 8, 1))[0].output_shape == (1, 8, 1)


def test_shape_only_layer_makes_check_runnable_fail_naming_it():
    stack = parse_pipeline({"layers": [{"conv": {"kernels": "3x3: 0,0,0 0,1,0 0,0,0"}},
                                       {"conv": {"filters": 4, "kernel_size": 3, "name": "head"}}]},
                           base_dir=".", source="two.yaml")
    with pytest.raises(GeometryError, match=r"^two\.yaml: layers\[1\] \(head\): has no weights \(filters \+ kernel_size"):
        stack.check_runnable()


# --------------------------------------------------------------------------- kernels


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


LINE_KERNEL = "name: line\nweights:\n  - [0, 1, 0]\n  - [0, 1, 0]\n  - [0, 1, 0]\nbias: 0.5\n"


def test_kernel_paths_are_relative_to_the_pipeline_file(tmp_path, monkeypatch):
    _write(tmp_path / "nets" / "k" / "line.yaml", LINE_KERNEL)
    _write(tmp_path / "nets" / "net.yaml", "layers:\n  - conv: {kernels: [k/line.yaml, edge], padding: same}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    stack = load_pipeline(Path("..") / "nets" / "net.yaml")
    bank = stack.steps[0].bank
    assert bank.names == ["line", "edge"]
    np.testing.assert_array_equal(bank.kernels[0].weights, np.array([[0, 1, 0]] * 3, np.float32))
    assert bank.kernels[0].bias == 0.5
    # A file of that name in the working folder is not the pipeline's kernel.
    _write(elsewhere / "k" / "other.yaml", LINE_KERNEL)
    _write(tmp_path / "nets" / "bad.yaml", "layers:\n  - conv: {kernels: k/other.yaml}\n")
    with pytest.raises(KernelError, match=r"bad\.yaml: layers\[0\]\.kernels: 'k/other\.yaml': no such kernel file"
                                          r" \(looked for \.\./nets/k/other\.yaml\)"):
        load_pipeline(Path("..") / "nets" / "bad.yaml")


def test_kernels_may_be_one_string_builtin_or_inline():
    stack = _parse([{"conv": {"kernels": "sobel-x"}}, {"conv": {"kernels": ["3x3: 0,0,0 0,1,0 0,0,0", "edge"]}}])
    assert stack.steps[0].bank.filters == 1 and stack.steps[0].bank.names[0] == "sobel-x"
    assert stack.steps[1].bank.filters == 2 and stack.steps[1].bank.size == (3, 3)


@pytest.mark.parametrize("kernels, error, match", [
    ([], OptionError, r"layers\[0\]\.kernels: the list is empty; give at least one kernel"),
    ([3], OptionError, r"layers\[0\]\.kernels: expected kernel file paths, built-in names or inline matrices, got 3"),
    ([""], OptionError, r"layers\[0\]\.kernels: expected kernel file paths, .* got ''"),
    (["no-such-kernel-name"], KernelError, r"^net\.yaml: layers\[0\]\.kernels: 'no-such-kernel-name': no kernel file"
                                           r" \S*no-such-kernel-name and no built-in kernel of that name \(built-ins: .*edge"),
    (["edge", "gaussian-blur"], KernelError, r"^net\.yaml: layers\[0\]\.kernels: the kernels of one layer must have the"
                                             r" same size: kernel 'edge' \(built-in edge\) is 3x3, kernel 'gaussian-blur'"),
    (["4x4: 1"], KernelError, r"^net\.yaml: layers\[0\]\.kernels: inline"),
    (["missing.yaml"], KernelError, r"layers\[0\]\.kernels: 'missing\.yaml': no such kernel file"),
])
def test_kernel_errors_name_the_layer(kernels, error, match):
    with pytest.raises(error, match=match):
        _parse([{"conv": {"kernels": kernels}}])


def test_bias_overrides_and_use_bias(tmp_path):
    _write(tmp_path / "line.yaml", LINE_KERNEL)
    stack = _parse([
        {"conv": {"kernels": ["sobel-x", "sobel-y"], "bias": -1.5}},
        {"conv": {"kernels": ["sobel-x", "sobel-y"], "bias": [1, 2]}},
        {"conv": {"kernels": ["line.yaml"]}},
        {"conv": {"kernels": ["line.yaml"], "bias": False}},
    ], base_dir=tmp_path)
    banks = [s.bank for s in stack.steps]
    np.testing.assert_array_equal(banks[0].biases(), np.float32([-1.5, -1.5]))
    np.testing.assert_array_equal(banks[1].biases(), np.float32([1, 2]))
    np.testing.assert_array_equal(banks[2].biases(), np.float32([0.5]))
    np.testing.assert_array_equal(banks[3].biases(), np.float32([0]))
    assert [s.use_bias for s in stack.steps] == [True, True, True, False]
    params = [g.params for g in stack.geometry((9, 9, 1))]
    # Inputs: 1, 2, 2 and 1 channels; Keras counts (kh·kw·cin + use_bias)·F.
    assert params == [(9 + 1) * 2, (9 * 2 + 1) * 2, 9 * 2 + 1, 9 * 1]
    with pytest.raises(OptionError, match=r"layers\[0\]\.bias: 3 values for 2 filters; give one number or 2"):
        _parse([{"conv": {"kernels": ["sobel-x", "sobel-y"], "bias": [1, 2, 3]}}])


def test_depth_mismatch_names_the_layer_and_both_depths(tmp_path):
    deep = [[[1, 0] for _ in range(3)] for _ in range(3)]  # 3×3×2
    _write(tmp_path / "deep.yaml", json.dumps({"name": "deep", "weights": deep}))
    stack = _parse([{"conv": {"kernels": ["sobel-x", "sobel-y", "edge"]}},
                    {"conv": {"kernels": ["deep.yaml"]}}], base_dir=tmp_path)
    with pytest.raises(GeometryError, match=(r"^net\.yaml: layers\[1\] \(conv2d_1\): kernels are 3×3×2 but the input"
                                             r" has 3 channels \(6×7×3\)$")):
        stack.geometry((8, 9, 1))
    # The same kernel fits the 2-channel output of two filters; 2-D kernels fit any depth.
    fits = _parse([{"conv": {"kernels": ["sobel-x", "sobel-y"]}}, {"conv": {"kernels": ["deep.yaml"]}},
                   {"conv": {"kernels": ["edge"]}}], base_dir=tmp_path)
    assert [g.output_shape for g in fits.geometry((10, 11, 5))] == [(8, 9, 2), (6, 7, 1), (4, 5, 1)]
    with pytest.raises(GeometryError, match=r"layers\[0\] \(conv2d\): kernels are 3×3×2 but the input has 1 channel \(8×8×1\)"):
        _parse([{"conv": {"kernels": ["deep.yaml"]}}], base_dir=tmp_path).geometry((8, 8, 1))


# --------------------------------------------------------------------------- running


def _tf_same_pads(k: int) -> tuple[int, int]:
    # Stride 1: pad_total = k − 1, the odd pixel after (TensorFlow).
    return (k - 1) // 2, (k - 1) - (k - 1) // 2


def _ref_conv(x, kernels, biases, activation, padding):
    from scipy.signal import correlate2d

    kh, kw = kernels[0].shape
    if padding == "same":
        (t, b), (l, r) = _tf_same_pads(kh), _tf_same_pads(kw)
        x = np.pad(x, ((t, b), (l, r), (0, 0)))
    maps = []
    for kernel, bias in zip(kernels, biases):
        acc = sum(correlate2d(x[:, :, c].astype(np.float64), kernel.astype(np.float64), mode="valid")
                  for c in range(x.shape[2]))
        maps.append(acc + bias)
    out = np.stack(maps, axis=2)
    return {"relu": np.maximum(out, 0), "abs": np.abs(out), "none": out}[activation]


def _ref_pool(x, size, reduce, padding):
    h, w, c = x.shape
    if padding == "same":  # pad with NaN; nanmax/nanmean ignore it (Keras: padded cells don't count)
        oh, ow = -(-h // size), -(-w // size)
        x = np.pad(x, ((0, oh * size - h), (0, ow * size - w), (0, 0)), constant_values=np.nan)
    else:
        oh, ow = h // size, w // size
        x = x[:oh * size, :ow * size]
    return reduce(x.reshape(oh, size, ow, size, c), axis=(1, 3))


RUN_LAYERS = [
    {"conv": {"kernels": ["sobel-x", "sobel-y"], "padding": "same", "activation": "relu", "bias": [-10, 5]}},
    {"pool": {"mode": "max", "size": 2}},
    # Even-sized kernels: TensorFlow's same padding puts the odd pixel at the bottom/right.
    {"conv": {"kernels": ["4x4: 1,0,0,-1 0,2,-2,0 0,1,1,0 -1,0,0,1", "4x4: 1,1,1,1 0,0,0,0 0,0,0,0 -1,-1,-1,-2"],
              "padding": "same", "activation": "abs"}},
    {"pool": {"mode": "avg", "size": 2, "padding": "same"}},
]


@pytest.mark.parametrize("shape", [(23, 30, 3), (24, 17, 1)])
def test_run_matches_an_independent_reference_and_the_engine_layer_by_layer(shape):
    from convcli import engine

    stack = _parse(RUN_LAYERS)
    x = np.random.default_rng(sum(shape)).uniform(0, 255, shape).astype(np.float32)
    output, algorithms, intermediates = stack.run(x, keep_all=True)
    assert output.dtype == np.float32 and len(algorithms) == 2 and len(intermediates) == 4

    first, third = stack.steps[0].bank, stack.steps[2].bank
    ref = _ref_conv(x, [k.weights for k in first.kernels], [-10, 5], "relu", "same")
    ref = _ref_pool(ref, 2, np.max, "valid")
    ref = _ref_conv(ref, [k.weights for k in third.kernels], [0, 0], "abs", "same")
    expected_shapes = [g.output_shape for g in stack.geometry(shape)]
    assert [a.shape for a in intermediates] == expected_shapes
    np.testing.assert_allclose(intermediates[2], ref, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(output, _ref_pool(ref, 2, np.nanmean, "same"), rtol=1e-5, atol=1e-3)

    # Layer by layer through the engine gives the same arrays.
    y = x
    for step, kept in zip(stack.steps, intermediates):
        y = engine.run_layer(y, step.bank, step.spec).output if isinstance(step, ConvStep) else engine.pool2d(y, step.spec)
        np.testing.assert_array_equal(y, kept)


# --------------------------------------------------------------------------- through the CLI


def _cli(*args, status=0):
    from click.testing import CliRunner

    from convcli.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == status, (result.exit_code, result.output, result.stderr)
    return result


def _yaml_layers(layers) -> str:
    return "layers:\n" + "".join(f"  - {json.dumps(entry)}\n" for entry in layers)  # JSON is YAML


CLI_LAYERS = [
    {"conv": {"kernels": ["sobel-x", "sobel-y"], "padding": "same", "activation": "relu"}},
    {"pool": {"mode": "max", "size": 2}},
    {"conv": {"kernels": ["k/line.yaml", "edge"], "padding": "same", "activation": "abs"}},
    {"pool": {"mode": "avg", "size": 2, "padding": "same"}},
]


@pytest.mark.parametrize("shape", [(37, 41, 3), (30, 24, 1)])
def test_apply_pipeline_equals_apply_layer_by_layer_through_npy(tmp_path, shape):
    _write(tmp_path / "k" / "line.yaml", LINE_KERNEL)  # bias 0.5, found relative to net.yaml
    net = _write(tmp_path / "net.yaml", _yaml_layers(CLI_LAYERS))
    x = np.random.default_rng(shape[0]).uniform(0, 255, shape).astype(np.float32)
    np.save(tmp_path / "img.npy", x)
    _cli("apply", tmp_path / "img.npy", "--pipeline", net, "--format", "npy", "-o", tmp_path / "piped", "-q")

    # The same stack as two single-layer `apply` runs (conv + pool each), .npy in between.
    _cli("apply", tmp_path / "img.npy", "-k", "sobel-x", "-k", "sobel-y", "--padding", "same",
         "--activation", "relu", "--pool", "max", "--format", "npy", "-o", tmp_path / "step1", "-q")
    _cli("apply", tmp_path / "step1" / "img.npy", "-k", tmp_path / "k" / "line.yaml", "-k", "edge",
         "--padding", "same", "--activation", "abs", "--pool", "avg", "--pool-padding", "same",
         "--format", "npy", "-o", tmp_path / "step2", "-q")
    piped = np.load(tmp_path / "piped" / "img.npy")
    assert piped.shape == (-(-(shape[0] // 2) // 2), -(-(shape[1] // 2) // 2), 2)
    np.testing.assert_array_equal(piped, np.load(tmp_path / "step2" / "img.npy"))


def test_apply_save_all_writes_one_folder_per_layer(tmp_path):
    _write(tmp_path / "k" / "line.yaml", LINE_KERNEL)
    net = _write(tmp_path / "net.yaml", _yaml_layers(CLI_LAYERS))
    x = np.random.default_rng(5).uniform(0, 255, (21, 26, 3)).astype(np.float32)
    np.save(tmp_path / "img.npy", x)
    _cli("apply", tmp_path / "img.npy", "--pipeline", net, "--format", "npy", "--save-all", "-o", tmp_path / "out", "-q")
    _, _, intermediates = load_pipeline(net).run(x, keep_all=True)
    folders = ["01-conv2d", "02-max_pooling2d", "03-conv2d_1", "04-average_pooling2d"]
    assert sorted(p.name for p in (tmp_path / "out" / "img").iterdir()) == folders
    for folder, expected in zip(folders, intermediates):
        np.testing.assert_array_equal(np.load(tmp_path / "out" / "img" / folder / "img.npy"), expected)


def test_apply_save_all_on_a_signal_names_the_folders_as_keras_1d_layers(tmp_path):
    net = _write(tmp_path / "net.yaml", "layers:\n  - conv: {kernels: [bump], padding: 1}\n  - pool: {size: 2}\n")
    signal = np.array([0, 0, 0, 1, 1, 0, 0, 0], np.float32)
    np.save(tmp_path / "sig.npy", signal)
    _cli("apply", tmp_path / "sig.npy", "--pipeline", net, "--format", "npy", "--save-all", "-o", tmp_path / "out", "-q")
    conv = np.correlate(np.pad(signal, 1), [0, 1, 0], mode="valid")  # Conv1d(padding=1), then MaxPooling1D(2)
    folders = {"01-conv1d": conv, "02-max_pooling1d": conv.reshape(-1, 2).max(axis=1)}
    assert sorted(p.name for p in (tmp_path / "out" / "sig").iterdir()) == sorted(folders)
    for folder, expected in folders.items():
        np.testing.assert_array_equal(np.load(tmp_path / "out" / "sig" / folder / "sig.npy"), expected.reshape(1, -1, 1))


def test_apply_refuses_a_shape_only_pipeline(tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((32, 32, 3), np.float32))
    result = _cli("apply", tmp_path / "img.npy", "--pipeline", VGG16, "-o", tmp_path, status=2)
    assert "layers[0] (block1_conv1): has no weights" in result.stderr
    assert not list(tmp_path.glob("*.png"))


def test_apply_refuses_a_layer_that_fits_no_input_before_reading_any(tmp_path):
    # Layer 1 gives 2 channels whatever the input; layer 2's 3×3×3 kernel can never fit it:
    # a usage error (exit 2) named by layer, even for inputs that would fail (missing file).
    deep = [[[1, 0, 0] for _ in range(3)] for _ in range(3)]
    _write(tmp_path / "deep.yaml", json.dumps({"name": "deep", "weights": deep}))
    net = _write(tmp_path / "net.yaml", _yaml_layers([{"conv": {"kernels": ["sobel-x", "sobel-y"]}},
                                                      {"pool": {"mode": "max"}},
                                                      {"conv": {"kernels": ["deep.yaml"]}}]))
    np.save(tmp_path / "img.npy", np.zeros((16, 16, 3), np.float32))
    result = _cli("apply", tmp_path / "img.npy", tmp_path / "missing.png", "--pipeline", net, "-o", tmp_path / "out",
                  status=2)
    assert result.stderr.strip().splitlines() == [
        "convcli: error: " + f"{net}: layers[2] (conv2d_1): kernels are 3×3×3 but the layer before gives 2 channels"]
    assert not (tmp_path / "out").exists()
    # After a depthwise layer the depth depends on the input: left to the input's check.
    ok = _write(tmp_path / "ok.yaml", _yaml_layers([{"conv": {"kernels": ["sobel-x"], "depthwise": True}},
                                                    {"conv": {"kernels": ["deep.yaml"]}}]))
    _cli("apply", tmp_path / "img.npy", "--pipeline", ok, "-o", tmp_path / "out2", "--format", "npy", "-q")
    assert np.load(tmp_path / "out2" / "img.npy").shape == (12, 12, 1)


def test_shape_pipeline_json_matches_keras(tmp_path):
    result = _cli("shape", "--pipeline", VGG16, "--input", "224x224x3", "--json")
    report = json.loads(result.output)
    assert report["input_shape"] == [224, 224, 3]
    assert report["total_params"] == 14_714_688
    rows = _vgg16_reference(224, 224, 3)
    assert [layer["output_shape"] for layer in report["layers"]] == [list(r[1]) for r in rows]
    assert [layer["params"] for layer in report["layers"]] == [r[2] for r in rows]
    assert report["total_macs"] == sum(r[3] for r in rows)


def test_shape_pipeline_error_exits_2_naming_the_layer(tmp_path):
    net = _write(tmp_path / "net.yaml", "layers:\n  - conv: {filters: 2, kernel_size: 3, stride: 0}\n")
    result = _cli("shape", "--pipeline", net, "--input", "8x8x1", status=2)
    assert "net.yaml: layers[0].stride: must be at least 1, got (0, 0)" in result.stderr


def test_edge_pool_example_on_the_sample_image():
    from convcli.io import read_input

    stack = load_pipeline(EDGE_POOL)
    assert [s.name for s in stack.steps] == ["conv2d", "max_pooling2d"]
    x = read_input(str(REPO / "sample_images" / "building.png")).array
    output, _, (edges, pooled) = stack.run(x, keep_all=True)
    bank = stack.steps[0].bank
    assert bank.names == ["sobel-x", "sobel-y"]
    ref = _ref_conv(x, [k.weights for k in bank.kernels], [0, 0], "abs", "same")
    np.testing.assert_allclose(edges, ref, rtol=1e-5, atol=1e-2)
    np.testing.assert_array_equal(output, _ref_pool(edges, 2, np.max, "valid"))
    assert output.shape == (x.shape[0] // 2, x.shape[1] // 2, 2)
    # The picture is not blank: both maps have edges.
    assert (output.reshape(-1, 2).max(axis=0) > 100).all()


# --------------------------------------------------------------------------- 1-D signals


def test_one_number_sizes_act_along_a_1d_signal_like_conv1d():
    # Keras: Conv1D(4, 5, strides=2) then MaxPooling1D(2) on length 100.
    stack = _parse([{"conv": {"filters": 4, "kernel_size": 5, "stride": 2}}, {"pool": {"size": 2}},
                    {"conv": {"filters": 2, "kernel_size": "3", "dilation": [2], "padding": "same"}}])
    length = 100
    conv_len = (length - 5) // 2 + 1
    pooled = conv_len // 2
    geometry = stack.for_signal().geometry((1, length, 1))
    assert [(g.name, g.type) for g in geometry] == [
        ("conv1d", "conv1d"), ("max_pooling1d", "max_pooling1d"), ("conv1d_1", "conv1d")]
    assert [g.output_shape for g in geometry] == [(1, conv_len, 4), (1, pooled, 4), (1, pooled, 2)]
    assert [g.params for g in geometry] == [(5 * 1 + 1) * 4, 0, (3 * 4 + 1) * 2]
    rf1, j1 = 1 + 4, 2
    rf2, j2 = rf1 + 1 * j1, j1 * 2
    rf3 = rf2 + 2 * 2 * j2
    assert [(g.receptive_field, g.jump) for g in geometry] == [
        ((1, rf1), (1, j1)), ((1, rf2), (1, j2)), ((1, rf3), (1, j2))]
    # On an image the same numbers are square, as in Conv2D.
    assert stack.geometry((30, 30, 1))[0].output_shape == (13, 13, 4)
    # Two numbers stay as written, so a 2×2 pool on a signal is an error naming the layer.
    with pytest.raises(GeometryError, match=r"layers\[1\] \(max_pooling2d\): pool 2×2 is larger than its input 1×48"):
        _parse([{"conv": {"filters": 4, "kernel_size": 5, "stride": 2}}, {"pool": {"size": "2,2"}}]
               ).for_signal().geometry((1, 100, 1))
    # A one-row image is no signal: one number is square there too, so the 5×5 kernel does not fit.
    with pytest.raises(GeometryError, match=r"layers\[0\] \(conv2d\): kernel extent 5×5 \(kernel 5×5, dilation 1,1\)"
                                            r" is larger than the padded input 1×100"):
        stack.geometry((1, length, 1))


def test_1d_seed_through_a_pipeline_with_padding_and_pool():
    signal = np.array([0, 0, 0, 1, 1, 0, 0, 0], np.float32)
    stack = _parse([{"conv": {"kernels": "bump", "padding": 1}}, {"pool": {"mode": "max", "size": 2}}])
    output, _, (conv, _) = stack.for_signal().run(signal.reshape(1, 8, 1), keep_all=True)
    # PyTorch Conv1d(padding=1): the length grows by 2, there is still one row.
    expected_conv = np.correlate(np.pad(signal, 1), [0, 1, 0], mode="valid")
    np.testing.assert_array_equal(conv.reshape(-1), expected_conv)
    np.testing.assert_array_equal(output.reshape(-1), expected_conv.reshape(-1, 2).max(axis=1))
    assert output.shape == (1, 4, 1)


def test_a_pipeline_lists_the_kernel_files_it_read(tmp_path):
    (tmp_path / "k.yaml").write_text("weights: [[0, 1, 0], [0, 1, 0], [0, 1, 0]]\n")
    (tmp_path / "net.yaml").write_text(
        "layers:\n"
        "  - conv: {kernels: [k.yaml, edge, '3x3: 0,1,0 0,1,0 0,1,0']}\n"
        "  - pool: {}\n"
        "  - conv: {kernels: k.yaml}\n"
    )
    pipeline = load_pipeline(tmp_path / "net.yaml")
    assert pipeline.kernel_files == (str(tmp_path / "k.yaml"),)
    assert pipeline.for_signal().kernel_files == pipeline.kernel_files


def test_on_a_signal_default_names_become_keras_1d_names_and_given_names_stay():
    stack = _parse([{"conv": {"filters": 2, "kernel_size": 3, "name": "conv1d"}}, {"pool": {"mode": "avg"}},
                    {"conv": {"filters": 2, "kernel_size": 3, "depthwise": True}},
                    {"conv": {"filters": 2, "kernel_size": 1, "name": "head"}},
                    {"conv": {"filters": 2, "kernel_size": 1}}])
    assert [s.name for s in stack.steps] == ["conv1d", "average_pooling2d", "depthwise_conv2d", "head", "conv2d"]
    signal = stack.for_signal()
    assert [s.name for s in signal.steps] == ["conv1d", "average_pooling1d", "depthwise_conv1d", "head", "conv1d_1"]
    assert all(s.one_d for s in signal.steps) and signal.for_signal() is signal
    # The stack for a signal is for 1×L inputs only.
    with pytest.raises(GeometryError, match=r"^a stack for a 1-D signal needs a 1×L×C input, got 8×8×1$"):
        signal.geometry((8, 8, 1))


def test_after_a_layer_that_is_2d_on_a_signal_one_number_is_square_again():
    # kernel_size [3, 3] with padding "1,1" is a Conv2D on the signal (its padded input is 3 rows high), so
    # the pool after it is 2-D: Keras ZeroPadding2D((1, 1)) + Conv2D(2, (3, 3)) on (1, 10, 1) gives (1, 10, 2),
    # and MaxPooling2D(2) on that fails.
    stack = _parse([{"conv": {"filters": 2, "kernel_size": [3, 3], "padding": "1,1"}}, {"pool": {"size": 2}}])
    signal = stack.for_signal()
    assert [(s.name, s.one_d) for s in signal.steps] == [("conv2d", False), ("max_pooling2d", False)]
    with pytest.raises(GeometryError, match=r"layers\[1\] \(max_pooling2d\): pool 2×2 is larger than its input 1×10"):
        signal.geometry((1, 10, 1))
