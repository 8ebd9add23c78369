"""fastwrap.static.StaticFiles end to end: `python -m fastwrap serve` over real sockets.

One server per engine (the compiled one, and the pure one with
FASTWRAP_NO_EXTENSIONS=1) serves a tree built once per module: files of
several sizes and types, directories with and without index.html, names that
need escaping, and links, FIFOs and secrets placed to be tried from outside.
Normal requests go through http.client; hostile ones are raw bytes on a
socket, so that nothing normalises them before the server sees them.
"""
from __future__ import annotations

import email.utils
import html
import http.client
import os
import re
import socket
import stat
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List
from wsgiref import handlers, simple_server, util

import pytest

import fastwrap
import fastwrap.static
import fastwrap.wsgiref
from _static_support import (Response, ServeProcess, exchange, parse, pipelined,
                             request, unique)
from _support import LINUX, random_bytes

SECRET = b"TOP-SECRET-" + random_bytes(16, seed=99).hex().encode()

SIZES = {
    "empty.bin": 0,
    "one.bin": 1,
    "four.bin": 4096,
    "mib.bin": (1 << 20) + 7,
    "three-mib.bin": 3 * (1 << 20) + 5,
}
CONTENT_TYPES = {
    "page.html": "text/html; charset=utf-8",
    "notes.txt": "text/plain; charset=utf-8",
    "image.png": "image/png",
    "blob.zzqx": "application/octet-stream",
    "noextension": "application/octet-stream",
    "archive.gz": "application/octet-stream",
    "notes.txt.gz": "application/octet-stream",
}
#: Names in /names/ that a listing must escape and percent-encode.
NAMES = ["a&b.txt", 'quote".txt', "é.txt", "<img src=x onerror=alert(1)>.txt",
         'x" onmouseover="alert(1).txt', "space name.txt", "100%.txt", "#hash?.txt"]
#: A directory and a file inside it that together are /names/<script>alert(1)</script>.txt
SCRIPT_DIR, SCRIPT_FILE = "<script>alert(1)<", "script>.txt"
NOT_UTF8 = b"\xff\xfe-latin1.bin"
#: /awkward/: names a listing must link to exactly. On POSIX a backslash is a
#: character like any other, and so are the percent signs of "%5C" and "%2F".
AWKWARD_FILES = ["back\\slash.txt", "\\", "\\lead and trail\\", "two  spaces .txt",
                 "50%.txt", "%5C.txt", "%2F.txt", "%.txt", "#frag", "?query=1&b=2",
                 "\u00fcn\u00efc\u00f6d\u00e9 \u2713.txt", "\u65e5\u672c.txt", "it's.txt",
                 'say "hi".txt', "semi;colon+plus.txt", "a&b=c.txt", "tab\tand\nnewline"]
AWKWARD_DIR, AWKWARD_INNER = "dir\\with\\back slashes #?%", "in\\ner \u00e9.txt"
DATED_NS = 1_700_000_000_750_000_000  # 2023-11-14 22:13:20.75 UTC
DATED_HTTP = "Tue, 14 Nov 2023 22:13:20 GMT"
INDEX_HTML = b"<!DOCTYPE html><title>the index</title>\n"

FOUR = random_bytes(4096, seed=4)


def content(name: str) -> bytes:
    if name == "four.bin":
        return FOUR
    if name in SIZES:
        return random_bytes(SIZES[name], seed=SIZES[name])
    return b"the bytes of " + os.fsencode(name)


@dataclass
class Tree:
    base: Path    # holds the secrets, outside the served directory
    root: Path    # what the server serves: base/www
    secret: Path


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    base = tmp_path_factory.mktemp("static")
    root = base / "www"
    root.mkdir()
    secret = base / "secret"
    secret.write_bytes(SECRET)
    (base / "outside").mkdir()
    (base / "outside" / "secret").write_bytes(SECRET)
    # A sibling whose name starts with the root's: a naive prefix check lets it in.
    (base / "www-sibling").mkdir()
    (base / "www-sibling" / "secret").write_bytes(SECRET)

    for name in list(SIZES) + list(CONTENT_TYPES):
        (root / name).write_bytes(content(name))
    dated = root / "dated.bin"
    dated.write_bytes(content("dated.bin"))
    os.utime(dated, ns=(DATED_NS, DATED_NS))

    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(content("inner.txt"))
    (root / "dé").mkdir()
    (root / "withindex").mkdir()
    (root / "withindex" / "index.html").write_bytes(INDEX_HTML)
    (root / "withindex" / "other.txt").write_bytes(content("other.txt"))

    names = root / "names"
    names.mkdir()
    for name in NAMES:
        (names / name).write_bytes(content(name))
    (names / SCRIPT_DIR).mkdir()
    (names / SCRIPT_DIR / SCRIPT_FILE).write_bytes(content(SCRIPT_FILE))
    with open(os.path.join(os.fsencode(names), NOT_UTF8), "wb") as f:
        f.write(content(os.fsdecode(NOT_UTF8)))
    awkward = root / "awkward"
    awkward.mkdir()
    for name in AWKWARD_FILES:
        (awkward / name).write_bytes(content(name))
    (awkward / AWKWARD_DIR).mkdir()
    (awkward / AWKWARD_DIR / AWKWARD_INNER).write_bytes(content(AWKWARD_INNER))

    # Links: out of the root (file, directory, sibling, relative), and inside it.
    (root / "link-out").symlink_to(secret)
    (root / "dir-out").symlink_to(base / "outside", target_is_directory=True)
    (root / "sibling-out").symlink_to(base / "www-sibling", target_is_directory=True)
    (root / "sub" / "rel-out").symlink_to(Path("..") / ".." / "secret")
    (root / "link-in").symlink_to("four.bin")
    (root / "dir-in").symlink_to("sub", target_is_directory=True)
    (root / "loop").symlink_to("loop")
    os.mkfifo(root / "fifo")
    locked = root / "locked.bin"
    locked.write_bytes(SECRET)
    locked.chmod(0)
    yield Tree(base, root, secret)
    locked.chmod(stat.S_IRUSR | stat.S_IWUSR)


