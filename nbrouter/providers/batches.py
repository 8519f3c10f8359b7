"""The providers' asynchronous batch endpoints (half price, answered within 24 h): the protocol-neutral part.

One module per protocol (`batch_openai`, `batch_anthropic`, `batch_gemini`) speaks its wire; all three
hand back the values defined here, so that the router never sees a wire shape:

    BatchLine (custom id + ChatRequest) ──submit──> JobStatus (id, state, counts) ──status──> ... terminal
                                                   └──results──> ResultSet {custom id: LineResult}

A protocol module builds lines with the chat protocol's own `build` and reads result lines with its own
`parse` and `classify`, so a batch answer is read exactly as a live one is. Like the chat modules, it
never decides what to do about a failure: a line's failure is classified (an `ErrorKind`) and handed back.

Everything a provider sends is untrusted: ids are checked before they go into a URL, a URL a provider
names is followed only to the endpoint's own origin (the key goes with it), a result file past
`MAX_RESULT_BYTES` or a line that is not JSON is a `malformed_response`, never a crash, and every message
is a scrubbed excerpt.
"""

from __future__ import annotations

import abc
import enum
import importlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import quote, urlsplit

import httpx

from .._core import ErrorKind, ProviderFailure
from .._core.clock import SYSTEM_CLOCK, Clock
from .._core.secrets import excerpt
from ._http import usable_key
from .base import ChatRequest, Completion, Endpoint, WireProtocol, malformed

#: the largest result file (or results stream) read; past it the job's lines are `malformed_response`
MAX_RESULT_BYTES = 512 * 1024 * 1024
#: the largest reply of a control call (create, poll, cancel) read
MAX_REPLY_BYTES = 64 * 1024 * 1024
#: how long one request to a batch endpoint may take (an upload of 200 MB included)
REQUEST_TIMEOUT_S = 600.0
#: an id a provider hands back, as it may go into a URL path
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,256}$")


class JobState(str, enum.Enum):
    """Where a provider's batch job stands, in one vocabulary for the three protocols."""

    VALIDATING = "validating"
    RUNNING = "in_progress"
    FINALIZING = "finalizing"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """The job will not change any more: its results (if any) can be read."""
        return self in TERMINAL

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.EXPIRED, JobState.CANCELLED})


@dataclass(frozen=True)
class BatchLine:
    """One request of a batch: the id its result line comes back under, and the request itself."""

    custom_id: str
    request: ChatRequest


