"""Builds the Cython core in kernels/*.pyx into edge_runtime.kernels._<name>.

Portable by default (no -march=native) so a wheel runs on any x86-64 or aarch64 CPU.
EDGE_RUNTIME_NATIVE=1 opts in to -march=native for a build that stays on one machine.
EDGE_RUNTIME_NO_EXTENSIONS=1 skips the build: the package then runs on its pure-Python twins.
"""

import glob
import os
import sys

from setuptools import setup


def extensions():
    if os.environ.get("EDGE_RUNTIME_NO_EXTENSIONS") == "1":
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    compile_args = ["-O3"] if sys.platform != "win32" else ["/O2"]
    if os.environ.get("EDGE_RUNTIME_NATIVE") == "1":
        compile_args.append("-march=native")
    sources = sorted(glob.glob("kernels/*.pyx"))
    if not sources:
        # Without this an sdist that lost its .pyx files would install quietly on the pure-Python twins.
        sys.exit("setup.py: no kernels/*.pyx (EDGE_RUNTIME_NO_EXTENSIONS=1 installs without the Cython core)")
    modules = []
    for source in sources:
        name = os.path.splitext(os.path.basename(source))[0]
        modules.append(
            Extension(
                f"edge_runtime.kernels._{name}",
                [source],
                include_dirs=[numpy.get_include()],
                extra_compile_args=compile_args,
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    return cythonize(
        modules,
        language_level=3,
        compiler_directives={"embedsignature": True, "cdivision": True},
    )


setup(ext_modules=extensions())
