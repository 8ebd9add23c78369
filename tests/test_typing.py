"""mypy --strict is clean on the package and on typical uses of its public API."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not (ROOT / "pyproject.toml").is_file() or not (ROOT / "src" / "fastwrap").is_dir(),
    reason="the source tree is not beside the tests (testing an installed wheel)")


def test_mypy_strict_is_clean_on_the_package_and_its_use() -> None:
    pytest.importorskip("mypy", reason="mypy is in the project's test extra")
    # The configuration ([tool.mypy] in pyproject.toml) names the files and --strict.
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout
    assert "Success: no issues found" in proc.stdout


def test_mypy_catches_a_misuse_of_the_api(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is in the project's test extra")
    misuse = tmp_path / "misuse.py"
    misuse.write_text("import fastwrap\n"
                      "sent: str = fastwrap.FileWrapper(b'x').transmit(3)\n")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                           str(misuse)], cwd=tmp_path, env={"MYPYPATH": str(ROOT / "src"),
                                                             "PATH": ""},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode != 0
    assert "Incompatible types in assignment" in proc.stdout