@dataclass
class JobStatus:
    """A provider's batch job as one poll saw it."""

    id: str
    state: JobState
    #: the status as the wire spells it (`in_progress`, `ended`, `BATCH_STATE_RUNNING`, ...)
    wire_status: str
    total: int | None = None
    succeeded: int | None = None
    failed: int | None = None
    #: lines not yet finished (None when the provider does not say)
    pending: int | None = None
    #: why the whole job failed (validation), scrubbed
    error: str | None = None
    #: the kind of a whole-job failure
    error_kind: ErrorKind | None = None
    #: where the results are: file ids, a results URL, a responses file (protocol-specific, checked)
    handles: dict[str, str] = field(default_factory=dict)
    #: results that came inside the job object itself (Gemini's inline responses), as sent
    inline: list[Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.state.terminal


class LineOutcome(str, enum.Enum):
    """How one line of a finished job ended."""

    SUCCEEDED = "succeeded"
    #: the provider answered the line with an error (classified in `failure`)
    ERRORED = "errored"
    #: the line never ran: the job expired or was cancelled first
    UNFINISHED = "unfinished"

    def __str__(self) -> str:
        return self.value


@dataclass
class LineResult:
    """One result line: its custom id, how it ended, the provider's own word for it, the answer or the failure."""

    custom_id: str
    outcome: LineOutcome
    #: the line status as the wire says it (`succeeded`, `errored`, `expired`, `canceled`, `200`, `batch_expired`)
    line_status: str
    completion: Completion | None = None
    failure: ProviderFailure | None = None


@dataclass
class ResultSet:
    """The result lines of a finished job by custom id, and how many lines could not be read at all."""

    lines: dict[str, LineResult] = field(default_factory=dict)
    #: lines that were not JSON, or named no custom id: the rows they were for are missing from `lines`
    unreadable: int = 0

    def add(self, line: LineResult) -> None:
        """Keep the first result of a custom id (a provider repeating a line does not change the answer)."""
        self.lines.setdefault(line.custom_id, line)


class BatchUnsupported(ProviderFailure):
    """The endpoint has no batch API (an OpenAI-compatible server without `/v1/batches`): not a failure of
    the rows, the target is simply not batch-capable."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.UNSUPPORTED, message)


@dataclass(frozen=True)
class BatchLimits:
    """What one job may hold (the provider's documented limits)."""

    max_requests: int
    max_bytes: int


class BatchAPI(abc.ABC):
    """One protocol's batch endpoints: submit, poll, read results, cancel."""

    #: the chat protocol whose `build`, `parse` and `classify` the lines use
    protocol_name: str = ""
    limits: BatchLimits = BatchLimits(1, 1)

    @abc.abstractmethod
    def line_bytes(self, endpoint: Endpoint, line: BatchLine) -> int:
        """How many bytes this line adds to the job's upload (to split a job before a limit)."""

    @abc.abstractmethod
    async def submit(self, http: BatchHTTP, endpoint: Endpoint, model: str, lines: Sequence[BatchLine],
                     label: str) -> JobStatus:
        """Create a job of these lines (all for `model`); `label` is ours, sent where the wire has room for it.

        Raises:
            ProviderFailure: the provider refused the job before accepting it (`BatchUnsupported` when the
                endpoint has no batch API at all).
        """

    @abc.abstractmethod
    async def status(self, http: BatchHTTP, endpoint: Endpoint, job_id: str) -> JobStatus:
        """Poll a job."""

    @abc.abstractmethod
    async def results(self, http: BatchHTTP, endpoint: Endpoint, job: JobStatus, custom_ids: Sequence[str]) -> ResultSet:
        """The result lines of a terminal job (an expired Gemini job has none); `custom_ids` are the job's
        lines in the order they were sent (Gemini's results keep it, and may omit the key)."""

    @abc.abstractmethod
    async def cancel(self, http: BatchHTTP, endpoint: Endpoint, job_id: str) -> JobStatus:
        """Ask the provider to cancel a job (it may take minutes to settle)."""


_APIS = {"openai": ("batch_openai", "OpenAIBatchAPI"), "anthropic": ("batch_anthropic", "AnthropicBatchAPI"),
         "gemini": ("batch_gemini", "GeminiBatchAPI")}
_made: dict[str, BatchAPI] = {}


def get_batch_api(protocol: str) -> BatchAPI | None:
    """The batch API of a chat protocol (`openai`, `anthropic`, `gemini`), imported on first use; None for
    a protocol without one."""
    api = _made.get(protocol)
    if api is None:
        where = _APIS.get(protocol)
        if where is None:
            return None
        module = importlib.import_module(f".{where[0]}", __package__)
        api = _made[protocol] = getattr(module, where[1])()
    return api


# ---- HTTP for the batch endpoints ---------------------------------------------------------------


@dataclass
class Reply:
    """One answer of a batch endpoint: status, headers (lower-case names) and the raw body."""

    status: int
    headers: dict[str, str]
    raw: bytes

    def json(self, where: str) -> dict[str, Any]:
        """The body as a JSON object; `malformed_response` when it is anything else."""
        try:
            value = json.loads(self.raw)
        except (ValueError, RecursionError):
            raise malformed(f"{where}: the reply is not JSON: {excerpt(self.raw[:300].decode('utf-8', 'replace'), 200)!r}",
                            status=self.status) from None
        if not isinstance(value, dict):
            raise malformed(f"{where}: the reply is a {type(value).__name__}, not an object", status=self.status)
        return value


class BatchHTTP:
    """Sends the requests of the batch endpoints (JSON, multipart, downloads) and classifies what fails.

    A non-2xx answer is classified by the chat protocol's own `classify` (the batch endpoints answer with
    the same error bodies); a 404 or 405 of a route that may not exist is `BatchUnsupported`. Nothing
    but a ProviderFailure leaves `send`.

    Args:
        client: the httpx client to send with (made per operation by the caller, on its event loop).
        protocol: the chat protocol that classifies failures.
        clock: the router's clock: what a reply says of time (a reset, a Retry-After date) is dated on it.
    """

    def __init__(self, client: httpx.AsyncClient, protocol: WireProtocol, clock: Clock = SYSTEM_CLOCK) -> None:
        self.client = client
        self.protocol = protocol
        self.clock = clock

    async def send(self, endpoint: Endpoint, method: str, url: str, *, headers: Mapping[str, str], body: Any = None,
                   content: bytes | None = None, files: Mapping[str, Any] | None = None, data: Mapping[str, str] | None = None,
                   max_bytes: int = MAX_REPLY_BYTES, missing_means_unsupported: bool = False) -> Reply:
        """One request; the 2xx Reply, or a classified ProviderFailure.

        Args:
            endpoint: the account (its key is already in `headers`).
            method: GET, POST or DELETE.
            url: where (checked to be on the endpoint's own origin).
            headers: the request's headers.
            body: a JSON body.
            content: a raw body.
            files, data: a multipart body.
            max_bytes: the largest body read; past it the reply is `malformed_response`.
            missing_means_unsupported: a 404/405 means the server has no such route (no batch API).
        """
        if not same_origin(url, endpoint.base_url):
            raise malformed(f"refused to send the key to {excerpt(url, 120)!r}: not the endpoint's own origin")
        try:
            if body is not None:
                content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
            request = self.client.build_request(method, url, headers=dict(headers), content=content, files=files, data=data)
            response = await self.client.send(request, stream=True)
            try:
                raw = await _read_capped(response, max_bytes)
            finally:
                await response.aclose()
        except ProviderFailure:
            raise
        except Exception as exc:  # transport trouble, or a body that cannot be built
            raise transport_failure(exc) from None
        reply = Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, raw)
        if reply.status < 300:
            return reply
        if missing_means_unsupported and reply.status in (404, 405):
            raise BatchUnsupported(f"{endpoint.provider} has no batch API ({method} {urlsplit(url).path} answered {reply.status})")
        raise self.classified(endpoint, reply)

    def classified(self, endpoint: Endpoint, reply: Reply) -> ProviderFailure:
        """A non-2xx reply as the chat protocol classifies it."""
        text = reply.raw[:65536].decode("utf-8", "replace")
        try:
            parsed: Any = json.loads(reply.raw)
        except (ValueError, RecursionError):
            parsed = None
        try:
            return self.protocol.classify(endpoint, reply.status, reply.headers, parsed, text, now=self.clock.time())
        except ProviderFailure as failure:
            return failure
        except Exception:  # a body the classifier cannot read: the status alone still says what happened
            return self.protocol.classify(endpoint, reply.status, reply.headers, None, text, now=self.clock.time())


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for part in response.aiter_bytes():
        size += len(part)
        if size > max_bytes:
            raise malformed(f"a {response.status_code} reply larger than {max_bytes:,} bytes")
        parts.append(part)
    return b"".join(parts)


def transport_failure(exc: BaseException) -> ProviderFailure:
    """A transport exception as `timeout` or `network` (anything else as `malformed_response`), scrubbed."""
    name = type(exc).__name__
    message = f"{name}: {excerpt(str(exc), 200)}" if str(exc) else name
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return ProviderFailure(ErrorKind.TIMEOUT, f"no answer in time: {message}")
    if isinstance(exc, (httpx.TransportError, OSError)):
        return ProviderFailure(ErrorKind.NETWORK, f"network: {message}")
    return malformed(f"{message} (sending to a batch endpoint)")


def client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """An httpx client for one batch operation (its connections belong to the running event loop)."""
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(REQUEST_TIMEOUT_S), follow_redirects=False)


