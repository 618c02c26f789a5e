"""An HTTP/1.1 response parser with hard limits, sans-IO (RFC 9112).

:class:`ResponseParser` takes bytes as they arrive and returns a :class:`Response`
once complete, or :data:`NEED_DATA`. Bodies are framed by ``Content-Length``,
``Transfer-Encoding: chunked`` or the end of the connection. Every size is
checked against the caller's limit *before* the bytes are kept, so a camera
announcing a gigabyte costs nothing: it is refused from its header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["NEED_DATA", "HttpError", "Response", "ResponseParser", "build_request"]

NEED_DATA: Final = None
# Status line and headers together; cameras send well under 2 KiB.
MAX_HEAD: Final = 16 * 1024
MAX_HEADERS: Final = 64
# A chunk-size line: hex digits, optional extensions (RFC 9112 §7.1.1).
MAX_CHUNK_LINE: Final = 256

_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class HttpError(Exception):
    """The camera sent something that is not a valid, bounded HTTP/1.1 response."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def build_request(
    method: str, target: str, host: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    """The bytes of one request; ``Connection: close`` (one request per connection)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ResponseParser:
    """Feed with :meth:`receive`; :meth:`eof` when the connection closes."""

    def __init__(self, *, max_body: int) -> None:
        self.max_body = max_body
        self._buf = bytearray()
        self._status = 0
        self._headers: dict[str, str] | None = None
        self._length: int | None = None  # Content-Length, else None
        self._chunked = False
        self._body = bytearray()
        self._done = False

    def receive(self, data: bytes) -> Response | None:
        """Add bytes; the response once complete, else :data:`NEED_DATA`."""
        if self._done:
            return NEED_DATA
        self._buf += data
        if self._headers is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise HttpError(f"response head longer than {MAX_HEAD} bytes")
                return NEED_DATA
            if end > MAX_HEAD:
                raise HttpError(f"response head longer than {MAX_HEAD} bytes")
            self._head(bytes(self._buf[:end]))
            del self._buf[: end + 4]
        return self._advance()

    def eof(self) -> Response:
        """The connection closed: the response if it is complete, else :class:`HttpError`."""
        if self._headers is None:
            raise HttpError("connection closed before the response head")
        if self._length is None and not self._chunked:
            # Delimited by the close (RFC 9112 §6.3 item 8).
            return self._finish(bytes(self._buf))
        raise HttpError(
            f"connection closed in the body ({len(self._body) + len(self._buf)} bytes received)"
        )

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        match = _STATUS.fullmatch(lines[0])
        if match is None:
            raise HttpError(f"bad status line {lines[0][:80]!r}")
        self._status = int(match.group(1))
        if len(lines) - 1 > MAX_HEADERS:
            raise HttpError(f"{len(lines) - 1} header lines (at most {MAX_HEADERS})")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or _TOKEN.fullmatch(name) is None:
                raise HttpError(f"bad header line {line[:80]!r}")
            key = name.decode("ascii").lower()
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self._headers = headers
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in headers:
            raw = headers["content-length"]
            if not raw.isdigit() or len(raw) > 18:
                raise HttpError(f"bad Content-Length {raw[:40]!r}")
            self._length = int(raw)
            if self._length > self.max_body:
                raise HttpError(f"body of {self._length} bytes announced (at most {self.max_body})")
        if self._status in (204, 304) or 100 <= self._status < 200:
            self._length = 0

    def _advance(self) -> Response | None:
        if self._chunked:
            return self._chunks()
        if self._length is None:
            if len(self._buf) > self.max_body:
                raise HttpError(f"body longer than {self.max_body} bytes")
            return NEED_DATA
        if len(self._buf) < self._length:
            return NEED_DATA
        return self._finish(bytes(self._buf[: self._length]))

    def _chunks(self) -> Response | None:
        while True:
            end = self._buf.find(b"\r\n")
            if end < 0:
                if len(self._buf) > MAX_CHUNK_LINE:
                    raise HttpError("chunk-size line too long")
                return NEED_DATA
            size_text = bytes(self._buf[:end]).split(b";")[0].strip()
            if (
                not size_text
                or len(size_text) > 16
                or not re.fullmatch(rb"[0-9A-Fa-f]+", size_text)
            ):
                raise HttpError(f"bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if len(self._body) + size > self.max_body:
                raise HttpError(f"body longer than {self.max_body} bytes")
            if size == 0:
                # Trailers (ignored) end with an empty line.
                trailer_end = self._buf.find(b"\r\n\r\n", end)
                if trailer_end < 0 and self._buf[end : end + 4] != b"\r\n\r\n":
                    if len(self._buf) > MAX_HEAD:
                        raise HttpError("trailers too long")
                    return NEED_DATA
                return self._finish(bytes(self._body))
            if len(self._buf) < end + 2 + size + 2:
                return NEED_DATA
            start = end + 2
            if self._buf[start + size : start + size + 2] != b"\r\n":
                raise HttpError("chunk not followed by CRLF")
            self._body += self._buf[start : start + size]
            del self._buf[: start + size + 2]

    def _finish(self, body: bytes) -> Response:
        assert self._headers is not None
        self._done = True
        return Response(status=self._status, headers=self._headers, body=body)