def _start(engine: Any, tree: Tree, *options: str) -> ServeProcess:
    server = ServeProcess(engine, tree.root, *options)
    # The engine asked for is the one serving.
    assert server.match["engine"] == engine.IMPLEMENTATION, server.serving
    assert server.match["root"] == os.path.realpath(tree.root)
    return server


@pytest.fixture(scope="module")
def server(engine: Any, tree: Tree) -> Iterator[ServeProcess]:
    served = _start(engine, tree)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def follow_server(engine: Any, tree: Tree) -> Iterator[ServeProcess]:
    served = _start(engine, tree, "--follow-symlinks")
    yield served
    served.stop()


def assert_survives(server: ServeProcess, mark: int) -> None:
    """The server still answers, and logged no traceback since *mark*."""
    tag = unique()
    response, body = server.get(f"/four.bin?{tag}")
    assert (response.status, body) == (200, FOUR)
    server.access_line(tag, start=mark)  # every line before it is in, too
    log = server.since(mark)
    assert not [line for line in log if "Traceback" in line], "\n".join(log)


def server_root(server: ServeProcess) -> Path:
    return Path(server.match["root"])


def raw_get(server: ServeProcess, target: "str | bytes", *headers: tuple,
            method: str = "GET") -> Response:
    data = server.exchange(request(method, target, headers))
    return parse(data, method)


# -- files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SIZES))
def test_get_sends_the_file_byte_exact_with_its_length(server, name):
    response, body = server.get("/" + name)
    assert response.status == 200
    assert body == content(name)
    assert response.getheader("Content-Length") == str(SIZES[name])
    assert response.getheader("Accept-Ranges") == "bytes"


@pytest.mark.parametrize("name", list(CONTENT_TYPES))
def test_content_type_follows_the_extension(server, name):
    response, body = server.get("/" + name)
    assert response.status == 200 and body == content(name)
    assert response.getheader("Content-Type") == CONTENT_TYPES[name]


def test_last_modified_is_the_files_mtime_as_an_http_date(server):
    response, _ = server.get("/dated.bin")
    assert response.getheader("Last-Modified") == DATED_HTTP
    # And it follows the file, not a fixed value.
    other, _ = server.get("/four.bin")
    mtime = int(os.stat(server_root(server) / "four.bin").st_mtime)
    assert other.getheader("Last-Modified") == email.utils.formatdate(mtime, usegmt=True)


def test_etag_is_a_strong_quoted_validator(server):
    response, _ = server.get("/four.bin")
    etag = response.getheader("ETag")
    assert etag is not None and re.fullmatch(r'"[!#-~]+"', etag), etag


def test_etag_changes_when_the_size_changes(server):
    path = server_root(server) / unique("grow-")
    path.write_bytes(b"12345")
    os.utime(path, ns=(DATED_NS, DATED_NS))
    before, _ = server.get("/" + path.name)
    with open(path, "ab") as f:
        f.write(b"6")
    os.utime(path, ns=(DATED_NS, DATED_NS))  # same mtime: only the size tells
    after, body = server.get("/" + path.name)
    assert body == b"123456"
    assert before.getheader("ETag") != after.getheader("ETag")
    # A cache revalidating with the old tag gets the new bytes.
    again, body = server.get("/" + path.name, {"If-None-Match": before.getheader("ETag")})
    assert (again.status, body) == (200, b"123456")


