"""Declares only the Cython extension; everything else lives in pyproject.toml."""
import os

from setuptools import Extension, setup

debug = os.environ.get("XQ_DEBUG_BUILD") == "1"

try:
    from Cython.Build import cythonize
except ImportError:  # building from an sdist that ships the generated C file
    ext = [Extension("xq._fast", ["xq/_fast.c"], include_dirs=["xq"])]
else:
    ext = cythonize(
        [Extension("xq._fast", ["xq/_fast.pyx"], include_dirs=["xq"],
                   extra_compile_args=["-O2"] if not debug else ["-O0", "-g"])],
        compiler_directives={"language_level": 3, "boundscheck": debug, "wraparound": False,
                             "cdivision": True, "initializedcheck": debug},
        annotate=debug,
    )

setup(ext_modules=ext)
