"""Sending one request over HTTP and turning whatever comes back into a Completion or a ProviderFailure.

This is the only place that touches the network. `Sender` holds what carries a request (the default
transport, one the caller gave, or the caller's `httpx.AsyncClient`); `Sender.send` builds, sends and reads
one request and applies the classification order of providers.md section 8: a transport exception first,
then (inside the protocol) error objects in the body or stream, provider fields, the status code and
last the message text.

Nothing else leaves `send`: whatever is raised while sending, reading or parsing becomes a ProviderFailure.
A transport error is `timeout` or `network` (`stream_interrupted` once a stream's 200 headers arrived);
any other exception, a body that is not JSON, a field of the wrong type or an SSE line past the cap is
`malformed_response`, naming the exception's type and quoting a scrubbed excerpt of what came.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import urllib.request
from dataclasses import replace
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Optional

import httpx

from .._core import ErrorKind
from .._core.clock import SYSTEM_CLOCK, Clock
from .._core.secrets import excerpt, remember_secret
from .base import ChatRequest, Completion, Endpoint, ProviderFailure, SSEEvent, WireProtocol, malformed

#: called with each text delta as it arrives; may be a plain function or a coroutine function
TextSink = Optional[Callable[[str], Optional[Awaitable[None]]]]

#: the longest SSE line, and the most data one event may gather, that the stream reader accepts; past it
#: the attempt fails as malformed_response (a router passes its Policy's value to `send`)
MAX_LINE_BYTES = 8 * 1024 * 1024
#: the largest body (after decompression) read from a reply that is not a stream; past it the attempt is
#: malformed_response (no chat answer comes near it; a runaway or hostile server might)
MAX_BODY_BYTES = 64 * 1024 * 1024
#: how much of a body is decoded to classify or quote it: the scrubber's window and more, never all of a
#: huge body
_TEXT_BYTES = 2 * 65536
#: the default transport's connection pool, above the highest concurrency the router is driven at
MAX_CONNECTIONS = 256
#: a request body larger than this (an image call) reaches the transport as a stream of pieces: aiohttp
#: writes a body given as bytes in one piece, and warns (ResourceWarning) past 1 MB
LARGE_BODY_BYTES = 1 << 20
#: the size of those pieces
_PIECE_BYTES = 256 * 1024
#: how much of a reply a failure message quotes (scrubbed before it is cut)
EXCERPT_CHARS = 200
#: hosts never sent through a proxy from the environment: no proxy can reach this machine's loopback
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def _user_agent() -> str:
    try:
        from importlib.metadata import version

        return f"nbrouter/{version('nbrouter')}"
    except Exception:  # not installed as a distribution (a source checkout on sys.path)
        return "nbrouter"


#: sent unless the endpoint's own headers name them; a stream asks for no compression because its
#: bytes are read raw, as they arrive
_BASE_HEADERS = {"accept": "*/*", "accept-encoding": "gzip, deflate", "user-agent": _user_agent()}
_STREAM_HEADERS = {**_BASE_HEADERS, "accept": "text/event-stream", "accept-encoding": "identity"}


class Sender:
    """What carries the router's requests: a transport, or an httpx client, and the proxy for each origin.

    Without arguments it sends through httpx-aiohttp's transport (a pool of MAX_CONNECTIONS), and
    through a proxy where `HTTP_PROXY`, `HTTPS_PROXY` or `ALL_PROXY` say so (`NO_PROXY` and loopback
    hosts excepted). It hands each request straight to the transport's public `handle_async_request`:
    `AsyncClient.send` adds redirects, auth, cookies and event hooks, none of which an LLM API call uses,
    for about 100 us of CPU per request.

    A Sender belongs to one event loop (its connections do). `aclose()` closes what it made itself,
    never a transport or client it was given: whoever made one closes it.

    Args:
        transport: any `httpx.AsyncBaseTransport` (an `httpx.MockTransport` in tests, a transport with
            custom TLS or a fixed proxy) used for every request; proxies from the environment are then not
            applied, as httpx does for a client given a transport.
        http_client: an `httpx.AsyncClient` to send through with `client.send`, so its mounts, proxies,
            default headers, auth and event hooks apply (at that client's cost per request).
        max_connections: the pool size of the default transport.
        trust_env: read proxies from the environment for the default transport.
        clock: what a reply's times are read against (a Retry-After date, a rate-limit reset in N
            seconds, the next daily reset): the router's own clock, so that they agree with its holds.

    Example:
        sender = Sender(transport=httpx.MockTransport(handler))
        completion = await sender.send(get_protocol("openai"), endpoint, request, timeout_s=30)
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        max_connections: int = MAX_CONNECTIONS,
        trust_env: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if transport is not None and http_client is not None:
            raise ValueError("give a transport or an http_client, not both")
        self.clock = clock
        self._client = http_client
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._owned: list[httpx.AsyncBaseTransport] = []
        self._direct: httpx.AsyncBaseTransport | None = transport
        if transport is None and http_client is None:
            self._direct = self._own(_default_transport(self._limits))
        proxies = _environment_proxies() if (trust_env and transport is None and http_client is None) else {}
        #: scheme -> proxy URL, and the NO_PROXY entries; empty: every request goes to `_direct`
        self._proxies = {k: v for k, v in proxies.items() if k != "no"}
        self._no_proxy = [e for e in (p.strip().lower() for p in proxies.get("no", "").split(",")) if e]
        self._by_origin: dict[tuple[str, str, int | None], httpx.AsyncBaseTransport] = {}
        self._by_proxy: dict[str, httpx.AsyncBaseTransport] = {}
        #: request headers made once (`_headers_for`); they hold the key, as the endpoint does, and are
        #: never shown
        self._made_headers: dict[tuple[Any, ...], httpx.Headers] = {}

    def __repr__(self) -> str:
        via = "http_client" if self._client is not None else type(self._direct).__name__
        return f"Sender(via={via}, proxies={sorted(self._proxies)})"

    async def send(
        self,
        protocol: WireProtocol,
        endpoint: Endpoint,
        request: ChatRequest,
        *,
        timeout_s: float,
        idle_timeout_s: float | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
        on_text: TextSink = None,
        on_first_byte: Callable[[], None] | None = None,
    ) -> Completion:
        """Send `request`; return the Completion or raise a classified ProviderFailure (and nothing else
        but what `on_text` or `on_first_byte` raise, and cancellation).

        Args:
            protocol: the wire protocol (`get_protocol(name)`).
            endpoint: where and as whom to send.
            request: the provider-neutral request; `request.stream` asks for an SSE stream.
            timeout_s: the limit on connecting and on each read or write (httpx's per-operation timeout);
                the caller bounds the whole attempt with a wall-clock timeout around this call.
            idle_timeout_s: a stream fails as `timeout` when no event came for this long (None: no limit).
            max_line_bytes: the longest SSE line (and event) accepted; past it the attempt is malformed.
            on_text: called with each streamed text delta (a function or a coroutine function).
            on_first_byte: called once when the body (or the first stream event) arrived.
        """
        ex = _Exchange()
        try:
            # one coroutine from here to the transport (this runs on every request's path)
            endpoint = usable_key(endpoint)
            try:
                url, headers, body = protocol.build(endpoint, request)
                req = self._request(url, headers, body, timeout_s, request.stream)
            except ProviderFailure:
                raise
            except Exception as exc:  # the caller's request cannot go on the wire (NaN, a bad header value...)
                raise ProviderFailure(ErrorKind.INVALID_REQUEST, f"the request could not be built: {_describe(exc)}") from None
            if self._client is not None:
                response = await self._client.send(req, stream=True)
            else:
                transport = self._transport_for(req.url) if self._proxies else self._direct
                assert transport is not None
                response = await transport.handle_async_request(req)
                response.request = req
            ex.response = response
            ex.status = response.status_code
            try:
                if ex.status >= 300 or not request.stream:
                    return await _read_body(ex, protocol, endpoint, response, on_first_byte, self.clock)
                return await _read_stream(
                    ex, protocol, endpoint, request, response, idle_timeout_s, max_line_bytes, on_text, on_first_byte, self.clock
                )
            finally:
                try:
                    await response.aclose()
                except Exception:  # closing a broken connection can fail again; the attempt's outcome stands
                    pass
        except _CallerError as caller:
            raise caller.error from None
        except ProviderFailure as known:
            failure = known
        except Exception as exc:  # noqa: BLE001 - the point: nothing but a ProviderFailure leaves an attempt
            failure = _unexpected(exc, ex)
        _complete(failure, ex, protocol, self.clock.time())
        # raised outside the handlers, so that no exception (a UnicodeError quoting a header, say) rides
        # along as its __context__
        raise failure

    async def get_json(self, url: str, headers: Mapping[str, str], *, timeout_s: float, max_bytes: int) -> Any:
        """GET `url` through the same transports as `send`: the parsed JSON body of a 200 answer, else None.

        For side requests (a provider's model list) whose failure only means "not known": it never
        raises but cancellation, and names no header (the key) anywhere."""
        try:
            merged = {**_BASE_HEADERS, **headers}
            extensions = {"timeout": _timeouts(timeout_s)}
            if self._client is not None:
                with_client = httpx.Headers(self._client.headers)
                with_client.update(merged)
                req = httpx.Request("GET", url, headers=with_client, extensions=extensions)
                response = await self._client.send(req, stream=True)
            else:
                req = httpx.Request("GET", _parsed_url(url), headers=merged, extensions=extensions)
                transport = self._transport_for(req.url) if self._proxies else self._direct
                assert transport is not None
                response = await transport.handle_async_request(req)
                response.request = req
            try:
                if response.status_code != 200:
                    return None
                raw = bytearray()
                async for chunk in response.aiter_bytes():  # decompressed, as the limit means
                    raw += chunk
                    if len(raw) > max_bytes:  # an endless or huge list is not read to the end
                        return None
                return json.loads(bytes(raw))
            finally:
                try:
                    await response.aclose()
                except Exception:  # closing a broken connection can fail again; the answer stands
                    pass
        except Exception:  # noqa: BLE001 - a side request's failure is "unknown", never an error of the call
            return None

    async def aclose(self) -> None:
        """Close the transports this Sender made (not one it was given)."""
        owned, self._owned = self._owned, []
        self._by_origin.clear()
        self._by_proxy.clear()
        for transport in owned:
            try:
                await transport.aclose()
            except Exception:  # a transport that fails to close must not keep the others open
                pass

    def _request(self, url: str, headers: dict[str, str], body: dict[str, Any], timeout_s: float, stream: bool) -> httpx.Request:
        content = _JSON.encode(body).encode("utf-8")
        if len(content) > LARGE_BODY_BYTES:
            return self._large_request(url, _merged_headers(headers, stream), content, timeout_s)
        if self._client is not None:
            # the client's default headers, but never its cookie jar: a cookie one provider set (a
            # 9,000-byte one, one that is not ASCII) must not ride along on every later request
            with_client = httpx.Headers(self._client.headers)
            with_client.update(_merged_headers(headers, stream))
            return httpx.Request("POST", url, headers=with_client, content=content, extensions={"timeout": _timeouts(timeout_s)})
        # what `httpx.Request(content=...)` would build, from headers made once per endpoint and kind of
        # request (normalising a handful of headers on every request cost more than the rest of the request)
        target = _parsed_url(url)
        sized = httpx.Headers(self._headers_for(target, headers, stream))
        sized["content-length"] = str(len(content))
        req = httpx.Request("POST", target, headers=sized, stream=httpx.ByteStream(content),
                            extensions={"timeout": _timeouts(timeout_s)})
        req.read()  # (the transport sends `req.content`, which a request given a stream has once read)
        return req

    def _headers_for(self, url: httpx.URL, headers: dict[str, str], stream: bool) -> httpx.Headers:
        """The request headers but its length, with the Host the URL names: made once for each origin, set
        of headers and kind of request (a few per endpoint), and copied for each request."""
        key = (url.netloc, stream, *headers.items())
        made = self._made_headers.get(key)
        if made is None:
            if len(self._made_headers) >= _URLS_MAX:
                self._made_headers.clear()
            made = httpx.Headers({"host": url.netloc.decode("ascii"), **_merged_headers(headers, stream)})
            self._made_headers[key] = made
        return made

    def _large_request(self, url: str, headers: dict[str, str], content: bytes, timeout_s: float) -> httpx.Request:
        """A request whose body goes as a stream of pieces, with its length said up front (a stream would
        go chunked otherwise, which some servers refuse for a request body)."""
        sized = httpx.Headers(self._client.headers) if self._client is not None else httpx.Headers()
        sized.update(headers)
        sized["content-length"] = str(len(content))
        target = url if self._client is not None else _parsed_url(url)
        return httpx.Request("POST", target, headers=sized, stream=_Pieces(content), extensions={"timeout": _timeouts(timeout_s)})

    # -- proxies -----------------------------------------------------------------------------

    def _own(self, transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        self._owned.append(transport)
        return transport

    def _transport_for(self, url: httpx.URL) -> httpx.AsyncBaseTransport:
        """The transport for this URL's origin: a proxy's, or the direct one (decided once per origin)."""
        origin = (url.scheme, url.host, url.port)
        transport = self._by_origin.get(origin)
        if transport is None:
            proxy = None if self._bypass(url.host) else (self._proxies.get(url.scheme) or self._proxies.get("all"))
            if proxy is None:
                transport = self._direct
            else:
                transport = self._by_proxy.get(proxy)
                if transport is None:
                    transport = self._by_proxy[proxy] = self._own(_proxy_transport(proxy, self._limits))
            assert transport is not None
            self._by_origin[origin] = transport
        return transport

    def _bypass(self, host: str) -> bool:
        host = host.lower()
        if host in LOOPBACK_HOSTS:
            return True
        for entry in self._no_proxy:
            if entry == "*":
                return True
            name = entry.split(":", 1)[0] if entry.count(":") == 1 else entry
            name = name.lstrip("*").lstrip(".")
            if name and (host == name or host.endswith("." + name)):
                return True
        return False


async def send(
    via: Sender | httpx.AsyncClient,
    protocol: WireProtocol,
    endpoint: Endpoint,
    request: ChatRequest,
    clock: Clock = SYSTEM_CLOCK,
    **kwargs: Any,
) -> Completion:
    """`Sender.send` through `via`: a Sender, or an `httpx.AsyncClient` (sent with `client.send`).

    Args:
        via: what carries the request.
        protocol: the wire protocol.
        endpoint: where and as whom to send.
        request: the request.
        clock: the clock of a Sender made for a client (a Sender given as `via` keeps its own).
        **kwargs: `timeout_s` and the other keyword arguments of `Sender.send`.
    """
    sender = via if isinstance(via, Sender) else Sender(http_client=via, clock=clock)
    return await sender.send(protocol, endpoint, request, **kwargs)


def usable_key(endpoint: Endpoint) -> Endpoint:
    """The endpoint with its key stripped of surrounding whitespace; an `auth` failure naming the key's
    environment variable (never the value) when a character of it cannot go in an HTTP header.

    Args:
        endpoint: the endpoint about to be sent to; its `key_env` names the variable in the message.
    """
    key = endpoint.api_key
    if not key:
        return endpoint
    # whoever built the endpoint should have; remembered here too, so that nothing this attempt stores
    # or raises can hold the key whatever its shape
    remember_secret(key)
    if key.isascii() and key.isprintable() and key[0] != " " and key[-1] != " ":
        return endpoint
    clean = key.strip()
    where = f"the environment variable {endpoint.key_env}" if endpoint.key_env else f"the key of provider {endpoint.provider!r}"
    if not clean:
        raise ProviderFailure(ErrorKind.AUTH, f"{where} holds only whitespace")
    bad = next((i for i, ch in enumerate(clean) if not (ch.isascii() and ch.isprintable())), None)
    if bad is not None:
        raise ProviderFailure(
            ErrorKind.AUTH, f"{where} holds a character that cannot go in an HTTP header (character {bad + 1} of the key)"
        )
    return replace(endpoint, api_key=clean)


# -- reading ----------------------------------------------------------------------------------


class _Exchange:
    """What one exchange got so far, for the failure message when something goes wrong."""

    __slots__ = ("response", "status", "raw", "pieces", "streaming", "last_event", "_headers")

    def __init__(self) -> None:
        self.response: httpx.Response | None = None
        self.status: int | None = None
        self.raw: bytes | None = None
        self.pieces: list[str] | None = None
        self.streaming = False
        self.last_event: str | None = None
        self._headers: dict[str, str] | None = None

    def headers(self) -> dict[str, str]:
        """The response's headers as a plain dict of lower-case names, made once: the protocols read up to a
        dozen, and each lookup in httpx's `Headers` lower-cases the name and scans the list. A repeated
        header is joined with ", ", as `Headers.get` does."""
        if self._headers is None:
            out: dict[str, str] = {}
            if self.response is not None:
                for name, value in self.response.headers.multi_items():
                    out[name] = f"{out[name]}, {value}" if name in out else value
            self._headers = out
        return self._headers


class _CallerError(Exception):
    """An exception raised by the caller's `on_text` / `on_first_byte`: it is the caller's, not the provider's."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(type(error).__name__)
        self.error = error


def _call_first_byte(on_first_byte: Callable[[], None] | None) -> None:
    if on_first_byte is not None:
        try:
            on_first_byte()
        except Exception as exc:
            raise _CallerError(exc) from None


async def _read_body(
    ex: _Exchange,
    protocol: WireProtocol,
    endpoint: Endpoint,
    response: httpx.Response,
    on_first_byte: Callable[[], None] | None,
    clock: Clock,
) -> Completion:
    parts: list[bytes] = []
    size = 0
    # a body that came uncompressed (nearly every reply) is read straight from the transport's stream:
    # httpx's reading and decoding layers would pass it through unchanged, at a cost (`response.aclose()`
    # closes the stream after, as it does after `aiter_raw`)
    raw_ok = ex.headers().get("content-encoding", "identity").strip().lower() in ("", "identity")
    async for part in (_unread(response) if raw_ok else None) or response.aiter_bytes():
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise malformed(f"a {ex.status} response body larger than {MAX_BODY_BYTES:,} bytes")
        parts.append(part)
    raw = parts[0] if len(parts) == 1 else b"".join(parts)
    ex.raw = raw
    _call_first_byte(on_first_byte)
    status = ex.status or 0
    parsed, problem = _parse_json(raw)
    headers = ex.headers()
    now = clock.time()
    if status >= 300:
        text = raw[:_TEXT_BYTES].decode("utf-8", "replace")
        try:
            failure = protocol.classify(endpoint, status, headers, parsed, text, now=now)
        except ProviderFailure as raised:
            failure = raised
        except Exception:  # a body the classifier cannot read: the status alone still says what happened
            failure = protocol.classify(endpoint, status, headers, None, text, now=now)
        raise failure
    if problem:
        raise malformed(f"{problem} in a {status} response: {excerpt(raw[:_TEXT_BYTES].decode('utf-8', 'replace'), EXCERPT_CHARS)!r}", status=status)
    completion = protocol.parse(endpoint, status, headers, parsed, now=now)
    _stamp(completion, protocol, ex, now)
    return completion


async def _read_stream(
    ex: _Exchange,
    protocol: WireProtocol,
    endpoint: Endpoint,
    request: ChatRequest,
    response: httpx.Response,
    idle_timeout_s: float | None,
    max_line_bytes: int,
    on_text: TextSink,
    on_first_byte: Callable[[], None] | None,
    clock: Clock,
) -> Completion:
    ex.streaming = True
    pieces: list[str] = []
    ex.pieces = pieces
    decoder = protocol.decoder(endpoint, request, clock=clock)
    watch = _IdleWatch(idle_timeout_s) if idle_timeout_s else None
    first = True
    try:
        # (raw: the bytes as they came; a response a transport made already read hands over what it holds)
        pieces_in = _unread(response) or (response.aiter_bytes() if response.is_stream_consumed else response.aiter_raw())
        async for event in iter_sse(pieces_in, max_line_bytes=max_line_bytes):
            if watch is not None:
                watch.last = watch.loop.time()
            if first:
                first = False
                _call_first_byte(on_first_byte)
            ex.last_event = event.data
            text = decoder.feed(event)
            if text:
                if not isinstance(text, str):
                    raise malformed(f"a stream event's text is a {type(text).__name__}")
                pieces.append(text)
                if on_text is not None:
                    try:
                        maybe = on_text(text)
                        if maybe is not None:
                            await maybe
                    except Exception as exc:
                        raise _CallerError(exc) from None
            if decoder.done:
                break
    except asyncio.CancelledError:
        if watch is None or not watch.fired:
            raise
        watch.uncancel()
        raise ProviderFailure(ErrorKind.TIMEOUT, f"no stream event for {idle_timeout_s:g} s") from None
    finally:
        if watch is not None:
            watch.close()
    ex.last_event = None
    completion = decoder.finish()
    completion.text = "".join(pieces)
    _stamp(completion, protocol, ex, clock.time())
    return completion


class _IdleWatch:
    """Cancels the reading task when no stream event came for `limit` seconds. Per event the reader only
    notes the time; the timer re-arms itself from that note, so there is no timer call per event.

    It runs on the event loop's timer, not the router's Clock: it bounds a wait for bytes from a socket (I/O,
    like httpx's read timeout), which a test's ManualClock would never see pass."""

    def __init__(self, limit: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.limit = limit
        self.last = self.loop.time()
        self.fired = False
        self.handle = self.loop.call_at(self.last + limit, self._check)

    def _check(self) -> None:
        due = self.last + self.limit
        if self.loop.time() >= due:
            self.fired = True
            if self.task is not None:
                self.task.cancel()
        else:
            self.handle = self.loop.call_at(due, self._check)

    def uncancel(self) -> None:
        # the cancellation was ours: take it back, so that a timeout the caller wrapped around the
        # attempt still sees its own (Task.uncancel is 3.11+)
        uncancel = getattr(self.task, "uncancel", None)
        if uncancel is not None:
            uncancel()

    def close(self) -> None:
        self.handle.cancel()


async def iter_sse(chunks: AsyncIterable[bytes], *, max_line_bytes: int = MAX_LINE_BYTES) -> AsyncIterator[SSEEvent]:
    """Parse a server-sent-event byte stream. Comment lines (`:`) are skipped; a line that is not an
    SSE field (Gemini sends bare JSON error lines) comes out as an event named `raw`.

    The reader is linear in the bytes it gets: each chunk is searched once, and an unfinished line is
    kept in a growing buffer rather than copied per chunk. A line, or the data of one event, longer than
    `max_line_bytes` ends the stream with a `malformed_response` failure.

    Args:
        chunks: the response body's bytes as they arrive.
        max_line_bytes: the longest line (and the most data one event may gather) accepted.
    """
    pending = bytearray()
    event = ""
    data: list[str] = []
    size = 0
    async for chunk in chunks:
        if pending:
            scan = len(pending)
            pending += chunk
            work: bytes | bytearray = pending
        else:
            scan = 0
            work = chunk
        start = 0
        while True:
            nl = work.find(b"\n", scan)
            if nl < 0:
                break
            line = work[start:nl]
            start = scan = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield SSEEvent(event, "\n".join(data))
                event, data, size = "", [], 0
                continue
            if line[:1] == b":":
                continue
            if len(line) > max_line_bytes:
                raise _line_too_long(max_line_bytes)
            text = line.decode("utf-8", "replace")
            if text.startswith("data:"):
                size += len(line)
                if size > max_line_bytes:
                    raise _line_too_long(max_line_bytes)
                data.append(text[6:] if text[5:6] == " " else text[5:])
            elif text.startswith("event:"):
                event = text[6:].strip()
            elif text.startswith(("id:", "retry:")):
                continue
            else:
                yield SSEEvent("raw", text)
        if work is pending:
            if start:
                del pending[:start]
        elif start < len(work):
            pending = bytearray(work[start:])
        if len(pending) > max_line_bytes:
            raise _line_too_long(max_line_bytes)
    tail = pending.decode("utf-8", "replace").strip()
    if tail:
        if tail.startswith("data:"):
            data.append(tail[5:].lstrip())
        elif not tail.startswith(":"):
            yield SSEEvent("raw", tail)
    if data:
        yield SSEEvent(event, "\n".join(data))


def _line_too_long(limit: int) -> ProviderFailure:
    return ProviderFailure(ErrorKind.MALFORMED_RESPONSE, f"a stream line or event longer than {limit:,} bytes")


# -- failures ---------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    """`TypeName: message`, scrubbed and cut (the message of some exceptions quotes what was sent)."""
    try:
        message = str(exc)
    except Exception:  # an exception whose __str__ itself fails
        message = ""
    name = type(exc).__name__
    return f"{name}: {excerpt(message, EXCERPT_CHARS)}" if message else name


def _is_transport_error(exc: BaseException) -> bool:
    if isinstance(exc, httpx.DecodingError):  # the body's content encoding is broken: the reply is
        return False
    return isinstance(exc, (httpx.TransportError, OSError, asyncio.TimeoutError))


def _unexpected(exc: Exception, ex: _Exchange) -> ProviderFailure:
    """Any exception but a ProviderFailure, as a classified failure of the attempt."""
    if _is_transport_error(exc):
        return _transport_failure(exc, ex)
    what = "the response headers" if ex.status is None else (
        "a stream event" if ex.streaming else f"a {ex.status} response"
    )
    quoted = ex.last_event if ex.streaming else (ex.raw[:_TEXT_BYTES].decode("utf-8", "replace") if ex.raw is not None else None)
    message = f"{_describe(exc)} (reading {what})"
    if quoted:
        message += f": {excerpt(quoted, EXCERPT_CHARS)!r}"
    return ProviderFailure(ErrorKind.MALFORMED_RESPONSE, message)


def _transport_failure(exc: BaseException, ex: _Exchange) -> ProviderFailure:
    msg = _describe(exc)
    if ex.streaming:
        # the 200 headers arrived: whatever the stream sent before the break is the partial answer
        return ProviderFailure(ErrorKind.STREAM_INTERRUPTED, f"stream broke: {msg}")
    if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout, asyncio.TimeoutError)):
        return ProviderFailure(ErrorKind.TIMEOUT, f"no answer in time: {msg}")
    refused = _is_refused(exc)
    return ProviderFailure(ErrorKind.NETWORK, ("connection refused: " if refused else "network: ") + msg, refused=refused)


def _complete(failure: ProviderFailure, ex: _Exchange, protocol: WireProtocol, now: float) -> None:
    """Fill in what the exchange knows and the failure does not: status, partial text, headers' data."""
    failure.__context__ = None
    failure.__cause__ = None
    if failure.status is None and ex.status is not None:
        failure.status = ex.status
    if ex.pieces is not None:
        failure.partial_text = "".join(ex.pieces)
    response = ex.response
    if response is None:
        return
    try:
        if failure.rate_limits is None:
            failure.rate_limits = protocol.rate_limits(ex.headers(), now=now)
        if failure.request_id is None:
            failure.request_id = protocol.request_id(ex.headers())
    except Exception:  # headers too odd to read add nothing to a failure already classified
        pass


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


def _stamp(completion: Completion, protocol: WireProtocol, ex: _Exchange, now: float) -> None:
    if completion.request_id is None:
        completion.request_id = protocol.request_id(ex.headers())
    if completion.rate_limits is None:
        completion.rate_limits = protocol.rate_limits(ex.headers(), now=now)


def _unread(response: httpx.Response) -> AsyncIterable[bytes] | None:
    """The bytes of a response nobody read yet, straight from the transport's stream (what `aiter_raw` yields,
    without its layers: a generator, a chunker and a context manager per piece); None when it was read (a
    transport that made it with `content=`) or its stream is not an async one."""
    stream = response.stream
    if response.is_stream_consumed or not isinstance(stream, httpx.AsyncByteStream):
        return None
    return stream


def _parse_json(raw: bytes) -> tuple[Any, str]:
    """(the parsed body, "") or (None, what is wrong with it)."""
    try:
        return json.loads(raw), ""
    except RecursionError:
        return None, "JSON nested too deep"
    except (ValueError, UnicodeDecodeError):
        return None, "malformed JSON"


# -- plumbing ---------------------------------------------------------------------------------

#: parsed request URLs by their text: httpx parses a str URL on every request (tens of microseconds,
#: more than the rest of the router's work per attempt); a parsed `httpx.URL` is only copied
_URLS: dict[str, httpx.URL] = {}
_URLS_MAX = 1024
#: httpx's per-request timeout extension by its value
_TIMEOUTS: dict[float, dict[str, float | None]] = {}


#: the request body's encoder (made once: `json.dumps` with options makes one per call)
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _merged_headers(headers: Mapping[str, str], stream: bool) -> dict[str, str]:
    """The defaults for a request or a stream, overridden by the endpoint's own headers of the same name
    (in any case)."""
    base = _STREAM_HEADERS if stream else _BASE_HEADERS
    if any(name.lower() in base for name in headers):
        named = {name.lower() for name in headers}
        merged = {k: v for k, v in base.items() if k not in named}
        merged.update(headers)
        return merged
    return {**base, **headers}


def _parsed_url(url: str) -> httpx.URL:
    parsed = _URLS.get(url)
    if parsed is None:
        if len(_URLS) >= _URLS_MAX:
            _URLS.clear()
        parsed = _URLS[url] = httpx.URL(url)
    return parsed


class _Pieces(httpx.AsyncByteStream):
    """A large request body handed to the transport piece by piece (and again whole on another send)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        view = memoryview(self._data)
        for start in range(0, len(view), _PIECE_BYTES):
            yield bytes(view[start:start + _PIECE_BYTES])


def _timeouts(timeout_s: float) -> dict[str, float | None]:
    value = _TIMEOUTS.get(timeout_s)
    if value is None:
        if len(_TIMEOUTS) >= _URLS_MAX:
            _TIMEOUTS.clear()
        value = _TIMEOUTS[timeout_s] = httpx.Timeout(timeout_s).as_dict()
    return value


def _default_transport(limits: httpx.Limits, proxy: str | None = None) -> httpx.AsyncBaseTransport:
    """httpx-aiohttp's transport (through `proxy`, an http:// URL, when given), over an aiohttp session
    that keeps no cookies: LLM APIs need none, and a provider's odd cookie must not reach later requests."""
    try:
        import aiohttp
        from httpx_aiohttp import AiohttpTransport
    except ImportError:  # pragma: no cover - httpx-aiohttp is a dependency
        return httpx.AsyncHTTPTransport(limits=limits, proxy=proxy)
    ssl_context = _ssl_context()

    def session() -> aiohttp.ClientSession:
        # what AiohttpTransport builds by default, plus the cookie jar that drops everything; created on
        # the first request, inside the event loop that owns it
        connector = aiohttp.TCPConnector(limit=limits.max_connections or 0, keepalive_timeout=limits.keepalive_expiry, ssl=ssl_context)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    return AiohttpTransport(limits=limits, verify=ssl_context, client=session, proxy=httpx.Proxy(proxy) if proxy else None)


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """The TLS settings of every default transport, made once: loading the CA bundle takes tens of
    milliseconds, and a Router makes a Sender per event loop (one per `asyncio.run`). An SSLContext is
    safe to share between connections, threads and loops."""
    return httpx.create_ssl_context()


def _proxy_transport(url: str, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """A transport through the proxy at `url`: aiohttp's for an http:// proxy, httpx's own otherwise
    (https:// and socks5:// proxies, which aiohttp does not speak)."""
    if url.lower().startswith("http://"):
        return _default_transport(limits, proxy=url)
    return httpx.AsyncHTTPTransport(limits=limits, proxy=url)


def _environment_proxies() -> dict[str, str]:
    """Proxy URLs by scheme (`http`, `https`, `all`) and the `no` list, from the environment."""
    found = urllib.request.getproxies()
    out: dict[str, str] = {}
    for scheme in ("http", "https", "all", "no"):
        value = found.get(scheme)
        if value:
            out[scheme] = value if scheme == "no" or "://" in value else "http://" + value
    return out
