"""Build the optional compiled core (convcli/engine/_ccore.c); the metadata is in pyproject.toml.

The extension is optional, as PyYAML's and msgpack's are: when it cannot be compiled (no
compiler, no Python headers) the install still succeeds with a warning, and the engine
runs its numpy (and OpenCV) paths. ``convcli --version`` says which engines are active.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when the C core does not compile."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure to build leaves the numpy paths
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        if os.environ.get("CONVCLI_REQUIRE_CCORE") == "1":
            raise exc
        sys.stderr.write(f"WARNING: convcli's compiled core was not built ({exc}); "
                         "the numpy/OpenCV paths will be used.\n")


def _compile_args():
    if os.name == "nt":
        return ["/O2"]
    return ["-O3", "-std=gnu99", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math"]


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import the class
    setup(
        ext_modules=[Extension("convcli.engine._ccore", ["convcli/engine/_ccore.c"],
                               extra_compile_args=_compile_args(), optional=True)],
        cmdclass={"build_ext": OptionalBuildExt},
    )
