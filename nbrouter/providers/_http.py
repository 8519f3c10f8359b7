"""Sending one request over HTTP and turning whatever comes back into a Completion or a ProviderFailure.

This is the only place that touches the network. It applies the classification order of providers.md
section 8: a transport exception first, then (inside the protocol) error objects in the body or stream,
provider fields, the status code and last the message text.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import httpx

from .._core import scrub
from .._core import ErrorKind
from .base import ChatRequest, Completion, Endpoint, ProviderFailure, SSEEvent, WireProtocol

#: called with each text delta as it arrives; may be a plain function or a coroutine function
TextSink = Optional[Callable[[str], Optional[Awaitable[None]]]]


async def iter_sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[SSEEvent]:
    """Parse a server-sent-event byte stream. Comment lines (`:`) are skipped; a line that is not an
    SSE field (Gemini sends bare JSON error lines) comes out as an event named `raw`."""
    buffer = b""
    event = ""
    data: list[str] = []
    async for chunk in chunks:
        # lines are read at an offset and the rest is cut once per chunk: cutting after every line
        # copied the rest of a large chunk once per event (quadratic in the events per read)
        buffer += chunk
        start = 0
        while True:
            nl = buffer.find(b"\n", start)
            if nl < 0:
                break
            line = buffer[start:nl]
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield SSEEvent(event, "\n".join(data))
                event, data = "", []
                continue
            if line[:1] == b":":
                continue
            text = line.decode("utf-8", "replace")
            if text.startswith("data:"):
                data.append(text[6:] if text[5:6] == " " else text[5:])
            elif text.startswith("event:"):
                event = text[6:].strip()
            elif text.startswith(("id:", "retry:")):
                continue
            else:
                yield SSEEvent("raw", text)
        buffer = buffer[start:]
    tail = buffer.decode("utf-8", "replace").strip()
    if tail:
        if tail.startswith("data:"):
            data.append(tail[5:].lstrip())
        elif not tail.startswith(":"):
            yield SSEEvent("raw", tail)
    if data:
        yield SSEEvent(event, "\n".join(data))


def _transport_failure(exc: Exception, *, got_response: bool, partial: str, endpoint: Endpoint) -> ProviderFailure:
    msg = scrub(f"{type(exc).__name__}: {exc}") if str(exc) else type(exc).__name__
    if got_response:
        return ProviderFailure(ErrorKind.STREAM_INTERRUPTED, f"stream broke: {msg}", partial_text=partial)
    if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)):
        return ProviderFailure(ErrorKind.TIMEOUT, f"no answer in time: {msg}")
    refused = _is_refused(exc)
    return ProviderFailure(ErrorKind.NETWORK, ("connection refused: " if refused else "network: ") + msg, refused=refused)


def _is_refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return True
        os_error = getattr(seen, "os_error", None)
        if isinstance(os_error, ConnectionRefusedError):
            return True
        if "connect call failed" in str(seen).lower() or "connection refused" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


#: parsed request URLs by their text: httpx parses a str URL on every request (tens of microseconds,
#: more than the rest of the router's work per attempt); a parsed `httpx.URL` is only copied
_URLS: dict[str, httpx.URL] = {}
_URLS_MAX = 1024


def _parsed_url(url: str) -> httpx.URL:
    parsed = _URLS.get(url)
    if parsed is None:
        if len(_URLS) >= _URLS_MAX:
            _URLS.clear()
        parsed = _URLS[url] = httpx.URL(url)
    return parsed


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


async def send(
    client: httpx.AsyncClient,
    protocol: WireProtocol,
    endpoint: Endpoint,
    request: ChatRequest,
    *,
    timeout_s: float,
    on_text: TextSink = None,
    on_first_byte: Callable[[], None] | None = None,
) -> Completion:
    """Send `request`; return the Completion or raise a classified ProviderFailure."""
    url, headers, body = protocol.build(endpoint, request)
    timeout = httpx.Timeout(timeout_s)
    got_response = False
    partial = ""
    try:
        req = client.build_request("POST", _parsed_url(url), headers=headers, json=body, timeout=timeout)
        response = await _dispatch(client, req)
    except httpx.HTTPError as exc:
        raise _transport_failure(exc, got_response=False, partial="", endpoint=endpoint) from None
    try:
        status = response.status_code
        if status >= 300 or not request.stream:
            try:
                raw = await response.aread()
            except httpx.HTTPError as exc:
                raise _transport_failure(exc, got_response=False, partial="", endpoint=endpoint) from None
            if on_first_byte is not None:
                on_first_byte()
            parsed = _json_or_none(raw)
            if status >= 300:
                raise protocol.classify(endpoint, status, response.headers, parsed, raw.decode("utf-8", "replace"))
            if parsed is None:
                snippet = scrub(raw[:200].decode("utf-8", "replace"))
                raise ProviderFailure(
                    ErrorKind.SERVER_ERROR, f"malformed JSON in a {status} response: {snippet!r}", status=status,
                    request_id=protocol.request_id(response.headers),
                )
            completion = protocol.parse(endpoint, status, response.headers, parsed)
            _stamp(completion, protocol, response)
            return completion
        decoder = protocol.decoder(endpoint, request)
        pieces: list[str] = []
        try:
            async for event in iter_sse(response.aiter_raw()):
                if not got_response:
                    got_response = True
                    if on_first_byte is not None:
                        on_first_byte()
                text = decoder.feed(event)
                if text:
                    pieces.append(text)
                    if on_text is not None:
                        maybe = on_text(text)
                        if maybe is not None:
                            await maybe
                if decoder.done:
                    break
        except ProviderFailure as failure:
            failure.partial_text = "".join(pieces)
            if failure.status is None:
                failure.status = status
            failure.request_id = failure.request_id or protocol.request_id(response.headers)
            raise
        except httpx.HTTPError as exc:
            raise _transport_failure(exc, got_response=got_response, partial="".join(pieces), endpoint=endpoint) from None
        partial = "".join(pieces)
        try:
            completion = decoder.finish()
        except ProviderFailure as failure:
            failure.partial_text = partial
            failure.status = failure.status or status
            failure.request_id = failure.request_id or protocol.request_id(response.headers)
            raise
        completion.text = partial
        _stamp(completion, protocol, response)
        return completion
    except ProviderFailure as failure:
        if failure.rate_limits is None:
            failure.rate_limits = protocol.rate_limits(response.headers)
        if failure.request_id is None:
            failure.request_id = protocol.request_id(response.headers)
        raise
    finally:
        await response.aclose()


async def _dispatch(client: httpx.AsyncClient, req: httpx.Request) -> httpx.Response:
    """Hand the request straight to the transport httpx would pick for its URL (the proxy from the
    environment, if one applies, else the default transport). `client.send` adds redirects, auth, cookies
    and event hooks, none of which an LLM API call uses, for about 100 us of CPU per request."""
    pick = getattr(client, "_transport_for_url", None)
    if pick is None:  # another httpx: take the public path
        return await client.send(req, stream=True)
    response = await pick(req.url).handle_async_request(req)
    response.request = req
    return response


def _stamp(completion: Completion, protocol: WireProtocol, response: httpx.Response) -> None:
    if completion.request_id is None:
        completion.request_id = protocol.request_id(response.headers)
    if completion.rate_limits is None:
        completion.rate_limits = protocol.rate_limits(response.headers)

