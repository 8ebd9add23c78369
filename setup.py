"""Build the compiled engine unless FASTWRAP_NO_EXTENSIONS is set.

A failed compile is not fatal: the package then installs with its
pure-Python engine, which has the same behaviour, and says so in one line.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = os.environ.get("FASTWRAP_NO_EXTENSIONS", "") not in ("", "0")


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers
            self._notice(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._notice(exc)

    @staticmethod
    def _notice(exc):
        print(
            f"fastwrap: compiled engine not built ({exc}); "
            "installing the pure-Python engine",
            file=sys.stderr,
        )


def extensions():
    if NO_EXTENSIONS:
        print("fastwrap: FASTWRAP_NO_EXTENSIONS is set; pure-Python engine only",
              file=sys.stderr)
        return []
    from Cython.Build import cythonize

    ext = Extension(
        "fastwrap._fastwrap",
        ["src/fastwrap/_fastwrap.pyx"],
        include_dirs=["src/fastwrap"],
        define_macros=[("_FILE_OFFSET_BITS", "64"), ("_GNU_SOURCE", "1")],
        libraries=["ws2_32"] if sys.platform == "win32" else [],  # WSAPoll, send
    )
    return cythonize(
        [ext],
        compiler_directives={"language_level": "3", "embedsignature": True},
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
