"""Where ``apply`` writes: --name templates, -o, and the files it must never overwrite.

Driven through click's CliRunner on ``convcli.cli.cli``, from inside ``tmp_path`` so
the commands read as a user types them (``-o out``, ``-k ow2/kern.yaml``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from convcli.cli import cli

EDGE = [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]


def run(*args, status=0):
    """Invoke the CLI in-process; fail loudly on an unexpected exit status."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == status, (result.exit_code, result.stdout, result.stderr)
    return result


def one_line(result) -> str:
    """The single line of standard error (no traceback, nothing else)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def write_rgb(path: Path, height: int = 9, width: int = 8, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def work(tmp_path, monkeypatch):
    """``tmp_path`` as the working folder, holding ``img/rgb.png``."""
    monkeypatch.chdir(tmp_path)
    write_rgb(tmp_path / "img" / "rgb.png")
    return tmp_path


# --- --name templates ------------------------------------------------------------------------------

@pytest.mark.parametrize("template, part, reason", [
    ("{stem.__class__}.png", "'{stem.__class__}'", "attribute or index access is not allowed"),
    ("{stem[0]}_{filter}.{ext}", "'{stem[0]}'", "attribute or index access is not allowed"),
    ("{stem}_{filter!r}.{ext}", "'{filter!r}'", "conversions (!r, !s, !a) are not allowed"),
    ("{stem}_{colour}.{ext}", "'{colour}'", "unknown field 'colour'"),
    ("{}_{filter}.{ext}", "'{}'", "positional fields are not allowed"),
    ("{0}_{filter}.{ext}", "'{0}'", "positional fields are not allowed"),
    ("{stem}_{index:{width}}.{ext}", "'{index:{width}}'", "nested fields in a format spec are not allowed"),
    ("{stem:d}_{filter}.{ext}", "'{stem:d}'", "Unknown format code 'd'"),
    ("{stem_{filter}.{ext}", "'{stem_{filter}.{ext}' is not a valid template", "unexpected '{' in field name"),
])
def test_name_templates_allow_only_the_four_fields(work, template, part, reason):
    result = run("apply", "img/rgb.png", "-k", "edge", "-o", "out", "--name", template, status=2)
    line = one_line(result)
    assert line.startswith(f"convcli: error: --name: {part}"), line
    assert reason in line and "{stem} {filter} {index} {ext}" in line
    assert not (work / "out").exists()


def test_an_empty_name_template_is_refused_as_empty(work):
    result = run("apply", "img/rgb.png", "-k", "edge", "-o", "out", "--name", "", status=2)
    line = one_line(result)
    assert line.startswith("convcli: error: --name: empty template"), line
    assert "outside the output folder" not in line
    assert not (work / "out").exists()


@pytest.mark.parametrize("template, ending", [("{stem}/", "'/'"), ("{stem}_{filter}/.", "'/.'")])
def test_a_name_template_naming_a_folder_is_refused(work, template, ending):
    result = run("apply", "img/rgb.png", "-k", "edge", "-o", "out", "--name", template, status=2)
    line = one_line(result)
    assert line.startswith(f"convcli: error: --name: {template!r} ends with {ending}"), line
    assert "names a folder, not a file" in line
    assert not (work / "out").exists()


def test_name_templates_with_format_specs_and_sub_folders_still_work(work):
    run("apply", "img/rgb.png", "-k", "edge", "-k", "sobel-x", "-o", "out",
        "--name", "{stem}/{index:03d}-{filter}.{ext}")
    assert sorted(files_under(work / "out")) == ["rgb/000-edge.png", "rgb/001-sobel-x.png"]


def test_montage_templates_allow_only_stem(work):
    result = run("apply", "img/rgb.png", "-k", "edge", "-o", "out", "--montage", "m/{stem[0]}.png", status=2)
    assert one_line(result).startswith("convcli: error: --montage: '{stem[0]}': attribute or index access")
    assert not (work / "out").exists() and not (work / "m").exists()


# --- -o ------------------------------------------------------------------------------------------

def test_an_output_folder_that_is_a_file_is_a_usage_error(work):
    (work / "afile").write_bytes(b"keep me")
    result = run("apply", "img/rgb.png", "-k", "edge", "-o", "afile", status=2)
    assert one_line(result) == "convcli: error: -o afile: not a directory (it is a file)"
    assert (work / "afile").read_bytes() == b"keep me"
    assert sorted(p.name for p in work.iterdir()) == ["afile", "img"]


def test_an_output_folder_inside_a_file_is_a_usage_error(work):
    (work / "afile").write_bytes(b"keep me")
    result = run("apply", "img/rgb.png", "-k", "edge", "-o", Path("afile") / "sub" / "maps", status=2)
    assert one_line(result) == f"convcli: error: -o {Path('afile/sub/maps')}: afile is a file, not a directory"
    assert (work / "afile").read_bytes() == b"keep me"


def test_an_output_folder_that_is_a_broken_link_is_a_usage_error(work):
    os.symlink(work / "nowhere", work / "gone")
    result = run("apply", "img/rgb.png", "-k", "edge", "-o", "gone", status=2)
    assert one_line(result) == "convcli: error: -o gone: not a directory (it is a broken symbolic link)"
    assert not (work / "nowhere").exists()


def test_a_missing_output_folder_is_created(work):
    run("apply", "img/rgb.png", "-k", "edge", "-o", Path("new") / "maps")
    assert sorted(files_under(work / "new")) == [str(Path("maps/rgb_edge.png"))]


# --- one file for two outputs, or for an output and an input -----------------------------------

def test_two_filters_of_one_input_writing_one_file_name_the_filters(work):
    result = run("apply", "img/rgb.png", "-k", "edge", "-k", "sobel-x", "-o", "out", "--name", "{stem}.{ext}",
                 status=2)
    assert one_line(result) == (f"convcli: error: --name: filters edge and sobel-x of {Path('img/rgb.png')} would"
                                f" both write {Path('out/rgb.png')}; put {{filter}} or {{index}} in --name")
    assert not (work / "out").exists()


def test_two_inputs_writing_one_file_keep_their_message(work):
    write_rgb(work / "a" / "x.png")
    write_rgb(work / "b" / "x.png")
    result = run("apply", "a/x.png", "b/x.png", "-k", "edge", "-o", "out", status=2)
    assert one_line(result) == (f"convcli: error: INPUT: {Path('a/x.png')} and {Path('b/x.png')} would both write"
                                f" {Path('out/x_edge.png')}; name their common folder with --recursive (outputs"
                                " mirror sub-folders under -o) or run them separately")


def test_a_montage_on_a_map_of_the_same_input_names_montage(work):
    result = run("apply", "img/rgb.png", "-k", "edge", "-o", "out", "--montage", "out/rgb_edge.png", status=2)
    assert one_line(result) == (f"convcli: error: --montage: {Path('img/rgb.png')}'s map edge and"
                                f" {Path('img/rgb.png')}'s montage would both write {Path('out/rgb_edge.png')};"
                                " choose another --montage file")
    assert not (work / "out").exists()


def test_a_montage_over_an_input_names_montage(work):
    before = (work / "img" / "rgb.png").read_bytes()
    result = run("apply", "img/rgb.png", "-k", "edge", "-o", "out", "--montage", "img/rgb.png", status=2)
    path = Path("img/rgb.png")
    assert one_line(result) == (f"convcli: error: --montage: {path}'s montage {path} would overwrite the input {path};"
                                " choose another --montage file")
    assert (work / "img" / "rgb.png").read_bytes() == before


# --- files the command reads are never overwritten -------------------------------------------------

def write_kernel_file(path: Path) -> Path:
    """The 3×3 edge kernel in the format ``path``'s extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix
    if suffix == ".npy":
        np.save(path, np.array(EDGE, dtype=np.float32))
    elif suffix == ".mat":
        path.write_text("3 3\n" + "\n".join(" ".join(str(v) for v in row) for row in EDGE) + "\n")
    elif suffix == ".json":
        path.write_text(json.dumps({"name": "kern", "weights": EDGE}) + "\n")
    else:
        path.write_text("name: kern\nweights: " + json.dumps(EDGE) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json", ".mat", ".npy"])
def test_a_kernel_file_given_with_k_is_never_overwritten(work, suffix):
    write_rgb(work / "ow2" / "a.png")
    kernel = write_kernel_file(work / "ow2" / f"kern{suffix}")
    before = files_under(work / "ow2")
    name = f"kern{suffix}"
    result = run("apply", "ow2/a.png", "-k", f"ow2/{name}", "-o", "ow2", "--name", name, status=2)
    path = Path("ow2") / name
    assert one_line(result) == (f"convcli: error: --name/-o: {Path('ow2/a.png')}'s output {path} would overwrite"
                                f" the kernel file {path} (-k); choose another -o folder or --name")
    assert files_under(work / "ow2") == before
    assert kernel.read_bytes() == before[name]


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_a_kernel_file_is_protected_under_another_name(work, link):
    write_kernel_file(work / "ow2" / "kern.yaml")
    (os.link if link == "hard" else os.symlink)(work / "ow2" / "kern.yaml", work / "ow2" / "rgb_kern.png")
    before = files_under(work / "ow2")
    result = run("apply", "img/rgb.png", "-k", "ow2/kern.yaml", "-o", "ow2", status=2)
    line = one_line(result)
    assert f"output {Path('ow2/rgb_kern.png')} would overwrite the kernel file {Path('ow2/kern.yaml')} (-k)" in line
    assert files_under(work / "ow2") == before
    assert (work / "ow2" / "rgb_kern.png").is_symlink() == (link == "symbolic")


def test_built_in_and_inline_kernels_name_no_file(work):
    (work / "out").mkdir()
    (work / "out" / "edge").write_bytes(b"not the built-in")
    run("apply", "img/rgb.png", "-k", "edge", "-k", "3x3: 0,1,0 0,1,0 0,1,0", "-o", "out")
    assert sorted(files_under(work / "out")) == ["edge", "rgb_edge.png", "rgb_inline.png"]


def test_a_kernel_file_may_be_read_while_writing_to_standard_output(work):
    write_kernel_file(work / "kern.yaml")
    result = run("apply", "img/rgb.png", "-k", "kern.yaml", "-o", "-")
    assert result.stdout_bytes.startswith(b"\x89PNG")


@pytest.fixture
def pipeline(work):
    """``pl/p.yaml``, a pipeline of one conv layer whose kernel is the file ``pl/k.yaml``."""
    write_kernel_file(work / "pl" / "k.yaml")
    (work / "pl" / "p.yaml").write_text("layers:\n  - conv: {kernels: [k.yaml], padding: same}\n")
    return work / "pl"


def test_the_pipeline_file_is_never_overwritten(pipeline):
    before = files_under(pipeline)
    result = run("apply", "img/rgb.png", "--pipeline", "pl/p.yaml", "-o", "pl", "--name", "p.yaml", status=2)
    path = Path("pl/p.yaml")
    assert one_line(result) == (f"convcli: error: --name/-o: {Path('img/rgb.png')}'s output {path} would overwrite"
                                f" the pipeline file {path} (--pipeline); choose another -o folder or --name")
    assert files_under(pipeline) == before


def test_a_kernel_file_named_in_the_pipeline_is_never_overwritten(pipeline):
    before = files_under(pipeline)
    result = run("apply", "img/rgb.png", "--pipeline", "pl/p.yaml", "-o", "pl", "--name", "k.yaml", status=2)
    assert (f"would overwrite the kernel file {Path('pl/k.yaml')} (named in {Path('pl/p.yaml')})"
            in one_line(result))
    assert files_under(pipeline) == before


def test_the_montage_never_overwrites_the_pipeline_file(pipeline):
    before = files_under(pipeline)
    result = run("apply", "img/rgb.png", "--pipeline", "pl/p.yaml", "-o", "out", "--montage", "pl/p.yaml", status=2)
    path = Path("pl/p.yaml")
    assert one_line(result) == (f"convcli: error: --montage: {Path('img/rgb.png')}'s montage {path} would overwrite"
                                f" the pipeline file {path} (--pipeline); choose another --montage file")
    assert files_under(pipeline) == before
    assert not (pipeline.parent / "out").exists()


def test_the_montage_never_overwrites_a_kernel_file(work):
    kernel = write_kernel_file(work / "kern.npy")
    before = kernel.read_bytes()
    result = run("apply", "img/rgb.png", "-k", "kern.npy", "-o", "out", "--montage", "kern.npy", status=2)
    assert one_line(result).startswith("convcli: error: --montage: ")
    assert "would overwrite the kernel file kern.npy (-k)" in result.stderr
    assert kernel.read_bytes() == before


def test_process_refuses_to_overwrite_a_read_file_itself(work):
    # The batch refuses before any work; process() checks again as it writes (a library
    # caller, or a link made meanwhile).
    from convcli.apply import Job, OutputSpec, ReadFile, process
    from convcli.errors import OutputError
    from convcli.kernels import load_kernels
    from convcli.layer import ConvSpec
    from convcli.stack import Stack

    kernel = write_kernel_file(work / "kern.yaml")
    before = kernel.read_bytes()
    job = Job(stack=Stack.single(load_kernels(str(kernel)), ConvSpec()),
              output=OutputSpec(directory=work, name="kern.yaml"), reads=(ReadFile(str(kernel)),))
    with pytest.raises(OutputError, match=r"kern\.yaml: refusing to overwrite the kernel file .*kern\.yaml \(-k\)"):
        process(str(work / "img" / "rgb.png"), job)
    assert kernel.read_bytes() == before


# --- output folders under -o and the montage's folder ----------------------------------------------

def test_a_montage_inside_a_file_is_a_usage_error(work):
    (work / "afile").write_bytes(b"keep me")
    result = run("apply", "img/rgb.png", "-k", "edge", "-o", "out", "--montage", "afile/m.png", status=2)
    assert one_line(result) == (f"convcli: error: --montage: {Path('img/rgb.png')}'s montage {Path('afile/m.png')}"
                                " cannot be written: afile: not a directory (it is a file)")
    assert (work / "afile").read_bytes() == b"keep me"
    assert not (work / "out").exists()


def test_a_mirrored_sub_folder_that_is_a_file_is_a_usage_error(work):
    write_rgb(work / "photos" / "2023" / "x.png")
    (work / "out").mkdir()
    (work / "out" / "2023").write_bytes(b"keep me")
    result = run("apply", "photos", "-r", "-k", "edge", "-o", "out", status=2)
    assert one_line(result).endswith(f"cannot be written: {Path('out/2023')}: not a directory (it is a file)")
    assert files_under(work / "out") == {"2023": b"keep me"}