def auth_headers(protocol: WireProtocol, endpoint: Endpoint, model: str) -> dict[str, str]:
    """The headers the chat protocol sends (key, version, the account's own), without the content type."""
    _, headers, _ = protocol.build(usable_key(endpoint), ChatRequest(model=model or "m", messages=[]))
    return {k: v for k, v in headers.items() if k.lower() != "content-type"}


# ---- reading what came back ----------------------------------------------------------------------


def same_origin(url: str, base_url: str) -> bool:
    """Whether `url` is on the scheme, host and port of `base_url` (the only place the key may go)."""
    a, b = urlsplit(url), urlsplit(base_url)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port) and bool(a.hostname)


def safe_id(value: Any, where: str) -> str:
    """An id a provider handed back, checked before it goes into a URL path (quoted as well)."""
    if not isinstance(value, str) or not _SAFE_ID.match(value):
        raise malformed(f"{where} is {excerpt(repr(value), 80)}, not an id")
    return quote(value, safe="")


def jsonl(lines: Sequence[Mapping[str, Any]]) -> bytes:
    """Lines as JSONL bytes (one object per line, UTF-8, NaN refused)."""
    return b"".join(json.dumps(line, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"
                    for line in lines)


def read_jsonl(raw: bytes) -> Iterator[dict[str, Any] | None]:
    """The objects of a JSONL body: blank lines skipped, a line that is not a JSON object given as None
    (the caller counts it; one bad line never drops the others)."""
    for piece in raw.split(b"\n"):
        piece = piece.strip()
        if not piece:
            continue
        try:
            value = json.loads(piece)
        except (ValueError, RecursionError):
            yield None
            continue
        yield value if isinstance(value, dict) else None


def as_obj(value: Any) -> dict[str, Any]:
    """A field that should be a JSON object, or an empty one when it is anything else."""
    return value if isinstance(value, dict) else {}


def as_count(value: Any) -> int | None:
    """A count from a job object (None when absent or not a sane whole number)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value < 2**53:
        return value
    if isinstance(value, str) and value.isascii() and value.isdecimal() and len(value) < 16:
        return int(value)
    return None


def text_of(value: Any, limit: int = 300) -> str | None:
    """A string field of a job object, scrubbed and cut; None when it is not a non-empty string."""
    return excerpt(value, limit) if isinstance(value, str) and value else None


__all__ = [
    "BatchAPI",
    "BatchHTTP",
    "BatchLimits",
    "BatchLine",
    "BatchUnsupported",
    "JobState",
    "JobStatus",
    "LineOutcome",
    "LineResult",
    "MAX_RESULT_BYTES",
    "Reply",
    "ResultSet",
    "TERMINAL",
    "as_count",
    "as_obj",
    "auth_headers",
    "client",
    "get_batch_api",
    "jsonl",
    "read_jsonl",
    "safe_id",
    "same_origin",
]
