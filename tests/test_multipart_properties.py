"""Property-based tests (hypothesis, deterministic and bounded) of the
streaming multipart parser: any chunking of a valid body gives the same parts,
and no bytes make it raise anything but MultipartError."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from server.multipart import MultipartError, MultipartParser, Part, boundary_of
from tests.strategies import PROPERTY

BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"  # RFC 2046, space aside
BOUNDARIES = st.text(st.sampled_from(BCHARS), min_size=1, max_size=70)
NAMES = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
PARTS = st.lists(st.tuples(NAMES, st.none() | NAMES, st.none() | st.sampled_from(["image/png", "text/plain"]),
                           st.binary(max_size=300) | st.sampled_from([b"", b"\r\n", b"\r\n-", b"--", b"\r\n--x"])),
                 min_size=1, max_size=4)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _body(boundary: str, parts: list[tuple[str, str | None, str | None, bytes]]) -> bytes:
    out = []
    for name, filename, content_type, data in parts:
        header = f"Content-Disposition: form-data; name={_quoted(name)}"
        if filename is not None:
            header += f"; filename={_quoted(filename)}"
        if content_type is not None:
            header += f"\r\nContent-Type: {content_type}"
        out.append(f"--{boundary}\r\n{header}\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def _parse(boundary: bytes, chunks: list[bytes]) -> list[Any]:
    """The parts (name, filename, content type, data) and whether the body was complete."""
    parser = MultipartParser(boundary)
    parts: list[Any] = []
    for chunk in chunks:
        for kind, value in parser.feed(chunk):
            if kind == "begin":
                assert isinstance(value, Part)
                parts.append([value.name, value.filename, value.content_type, b""])
            elif kind == "data":
                assert isinstance(value, bytes)
                parts[-1][3] += value
    return [tuple(p) for p in parts] + [parser.done]


def _chunks(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    return [body[a:b] for a, b in pairwise(points)]


@PROPERTY
@given(BOUNDARIES, PARTS, st.lists(st.integers(0, 10_000), max_size=12))
def test_any_chunking_of_a_valid_body_gives_its_parts(boundary: str, parts: list[Any], cuts: list[int]) -> None:
    """Whatever the chunks, the parts come out whole and as sent, and the body is done."""
    delimiter = b"\r\n--" + boundary.encode()
    parts = [p for p in parts if delimiter not in b"\r\n" + p[3] + b"\r\n" + delimiter[2:]]
    if not parts:
        return
    body = _body(boundary, parts)
    expected = [*parts, True]
    assert _parse(boundary.encode(), [body]) == expected
    assert _parse(boundary.encode(), _chunks(body, cuts)) == expected
    assert _parse(boundary.encode(), [body[i:i + 1] for i in range(len(body))]) == expected


def _mutate(body: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    for position, insert in edits:
        at = position % (len(body) + 1)
        body = body[:at] + insert + body[at + 1:]
    return body


@PROPERTY
@given(BOUNDARIES, st.one_of(st.binary(max_size=400), st.builds(
    lambda b, p, e: _mutate(_body(b, p), e), BOUNDARIES, PARTS,
    st.lists(st.tuples(st.integers(0, 2000), st.binary(max_size=4) | st.sampled_from([b"\r\n", b"--", b'"', b";"])),
             min_size=1, max_size=6))),
       st.lists(st.integers(0, 10_000), max_size=8))
def test_any_bytes_raise_only_multipart_error(boundary: str, body: bytes, cuts: list[int]) -> None:
    """Random or damaged bodies, in any chunks: events or MultipartError, never another exception."""
    try:
        _parse(boundary.encode(), _chunks(body, cuts))
    except MultipartError:
        pass


@PROPERTY
@given(st.one_of(st.text(st.characters(exclude_categories=()), max_size=80),
                 st.builds("multipart/form-data; boundary={}".format, st.text(max_size=80)),
                 st.builds('multipart/form-data; boundary="{}"'.format, st.text(max_size=80))))
def test_any_content_type_gives_a_boundary_or_multipart_error(content_type: str) -> None:
    """A Content-Type gives a boundary of 1 to 70 RFC 2046 characters, or MultipartError."""
    try:
        boundary = boundary_of(content_type)
    except MultipartError:
        return
    assert 1 <= len(boundary) <= 70 and all(chr(c) in BCHARS + " " for c in boundary)


TOKENS = st.text(st.sampled_from("!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"),
                 min_size=1, max_size=12)
QUOTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=30)
DECOYS = st.lists(st.tuples(
    st.one_of(TOKENS, st.sampled_from(["xboundary", "boundary-x", "x-boundary", "name", "charset"])),
    st.one_of(QUOTABLE.map(_quoted), TOKENS, BOUNDARIES.map(lambda b: _quoted(f"; boundary={b}")))),
    max_size=4, unique_by=lambda p: p[0].lower())


def _value(boundary: str, quote: bool) -> str:
    bare = all(c not in boundary for c in "'()/:=?,")  # bchars outside RFC 9110's token must be quoted
    return boundary if bare and not quote else _quoted(boundary)


@PROPERTY
@given(BOUNDARIES.filter(lambda b: not b.endswith(" ")), DECOYS, st.integers(0, 4), st.booleans(),
       st.sampled_from(["multipart/form-data", "Multipart/Form-Data"]), st.sampled_from([";", " ; ", ";\t", ";;"]))
def test_the_boundary_is_the_boundary_parameter_whatever_else_is_there(
        boundary: str, decoys: list[tuple[str, str]], position: int, quote: bool, kind: str, sep: str) -> None:
    """Other parameters (xboundary=, a quoted value holding "boundary=", in any order) never
    give the boundary: only the parameter named boundary does."""
    params = [(n, v) for n, v in decoys if n.lower() != "boundary"]
    params.insert(position % (len(params) + 1), ("boundary", _value(boundary, quote)))
    content_type = kind + "".join(f"{sep}{n}={v}" for n, v in params)
    assert boundary_of(content_type) == boundary.encode()


def test_a_boundary_given_twice_or_only_inside_another_parameter_is_refused() -> None:
    """A second boundary parameter, or "boundary=" only inside xboundary or a quoted value, is MultipartError."""
    for content_type in ["multipart/form-data; boundary=a; boundary=b", "multipart/form-data; xboundary=evil",
                         'multipart/form-data; name="; boundary=evil"']:
        try:
            boundary_of(content_type)
        except MultipartError:
            continue
        raise AssertionError(f"{content_type!r} gave a boundary")
