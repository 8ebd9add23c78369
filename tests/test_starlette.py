"""fastwrap.starlette: which Starlette's range answers are taken over, checked, not assumed.

End to end, the answers themselves are checked against stock uvicorn's and
hypercorn's (test_uvicorn.py, test_hypercorn.py); these tests pin when the
takeover happens.  Each runs in a fresh interpreter: the takeover is once
per process.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import pytest

from _support import HANG

pytest.importorskip("starlette", reason="starlette is in the project's test extra")


def run(program: str, tmp_path: Path) -> List[str]:
    """What *program* prints, run from a file (so that its functions have a source)."""
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(program))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=HANG)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.skipif(sys.version_info < (3, 10), reason="no known Starlette runs on 3.9")
def test_the_test_extras_starlette_is_one_whose_range_code_is_known(tmp_path):
    assert run("""
        import fastwrap.starlette
        from starlette.responses import FileResponse
        stock = FileResponse._handle_single_range
        print(fastwrap.starlette.install(), fastwrap.starlette.install())
        print(FileResponse._handle_single_range is not stock)
    """, tmp_path) == ["None None", "True"]


@pytest.mark.skipif(sys.version_info < (3, 10), reason="no known Starlette runs on 3.9")
def test_importing_fastwrap_uvicorn_or_hypercorn_takes_over(tmp_path):
    for module in ("fastwrap.uvicorn", "fastwrap.hypercorn"):
        assert run(f"""
            from starlette.responses import FileResponse
            stock = FileResponse._handle_multiple_ranges
            import {module}
            print(FileResponse._handle_multiple_ranges is not stock)
        """, tmp_path) == ["True"], module


def test_a_starlette_whose_range_code_differs_keeps_its_own(tmp_path):
    # As another Starlette version would have it: same names, other lines.
    assert run("""
        from starlette.responses import FileResponse
        stock = FileResponse._handle_single_range

        async def _handle_single_range(self, send, start, end, file_size, send_header_only):
            await stock(self, send, start, end, file_size, send_header_only)

        FileResponse._handle_single_range = _handle_single_range
        import fastwrap.starlette
        print(fastwrap.starlette.install())
        print(FileResponse._handle_single_range is _handle_single_range)
    """, tmp_path) == ["this Starlette's range handlers are not ones fastwrap knows", "True"]


def test_a_starlette_without_range_handlers_keeps_its_own(tmp_path):
    assert run("""
        from starlette.responses import FileResponse
        del FileResponse._handle_multiple_ranges
        call = FileResponse.__call__
        import fastwrap.starlette
        print(fastwrap.starlette.install())
        print(FileResponse.__call__ is call)
    """, tmp_path) == ["this Starlette's FileResponse has no range handlers", "True"]


def test_why_not_changes_nothing_and_agrees_with_install(tmp_path):
    assert run("""
        import fastwrap.starlette
        from starlette.responses import FileResponse
        stock = FileResponse._handle_single_range
        reason = fastwrap.starlette.why_not()
        print(FileResponse._handle_single_range is stock)
        print(reason == fastwrap.starlette.install(), fastwrap.starlette.why_not() == reason)
    """, tmp_path) == ["True", "True True"]


def test_ranges_advertised_reads_the_pathsend_extension():
    from fastwrap.starlette import ranges_advertised
    pathsend = "http.response.pathsend"
    assert ranges_advertised({}) == (False, False)
    assert ranges_advertised({"extensions": {pathsend: {}}}) == (False, False)
    assert ranges_advertised({"extensions": {pathsend: {"ranges": True}}}) == (True, False)
    assert ranges_advertised({"extensions": {pathsend: {"ranges": True, "more_body": True}}}) \
        == (True, True)
    assert ranges_advertised({"extensions": {pathsend: {"ranges": 1}}}) == (False, False)
