"""The asyncio side of the ONVIF driver: one HTTP/1.1 request per connection.

The only module of ``drivers.onvif`` that awaits. Every request has a timeout
scope and a response-size limit checked as bytes arrive (:mod:`.http`); a SOAP
body larger than :data:`~.soap.PARSE_INLINE_MAX` is parsed in a worker thread so
that a big (or hostile) answer never holds the event loop. Credentials are sent
(digest, WS-Security) but never logged nor put in an exception message.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element

from drivers.onvif import digest, soap
from drivers.onvif.http import NEED_DATA, HttpError, Response, ResponseParser, build_request

__all__ = ["ClientError", "OnvifClient"]

READ_CHUNK: Final = 16 * 1024
# HTTP answers other than the SOAP body we read (a 401 page, a 500 page).
MAX_ERROR_BODY: Final = 8 * 1024


class ClientError(Exception):
    """A request failed: no connection, timeout, HTTP error, or a bad answer."""

    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout = timeout


class OnvifClient:
    """Talks to one camera at ``host:port`` (the device service at ``/onvif/device_service``).

    ``clock_offset`` (camera minus our wall clock, s) is applied to WS-Security
    timestamps: cameras refuse a UsernameToken whose ``Created`` is far from theirs.
    """

    def __init__(
        self, *, host: str, port: int, credentials: soap.Credentials, timeout: float
    ) -> None:
        self.host = host
        self.port = port
        self._creds = credentials
        self.timeout = timeout
        self.clock_offset = 0.0

    @property
    def device_url(self) -> str:
        return f"http://{self.host}:{self.port}/onvif/device_service"

    async def call(
        self,
        url: str,
        operation: str,
        body: str,
        *,
        secure: bool = True,
        to: str | None = None,
        extra_timeout: float = 0.0,
    ) -> Element:
        """POST one SOAP operation; the Body's first child, or :class:`ClientError`.

        ``extra_timeout``: what the camera may add on purpose (a PullMessages long poll).
        """
        security = ""
        if secure:
            # The wall clock is the protocol's (WS-Security Created), not our logic's time.
            created = datetime.fromtimestamp(time.time() + self.clock_offset, UTC)
            security = soap.username_token(self._creds, nonce=os.urandom(16), created=created)
        payload = soap.envelope(body, security=security, to=to)
        headers = {
            "Content-Type": (
                f'application/soap+xml; charset=utf-8; action="{soap.ACTIONS[operation]}"'
            )
        }
        response = await self._exchange(
            "POST", url, headers, payload, soap.MAX_RESPONSE, self.timeout + extra_timeout
        )
        if response.status not in (200, 400, 500):
            raise ClientError(f"{operation}: HTTP {response.status}")
        try:
            if len(response.body) > soap.PARSE_INLINE_MAX:
                return await asyncio.to_thread(soap.parse, response.body)
            return soap.parse(response.body)
        except soap.RemoteProtocolError as exc:
            raise ClientError(f"{operation}: {exc}") from exc

    async def fetch(self, url: str, *, max_body: int) -> Response:
        """GET ``url`` with HTTP Digest authentication (RFC 7616) when challenged."""
        response = await self._exchange("GET", url, {}, b"", max_body, self.timeout)
        if response.status == 401:
            challenge_text = response.headers.get("www-authenticate", "")
            try:
                challenge = digest.parse_challenges(challenge_text)[0]
            except digest.DigestError as exc:
                raise ClientError(f"GET {_path(url)}: {exc}") from exc
            # A fresh challenge (and nonce) per fetch: this is its first use, nc = 1.
            auth = digest.authorization(
                challenge,
                method="GET",
                uri=_path(url),
                username=self._creds.username,
                password=self._creds.password,
                cnonce=secrets.token_hex(8),
                nc=1,
            )
            response = await self._exchange(
                "GET", url, {"Authorization": auth}, b"", max_body, self.timeout
            )
        if response.status != 200:
            raise ClientError(f"GET {_path(url)}: HTTP {response.status}")
        return response

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes,
        max_body: int,
        timeout: float,  # noqa: ASYNC109 (each request's own bound; the scope is below)
    ) -> Response:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ClientError(f"{url[:80]!r}: only http:// camera URLs are supported")
        host, port = parts.hostname, parts.port or 80
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(build_request(method, _path(url), parts.netloc, headers, body))
                await writer.drain()
                parser = ResponseParser(max_body=max(max_body, MAX_ERROR_BODY))
                while True:
                    data = await reader.read(READ_CHUNK)
                    if not data:
                        return parser.eof()
                    response = parser.receive(data)
                    if response is not NEED_DATA:
                        return response
        except TimeoutError:
            raise ClientError(
                f"{method} {_path(url)}: no answer within {timeout:g} s", timeout=True
            ) from None
        except OSError as exc:
            raise ClientError(
                f"{method} {_path(url)}: {exc.strerror or exc}", timeout=True
            ) from exc
        except HttpError as exc:
            raise ClientError(f"{method} {_path(url)}: {exc}") from exc
        finally:
            if writer is not None:
                writer.close()


def _path(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