def test_etag_changes_when_only_the_mtime_changes(server):
    path = server_root(server) / unique("touch-")
    path.write_bytes(b"abcdef")
    os.utime(path, ns=(DATED_NS, DATED_NS))
    before, _ = server.get("/" + path.name)
    path.write_bytes(b"ABCDEF")  # same size
    os.utime(path, ns=(DATED_NS + 1_000_000, DATED_NS + 1_000_000))  # 1 ms later
    after, body = server.get("/" + path.name)
    assert body == b"ABCDEF"
    assert before.getheader("ETag") != after.getheader("ETag")
    again, body = server.get("/" + path.name, {"If-None-Match": before.getheader("ETag")})
    assert (again.status, body) == (200, b"ABCDEF")


def _without_date(response: Response) -> List[tuple]:
    return [(k.lower(), v) for k, v in response.headers if k.lower() != "date"]


def test_head_has_the_get_headers_no_body_and_keeps_the_connection(server):
    responses, rest = pipelined(server.port, [
        ("HEAD", request("HEAD", "/four.bin", close=False)),
        ("GET", request("GET", "/four.bin", close=False)),
        ("HEAD", request("HEAD", "/mib.bin", close=False)),
        ("GET", request("GET", "/one.bin")),
    ])
    head, get, head_mib, last = responses
    assert head.status == 200 and head.body == b""
    assert _without_date(head) == _without_date(get)
    assert head.header("Content-Length") == "4096"
    assert get.body == FOUR
    assert head_mib.header("Content-Length") == str(SIZES["mib.bin"])
    assert (last.status, last.body, rest) == (200, content("one.bin"), b"")


# -- conditional requests -------------------------------------------------------------------

@pytest.fixture(scope="module")
def four_etag(server) -> str:
    response, _ = server.get("/four.bin")
    return response.getheader("ETag")


@pytest.mark.parametrize("form", ["exact", "list", "weak", "star", "weak-in-list"])
def test_if_none_match_answers_304_without_a_body(server, four_etag, form):
    value = {"exact": four_etag,
             "list": f'"nope", {four_etag} , "other"',
             "weak": "W/" + four_etag,
             "star": "*",
             "weak-in-list": f'W/"nope",W/{four_etag}'}[form]
    responses, rest = pipelined(server.port, [
        ("GET", request("GET", "/four.bin", [("If-None-Match", value)], close=False)),
        ("GET", request("GET", "/one.bin")),
    ])
    not_modified, after = responses
    assert not_modified.status == 304
    assert not_modified.header("ETag") == four_etag
    assert not_modified.header("Last-Modified") is not None
    # No body: the next response on the connection starts right after the headers.
    assert (after.status, after.body, rest) == (200, content("one.bin"), b"")


def test_304_sends_no_content_length_other_than_the_files_size(server, four_etag):
    # RFC 9110 8.6: a 304 MUST NOT send a Content-Length other than the 200's.
    response = raw_get(server, "/four.bin", ("If-None-Match", four_etag))
    assert response.status == 304
    assert response.header("Content-Length") in (None, "4096"), response.headers


def test_if_none_match_that_does_not_match_gets_the_file(server):
    response, body = server.get("/four.bin", {"If-None-Match": '"nope", W/"other"'})
    assert (response.status, body) == (200, FOUR)


@pytest.mark.parametrize("since, status", [
    (DATED_HTTP, 304),
    ("Tue, 14 Nov 2023 22:13:21 GMT", 304),
    ("Wed, 15 Nov 2023 00:00:00 GMT", 304),
    ("Tue, 14 Nov 2023 22:13:19 GMT", 200),
    ("Mon, 01 Jan 2001 00:00:00 GMT", 200),
    ("not a date", 200),
])
def test_if_modified_since_compares_with_the_mtime(server, since, status):
    response, body = server.get("/dated.bin", {"If-Modified-Since": since})
    assert response.status == status
    assert body == (b"" if status == 304 else content("dated.bin"))


