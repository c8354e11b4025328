"""Build the Cython fast path; everything else is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("edge_agent.fastpath._codec", ["fastpath/_codec.pyx"])],
        compiler_directives={"language_level": "3"},
    ),
)
