"""The built-in kernels ship inside the wheel and resolve from an install outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"pip wheel failed: {proc.stderr[-2000:]}")
    return next(out.glob("convcli-*.whl"))


def test_wheel_contains_every_builtin_kernel_file(wheel):
    shipped = {Path(name).name for name in zipfile.ZipFile(wheel).namelist()
               if name.startswith("convcli/kernels_data/")}
    in_repo = {p.name for p in (REPO / "kernels").iterdir() if p.suffix in (".yaml", ".yml", ".json")}
    assert in_repo and in_repo <= shipped


def test_installed_package_finds_builtins_from_another_folder(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import convcli, sys; b = convcli.load_kernels('edge', 'sobel-x'); "
            "print(convcli.__file__); print(b.names); print('yaml' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(target)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    location, names, parsed_yaml = proc.stdout.strip().splitlines()
    assert location.startswith(str(target))
    assert names == "['edge', 'sobel-x']"
    assert parsed_yaml == "False"  # built-ins came from the shipped index