def test_if_none_match_takes_precedence_over_if_modified_since(server):
    etag = server.get("/dated.bin")[0].getheader("ETag")
    # Not matching, though not modified since: RFC 9110 13.2.2 says ignore the date.
    response, body = server.get("/dated.bin", {"If-None-Match": '"nope"',
                                               "If-Modified-Since": "Wed, 15 Nov 2023 00:00:00 GMT"})
    assert (response.status, body) == (200, content("dated.bin"))
    # Matching, though modified since the date.
    response, body = server.get("/dated.bin", {"If-None-Match": etag,
                                               "If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert (response.status, body) == (304, b"")


def test_head_with_a_matching_etag_answers_304(server, four_etag):
    response, body = server.get("/four.bin", {"If-None-Match": four_etag}, method="HEAD")
    assert (response.status, body) == (304, b"")


# -- ranges ----------------------------------------------------------------------------------

MIB = content("mib.bin")


@pytest.mark.parametrize("name, spec, first, last", [
    ("four.bin", "bytes=0-0", 0, 0),
    ("four.bin", "bytes=10-19", 10, 19),
    ("four.bin", "bytes=-5", 4091, 4095),
    ("four.bin", "bytes=100-", 100, 4095),
    ("four.bin", "bytes=4000-999999", 4000, 4095),
    ("four.bin", "bytes=4095-4095", 4095, 4095),
    ("four.bin", "bytes=-999999", 0, 4095),
    ("one.bin", "bytes=0-", 0, 0),
    ("mib.bin", "bytes=1048570-1048580", 1048570, 1048580),
    ("mib.bin", "bytes=12345-", 12345, len(MIB) - 1),
    ("four.bin", "Bytes = 10 - 19", 10, 19),
])
def test_single_range_answers_206_with_exact_bytes(server, name, spec, first, last):
    data = content(name)
    response, body = server.get("/" + name, {"Range": spec})
    assert response.status == 206
    assert response.getheader("Content-Range") == f"bytes {first}-{last}/{len(data)}"
    assert response.getheader("Content-Length") == str(last - first + 1)
    assert body == data[first:last + 1]


@pytest.mark.parametrize("spec", ["bytes=4096-", "bytes=5000-6000", "bytes=4096-4096", "bytes=-0"])
def test_unsatisfiable_range_answers_416_with_the_size(server, spec):
    response, body = server.get("/four.bin", {"Range": spec})
    assert response.status == 416
    assert response.getheader("Content-Range") == "bytes */4096"
    assert int(response.getheader("Content-Length")) == len(body)
    assert FOUR[:16] not in body


@pytest.mark.parametrize("spec", ["bytes=0-0", "bytes=-5", "bytes=0-"])
def test_range_on_an_empty_file_is_never_an_invalid_206(server, spec):
    # A 206 must say "bytes first-last/0" with last >= first: impossible for 0 bytes.
    response, body = server.get("/empty.bin", {"Range": spec})
    assert response.status in (200, 416), (response.status,
                                           response.getheader("Content-Range"))
    if response.status == 200:
        assert body == b"" and response.getheader("Content-Length") == "0"
    else:
        assert response.getheader("Content-Range") == "bytes */0"


@pytest.mark.parametrize("spec", [
    "bytes=0-0,10-19",      # several: the whole file
    "bytes=0-5, -3",
    "bytes=abc",             # malformed: ignored
    "bytes=5-1",
    "bytes=1-2-3",
    "bytes=",
    "bytes=-",
    "items=0-1",             # a unit we do not know
    "0-1",
])
def test_multi_or_malformed_range_gets_the_whole_file(server, spec):
    response, body = server.get("/four.bin", {"Range": spec})
    assert (response.status, body) == (200, FOUR)
    assert response.getheader("Content-Range") is None
    assert response.getheader("Content-Length") == "4096"


@pytest.mark.parametrize("spec", ["bytes=\xb2-", "bytes=0-\xb9", "bytes=-\xb3", "bytes=\xbd-"])
def test_range_with_non_ascii_digits_is_ignored_not_a_500(server, spec):
    # Latin-1 superscripts are str.isdigit() but not int(): a header, not a crash.
    mark = server.mark()
    response = raw_get(server, "/four.bin", ("Range", spec))
    assert (response.status, response.body) == (200, FOUR)
    assert_survives(server, mark)


HUGE_NUMBER = "9" * 5000  # more digits than int() converts since CPython 3.11


@pytest.mark.parametrize("spec, statuses", [
    (f"bytes={HUGE_NUMBER}-", (200, 416)),
    (f"bytes=0-{HUGE_NUMBER}", (200, 206)),
    (f"bytes=-{HUGE_NUMBER}", (200, 206)),
], ids=["huge-first", "huge-last", "huge-suffix"])
def test_range_with_a_huge_number_is_answered_not_a_500(server, spec, statuses):
    mark = server.mark()
    response = raw_get(server, "/four.bin", ("Range", spec))
    assert response.status in statuses, response.status
    if response.status == 416:
        assert response.header("Content-Range") == "bytes */4096"
    else:  # the whole file, as a 200 or as the range 0-4095 it amounts to
        assert response.body == FOUR
        assert response.header("Content-Range") in (None, "bytes 0-4095/4096")
    assert_survives(server, mark)


def test_if_range_with_the_current_etag_gets_the_range(server, four_etag):
    response, body = server.get("/four.bin", {"Range": "bytes=10-19", "If-Range": four_etag})
    assert (response.status, body) == (206, FOUR[10:20])


@pytest.mark.parametrize("validator", ['"not-the-etag"', "weak", "Mon, 01 Jan 2001 00:00:00 GMT",
                                       "garbage"])
def test_if_range_that_does_not_match_gets_the_whole_file(server, four_etag, validator):
    if validator == "weak":
        validator = "W/" + four_etag  # If-Range compares strongly: a weak tag never matches
    response, body = server.get("/four.bin", {"Range": "bytes=10-19", "If-Range": validator})
    assert (response.status, body) == (200, FOUR)


def test_if_range_with_the_last_modified_date_gets_the_range(server):
    response, body = server.get("/dated.bin", {"Range": "bytes=2-4", "If-Range": DATED_HTTP})
    assert (response.status, body) == (206, content("dated.bin")[2:5])


def test_range_on_head_answers_200_headers_only(server):
    response = raw_get(server, "/four.bin", ("Range", "bytes=10-19"), method="HEAD")
    assert response.status == 200
    assert response.header("Content-Length") == "4096"
    assert response.header("Content-Range") is None
    assert response.body == b""


@pytest.mark.skipif(not LINUX, reason="sendfile(2) to a socket: the Linux path")
def test_range_leaves_zero_copy_and_the_log_counts_its_bytes(server):
    mark = server.mark()
    tag = unique()
    response, body = server.get(f"/mib.bin?{tag}", {"Range": "bytes=1000-500999"})
    assert (response.status, body) == (206, MIB[1000:501000])
    line = server.access_line(tag, start=mark)
    assert (line["status"], line["size"], line["path"]) == ("206", "500000", "sendfile")


# -- directories -----------------------------------------------------------------------------

@pytest.mark.parametrize("target, location", [
    ("/sub", "/sub/"),
    ("/sub?x=1&y=2", "/sub/?x=1&y=2"),
    ("/names/%3Cscript%3Ealert%281%29%3C", "/names/%3Cscript%3Ealert%281%29%3C/"),
    ("/d%C3%A9", "/d%C3%A9/"),
    ("/withindex", "/withindex/"),
    ("/dir-in", "/dir-in/"),
])
def test_directory_without_slash_redirects_to_it(server, target, location):
    response = raw_get(server, target)
    assert response.status == 301
    assert response.header("Location") == location


_ANCHOR = re.compile(r'<li><a href="([^"]*)">([^<]*)</a></li>')


def _listing(body: bytes) -> Dict[str, str]:
    """{shown name: href}, both HTML-unescaped, from a listing page."""
    text = body.decode("utf-8", "surrogateescape")
    return {html.unescape(shown): html.unescape(href) for href, shown in _ANCHOR.findall(text)}


def test_listing_escapes_names_and_its_links_fetch_the_files(server):
    response, body = server.get("/names/")
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert int(response.getheader("Content-Length")) == len(body)
    assert b"<script>" not in body and b"<img" not in body
    assert b"&lt;img src=x onerror=alert(1)&gt;.txt" in body
    assert b"a&amp;b.txt" in body
    entries = _listing(body)
    expected = set(NAMES) | {SCRIPT_DIR + "/", os.fsdecode(NOT_UTF8)}
    assert set(entries) == expected
    for shown, href in entries.items():
        assert re.fullmatch(r"[A-Za-z0-9_.~/%-]+", href), href  # percent-encoded
        response, fetched = server.get("/names/" + href)
        assert response.status == 200, (shown, href)
        if shown.endswith("/"):
            inner = _listing(fetched)
            assert set(inner) == {SCRIPT_FILE}
            assert b"<script>" not in fetched
            assert b"<title>Index of /names/&lt;script&gt;alert(1)&lt;/</title>" in fetched
            response, fetched = server.get("/names/" + href + inner[SCRIPT_FILE])
            assert (response.status, fetched) == (200, content(SCRIPT_FILE))
        else:
            assert fetched == content(shown), shown


def _follow_listing(server: ServeProcess, page: str, seen: Dict[str, bytes]) -> None:
    """Fetch every link of the listing at *page*, as a browser resolves it; recurse into
    directories; put {path on disk under the root: body} into *seen*."""
    response, body = server.get(page)
    assert response.status == 200, page
    for shown, href in _listing(body).items():
        target = urllib.parse.urljoin(page, href)
        response, fetched = server.get(target)
        assert response.status == 200, (page, shown, href, response.status)
        local = urllib.parse.unquote(page, errors="surrogateescape").lstrip("/") + shown
        if shown.endswith("/"):
            _follow_listing(server, target, seen)
        else:
            seen[local] = fetched


def test_every_link_of_a_listing_of_awkward_names_fetches_its_file(server):
    seen: Dict[str, bytes] = {}
    _follow_listing(server, "/awkward/", seen)
    expected = {f"awkward/{name}": content(name) for name in AWKWARD_FILES}
    expected[f"awkward/{AWKWARD_DIR}/{AWKWARD_INNER}"] = content(AWKWARD_INNER)
    assert seen == expected


def test_directory_with_a_backslash_redirects_to_itself_with_a_slash(server):
    quoted = urllib.parse.quote(AWKWARD_DIR)
    response = raw_get(server, f"/awkward/{quoted}")
    assert response.status == 301
    location = response.header("Location")
    assert location == f"/awkward/{quoted}/"
    response, body = server.get(location)
    assert response.status == 200 and set(_listing(body)) == {AWKWARD_INNER}


def test_listing_marks_directories_with_a_slash(server):
    response, body = server.get("/")
    entries = _listing(body)
    assert response.status == 200
    assert entries["sub/"] == "sub/" and entries["four.bin"] == "four.bin"
    assert entries["d\u00e9/"] == "d%C3%A9/"


def test_directory_with_index_html_serves_it(server):
    response, body = server.get("/withindex/")
    assert (response.status, body) == (200, INDEX_HTML)
    assert response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert response.getheader("ETag") is not None


def test_head_of_a_listing_has_its_length_and_no_body(server):
    _, body = server.get("/sub/")
    response = raw_get(server, "/sub/", method="HEAD")
    assert response.status == 200 and response.body == b""
    assert response.header("Content-Length") == str(len(body))


# -- keep-alive ------------------------------------------------------------------------------

def test_keep_alive_answers_a_mix_of_requests_in_order(server, four_etag):
    responses, rest = pipelined(server.port, [
        ("GET", request("GET", "/four.bin", close=False)),
        ("GET", request("GET", "/four.bin", [("If-None-Match", four_etag)], close=False)),
        ("GET", request("GET", "/mib.bin", [("Range", "bytes=100-199")], close=False)),
        ("GET", request("GET", "/no-such-file", close=False)),
        ("HEAD", request("HEAD", "/mib.bin", close=False)),
        ("GET", request("GET", "/sub", close=False)),
        ("GET", request("GET", "/empty.bin", close=False)),
        ("GET", request("GET", "/four.bin", [("Range", "bytes=5000-6000")], close=False)),
        ("GET", request("GET", "/three-mib.bin", close=False)),
        ("GET", request("GET", "/one.bin")),
    ])
    assert [r.status for r in responses] == [200, 304, 206, 404, 200, 301, 200, 416, 200, 200]
    assert responses[0].body == FOUR
    assert responses[1].body == b""
    assert responses[2].body == MIB[100:200]
    assert responses[4].body == b"" and responses[4].header("Content-Length") == str(len(MIB))
    assert responses[6].body == b""
    assert responses[8].body == content("three-mib.bin")
    assert responses[9].body == content("one.bin")
    assert rest == b""


# -- hostile requests ------------------------------------------------------------------------

#: Backslash is a separator only on Windows; elsewhere it is part of a (missing) name,
#: percent-encoded or not.
_BACKSLASH = 400 if os.sep == "\\" else 404
#: The README: a dot segment (also percent-encoded), a percent-encoded slash (or
#: backslash, where it separates paths), a NUL byte, or a target that is not an
#: absolute path: 400.
TRAVERSALS = {
    "dot-dot": (b"/../secret", 400),
    "dot-dot-after-a-directory": (b"/sub/../../secret", 400),
    "dot-dot-deeper": (b"/sub/../../www/../secret", 400),
    "dot-segment": (b"/./../secret", 400),
    "encoded-dots": (b"/%2e%2e/secret", 400),
    "encoded-dots-and-slash": (b"/%2E%2E%2fsecret", 400),
    "encoded-slash": (b"/..%2fsecret", 400),
    "encoded-slashes-in-a-segment": (b"/sub%2f..%2f..%2fsecret", 400),
    "encoded-backslash": (b"/..%5csecret", _BACKSLASH),
    "encoded-backslashes-after-a-directory": (b"/sub%5C..%5C..%5Csecret", _BACKSLASH),
    "backslashes": (b"/..\\secret", _BACKSLASH),
    "backslashes-after-a-directory": (b"/sub\\..\\..\\secret", _BACKSLASH),
    "absolute-form": (b"http://127.0.0.1/../secret", 400),
    "absolute-form-encoded": (b"http://127.0.0.1/%2e%2e/secret", 400),
    "asterisk": (b"*", 400),
    "no-leading-slash": (b"../secret", 400),
    "invalid-utf8": (b"/\xff\xfe/../secret", 400),
    "nul": (b"/four.bin%00.png", 400),
    "nul-traversal": (b"/%00/../secret", 400),
}


@pytest.mark.parametrize("target, status", list(TRAVERSALS.values()), ids=list(TRAVERSALS))
def test_traversal_is_refused_and_never_serves_the_secret(server, target, status):
    mark = server.mark()
    data = server.exchange(request("GET", target))
    assert SECRET not in data
    assert FOUR[:64] not in data
    assert parse(data).status == status
    assert_survives(server, mark)


def test_double_encoded_dots_are_decoded_once_and_not_found(server):
    mark = server.mark()
    data = server.exchange(request("GET", b"/%252e%252e/secret"))
    assert SECRET not in data
    assert parse(data).status == 404
    assert_survives(server, mark)


def test_absolute_filesystem_paths_stay_inside_the_root(server, tree):
    mark = server.mark()
    for target in (b"//etc/passwd", b"//" + os.fsencode(tree.secret),
                   b"/" + os.fsencode(tree.secret)):
        data = server.exchange(request("GET", target))
        assert SECRET not in data and b"root:" not in data
        assert parse(data).status == 404, target
    assert_survives(server, mark)


GARBAGE = {
    "one-word": (b"GARBAGE\r\n\r\n", 400),
    "no-target": (b"GET\r\n\r\n", 400),
    "four-words": (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
    "not-http": (b"GET / FTP/1.0\r\n\r\n", 400),
    "http-2": (b"GET / HTTP/2.0\r\n\r\n", 505),
    "tls-hello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32))
                  + b"\r\n\r\n", 400),
    "http-0.9-traversal": (b"GET /../secret\r\n", 400),
    "http-0.9-file": (b"GET /four.bin\r\n", 400),
    "header-without-colon": (b"GET /four.bin HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n", 400),
}


@pytest.mark.parametrize("raw, status", list(GARBAGE.values()), ids=list(GARBAGE))
def test_malformed_request_gets_an_http_error_response_not_a_crash(server, raw, status):
    # An error the client can read: a status line, not an HTTP/0.9 page without headers.
    mark = server.mark()
    data = server.exchange(raw)
    assert SECRET not in data and FOUR[:64] not in data
    assert data.startswith(b"HTTP/1."), data[:120]
    assert parse(data).status == status
    assert_survives(server, mark)


def test_blank_lines_alone_get_no_answer_and_no_crash(server):
    mark = server.mark()
    assert server.exchange(b"\r\n\r\n\r\n") == b""
    assert_survives(server, mark)


def test_over_long_request_line_answers_414(server):
    mark = server.mark()
    line = b"GET /" + b"a" * (65537 - 5)  # the server reads 65537 bytes and stops
    assert len(line) == 65537
    response = parse(server.exchange(line))
    assert response.status == 414
    assert_survives(server, mark)


@pytest.mark.parametrize("target", ["/link-out", "/dir-out/secret", "/dir-out/",
                                    "/sibling-out/secret", "/sibling-out/", "/sub/rel-out"])
def test_symbolic_link_out_of_the_root_is_forbidden(server, target):
    mark = server.mark()
    response, body = server.get(target)
    assert response.status == 403
    assert SECRET not in body
    assert_survives(server, mark)


@pytest.mark.parametrize("target, expected", [
    ("/link-in", FOUR), ("/dir-in/inner.txt", content("inner.txt"))])
def test_symbolic_link_inside_the_root_is_followed(server, target, expected):
    response, body = server.get(target)
    assert (response.status, body) == (200, expected)


def test_symbolic_link_loop_is_not_found(server):
    mark = server.mark()
    response, _ = server.get("/loop")
    assert response.status in (403, 404)
    assert_survives(server, mark)


@pytest.mark.parametrize("target", ["/link-out", "/dir-out/secret", "/sub/rel-out"])
def test_follow_symlinks_serves_links_out_of_the_root(follow_server, target):
    response, body = follow_server.get(target)
    assert (response.status, body) == (200, SECRET)


@pytest.mark.parametrize("target", [b"/../secret", b"/%2e%2e/secret", b"/sub%2f..%2f..%2fsecret",
                                    b"/sub/../../secret"])
def test_follow_symlinks_still_refuses_traversal(follow_server, target):
    mark = follow_server.mark()
    data = follow_server.exchange(request("GET", target))
    assert SECRET not in data
    assert parse(data).status in (400, 403, 404)
    assert_survives(follow_server, mark)


def test_fifo_is_forbidden_at_once(server):
    mark = server.mark()
    started = time.monotonic()
    response = parse(exchange(server.port, request("GET", "/fifo"), timeout=5))
    assert response.status == 403
    assert time.monotonic() - started < 5
    assert_survives(server, mark)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads a chmod 000 file: nothing to refuse")
def test_unreadable_file_is_forbidden(server):
    mark = server.mark()
    response, body = server.get("/locked.bin")
    assert response.status == 403
    assert SECRET not in body
    assert_survives(server, mark)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_methods_other_than_get_and_head_get_405(server, method):
    mark = server.mark()
    response, body = server.get("/four.bin", method=method)
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"
    assert FOUR[:64] not in body
    conn = server.connection()
    try:
        conn.request(method, "/four.bin", body=b"payload=1")
        response = conn.getresponse()
        assert response.status == 405 and FOUR[:64] not in response.read()
    finally:
        conn.close()
    assert_survives(server, mark)


# -- the app in other servers ----------------------------------------------------------------

@pytest.fixture
def app_root(tmp_path: Path) -> Path:
    (tmp_path / "four.bin").write_bytes(FOUR)
    (tmp_path / "mib.bin").write_bytes(MIB)
    return tmp_path


class _QuietStockHandler(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _in_thread(server: Any) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def _fetch(port: int, target: str, headers: Dict[str, str]) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def test_static_files_in_the_stock_wsgiref_server(app_root):
    fastwrap.wsgiref.uninstall()
    assert not fastwrap.wsgiref.is_installed()
    assert handlers.BaseHandler.wsgi_file_wrapper is util.FileWrapper
    app = fastwrap.static.StaticFiles(app_root)
    server = simple_server.make_server("127.0.0.1", 0, app, handler_class=_QuietStockHandler)
    thread = _in_thread(server)
    try:
        port = server.server_address[1]
        response, body = _fetch(port, "/mib.bin", {})
        assert (response.status, body) == (200, MIB)
        assert response.getheader("Content-Length") == str(len(MIB))
        # The stock server iterates the result: the range is read and yielded.
        response, body = _fetch(port, "/mib.bin", {"Range": "bytes=1048570-1048580"})
        assert (response.status, body) == (206, MIB[1048570:1048581])
        assert response.getheader("Content-Range") == f"bytes 1048570-1048580/{len(MIB)}"
        response, body = _fetch(port, "/four.bin", {"Range": "bytes=-5"})
        assert (response.status, body) == (206, FOUR[-5:])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class _RecordingHandler(fastwrap.wsgiref.RequestHandler):
    """Keeps the access-log lines (without client and date) in its class's *lines*."""

    lines: List[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        self.lines.append(format % args)


def _wait_for_lines(lines: List[str], count: int) -> Dict[str, str]:
    """{request line: "status size path"} once *count* requests were logged."""
    deadline = time.monotonic() + 10
    while len(lines) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(lines) == count, lines
    return dict(line[1:].split('" ', 1) for line in lines)


def test_static_files_in_make_server_sends_ranges_zero_copy(app_root):
    app = fastwrap.static.StaticFiles(app_root)
    lines: List[str] = []
    handler = type("Recording", (_RecordingHandler,), {"lines": lines})
    server = fastwrap.wsgiref.make_server("127.0.0.1", 0, app, threads=4, handler=handler)
    thread = _in_thread(server)
    try:
        port = server.server_address[1]
        response, body = _fetch(port, "/mib.bin?full", {})
        assert (response.status, body) == (200, MIB)
        response, body = _fetch(port, "/mib.bin?range", {"Range": "bytes=5-1000004"})
        assert (response.status, body) == (206, MIB[5:1000005])
        assert response.getheader("Content-Range") == f"bytes 5-1000004/{len(MIB)}"
        response, body = _fetch(port, "/four.bin", {"If-None-Match": "*"})
        assert (response.status, body) == (304, b"")
        logged = _wait_for_lines(lines, 3)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    full = logged["GET /mib.bin?full HTTP/1.1"].split()
    ranged = logged["GET /mib.bin?range HTTP/1.1"].split()
    assert full[:2] == ["200", str(len(MIB))]
    assert ranged[:2] == ["206", "1000000"]
    assert logged["GET /four.bin HTTP/1.1"] == "304 0 -"
    if LINUX:
        assert full[2] == ranged[2] == "sendfile"


def test_listing_false_forbids_directories_without_index(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_bytes(b"f")
    app = fastwrap.static.StaticFiles(tmp_path, listing=False)
    server = fastwrap.wsgiref.make_server("127.0.0.1", 0, app, threads=2,
                                          handler=type("Quiet", (_RecordingHandler,),
                                                       {"lines": []}))
    thread = _in_thread(server)
    try:
        port = server.server_address[1]
        response, body = _fetch(port, "/d/", {})
        assert response.status == 403 and b"f.txt" not in body
        response, body = _fetch(port, "/d/f.txt", {})
        assert (response.status, body) == (200, b"f")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_client_falling_silent_inside_its_head_gets_408_and_one_log_line(app_root, capfd):
    app = fastwrap.static.StaticFiles(app_root)
    lines: List[str] = []
    handler = type("Impatient", (_RecordingHandler,), {"lines": lines, "timeout": 0.5})
    server = fastwrap.wsgiref.make_server("127.0.0.1", 0, app, threads=2, handler=handler)
    thread = _in_thread(server)
    try:
        port = server.server_address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /four.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more
            received = sock.makefile("rb").read()
        response = parse(received)
        assert response.status == 408 and FOUR[:64] not in received
        logged = _wait_for_lines(lines, 1)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert logged == {"GET /four.bin HTTP/1.1": "408 - -"}
    assert "Traceback" not in capfd.readouterr().err
