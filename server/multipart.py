"""A streaming ``multipart/form-data`` parser, without I/O.

``feed(chunk)`` returns events — ``("begin", Part)``, ``("data", bytes)``,
``("end", None)``, ``("done", None)`` — so a caller can stream a part's body to
storage as it arrives, whatever the chunking. Body data is held back only as long
as it could still be the start of a boundary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

MAX_HEADER_BYTES = 16 * 1024  # of one part's headers
MAX_PREAMBLE_BYTES = 64 * 1024  # before the first boundary
_BCHARS = r"\-0-9A-Za-z'()+_,./:=?"  # RFC 2046's boundary characters (and a space, inside quotes, never last)
_BOUNDARY = re.compile(rf"[{_BCHARS} ]{{0,69}}[{_BCHARS}]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110's token
_QUOTED = re.compile(r'"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*)"')  # quoted-string
_OWS = re.compile(r"[ \t]*")  # optional white space: always matches
_PARAM = re.compile(r';\s*([A-Za-z0-9_*.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


class MultipartError(Exception):
    """The body is not well-formed multipart/form-data."""


@dataclass
class Part:
    """One part's headers."""

    name: str  # the form field's name
    filename: str | None  # the file's name, for a file part
    content_type: str | None  # what the client says the part is (never trusted for files)
    headers: dict[str, str] = field(default_factory=dict)  # all its headers, lower-cased names


def _ows(text: str, at: int) -> int:
    match = _OWS.match(text, at)
    return match.end() if match else at


def media_type_params(content_type: str) -> tuple[str, dict[str, str]]:
    """A Content-Type's lower-cased ``type/subtype`` and its parameters, as RFC 9110
    §5.6.6 gives them: names lower-cased, quoted values unescaped; MultipartError if
    it does not parse or a parameter is given twice."""
    at = _ows(content_type, 0)
    kind = _TOKEN.match(content_type, at)
    slash = kind.end() if kind else at
    subtype = _TOKEN.match(content_type, slash + 1) if content_type[slash:slash + 1] == "/" else None
    if kind is None or subtype is None:
        raise MultipartError("the Content-Type is not a media type")
    params: dict[str, str] = {}
    at = subtype.end()
    while True:
        at = _ows(content_type, at)
        if at == len(content_type):
            return f"{kind.group()}/{subtype.group()}".lower(), params
        if content_type[at] != ";":
            raise MultipartError("the Content-Type's parameters do not parse")
        at = _ows(content_type, at + 1)
        name = _TOKEN.match(content_type, at)
        if name is None:  # an empty parameter (";;" or a trailing ";") is allowed
            continue
        if content_type[name.end():name.end() + 1] != "=":
            raise MultipartError("a Content-Type parameter has no value")
        value = _QUOTED.match(content_type, name.end() + 1) or _TOKEN.match(content_type, name.end() + 1)
        if value is None:
            raise MultipartError("a Content-Type parameter's value is neither a token nor a quoted string")
        text = re.sub(r"\\(.)", r"\1", value.group(1)) if value.group().startswith('"') else value.group()
        if name.group().lower() in params:
            raise MultipartError(f"the Content-Type gives {name.group().lower()!r} twice")
        params[name.group().lower()] = text
        at = value.end()


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type header."""
    kind, params = media_type_params(content_type)
    if kind != "multipart/form-data":
        raise MultipartError("the body must be multipart/form-data")
    boundary = params.get("boundary")
    if boundary is None or _BOUNDARY.fullmatch(boundary) is None:
        raise MultipartError("the multipart Content-Type has no boundary of 1 to 70 RFC 2046 characters")
    return boundary.encode("latin-1")


def _params(value: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, quoted, bare in _PARAM.findall(";" + value.split(";", 1)[1] if ";" in value else ""):
        text = re.sub(r"\\(.)", r"\1", quoted) if quoted else bare
        if name.lower().endswith("*") and "''" in text:  # RFC 5987: filename*=UTF-8''na%C3%AFve.jpg
            text = unquote(text.split("''", 1)[1], encoding="utf-8", errors="replace")
            params[name.lower().rstrip("*")] = text
        else:
            params.setdefault(name.lower(), text)
    return params


def _part(raw: bytes) -> Part:
    headers: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise MultipartError("a part header has no colon")
        # Browsers and wx.uploadFile send UTF-8 file names; fall back to Latin-1.
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode("latin-1")
        headers[name.decode("latin-1").strip().lower()] = text.strip()
    disposition = headers.get("content-disposition", "")
    if not disposition.lower().startswith("form-data"):
        raise MultipartError("a part is not form-data")
    params = _params(disposition)
    if "name" not in params:
        raise MultipartError("a part has no name")
    return Part(params["name"], params.get("filename"), headers.get("content-type"), headers)


class MultipartParser:
    """Turns the bytes of a multipart body into events."""

    def __init__(self, boundary: bytes) -> None:
        self._first = b"--" + boundary  # the first delimiter
        self._delimiter = b"\r\n--" + boundary  # every later one
        self._buffer = bytearray()  # bytes not yet turned into events
        self._state = "preamble"  # preamble, after, headers, body, done
        self.done = False  # the closing delimiter was seen

    def feed(self, data: bytes) -> list[tuple[str, object]]:
        self._buffer += data
        events: list[tuple[str, object]] = []
        buffer = self._buffer
        while True:
            if self._state == "preamble":
                index = buffer.find(self._first)
                if index < 0:
                    if len(buffer) > MAX_PREAMBLE_BYTES:
                        raise MultipartError("no multipart boundary found")
                    break
                del buffer[: index + len(self._first)]
                self._state = "after"
            elif self._state == "after":
                if len(buffer) < 2:
                    break
                if buffer[:2] == b"--":
                    self._state = "done"
                    self.done = True
                    events.append(("done", None))
                    continue
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > 128:
                        raise MultipartError("garbage after a boundary")
                    break
                if buffer[:end].strip(b" \t"):
                    raise MultipartError("garbage after a boundary")
                del buffer[: end + 2]
                self._state = "headers"
            elif self._state == "headers":
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEADER_BYTES:
                        raise MultipartError("a part's headers are too long")
                    break
                events.append(("begin", _part(bytes(buffer[:end]))))
                del buffer[: end + 4]
                self._state = "body"
            elif self._state == "body":
                index = buffer.find(self._delimiter)
                if index < 0:
                    safe = len(buffer) - (len(self._delimiter) - 1)
                    if safe > 0:
                        events.append(("data", bytes(buffer[:safe])))
                        del buffer[:safe]
                    break
                if index:
                    events.append(("data", bytes(buffer[:index])))
                del buffer[: index + len(self._delimiter)]
                events.append(("end", None))
                self._state = "after"
            else:  # done: an epilogue is ignored
                buffer.clear()
                break
        return events
