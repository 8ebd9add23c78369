"""Build the compiled engine unless FASTWRAP_NO_EXTENSIONS is set.

A failed compile is not fatal: the package then installs with its
pure-Python engine, which has the same behaviour, and says so in one line.
pip shows a successful build's output only with -v, so the line is also
left beside the package (NOT_BUILT), and ``import fastwrap`` logs it.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = os.environ.get("FASTWRAP_NO_EXTENSIONS", "") not in ("", "0")


#: Read by fastwrap/__init__.py when the extension does not import.
NOT_BUILT = "_not_built.txt"


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers
            for ext in self.extensions:
                self._notice(ext, exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._notice(ext, exc)
        else:  # a note from an earlier build that failed would outlive this one
            note = self._note_path(ext)
            if os.path.exists(note):
                os.remove(note)

    def _note_path(self, ext):
        return os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), NOT_BUILT)

    def _notice(self, ext, exc):
        print(
            f"fastwrap: compiled engine not built ({exc}); "
            "installing the pure-Python engine",
            file=sys.stderr,
        )
        note = self._note_path(ext)
        os.makedirs(os.path.dirname(note), exist_ok=True)
        with open(note, "w", encoding="utf-8") as f:
            f.write(
                "fastwrap: the compiled engine was not built when fastwrap was installed "
                "(no working C compiler?), so the slower pure-Python engine is in use; "
                "`pip install -v --force-reinstall --no-cache-dir` shows why, and "
                "FASTWRAP_NO_EXTENSIONS=1 chooses the pure-Python engine without this "
                "notice.\n"
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
