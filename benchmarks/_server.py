"""A minimal fixed-response HTTP/1.1 server on loopback, run in its own process by the benchmarks.

It answers every `POST .../chat/completions` at once with a fixed OpenAI `chat.completion` JSON body, or,
when the request body asks for `"stream": true`, with a fixed SSE stream (chunked transfer encoding, the
whole stream in one write). Keep-alive, no pipelining. Per request it does a header scan, two byte
searches in the body and one write, so the benchmarks measure the client, not this server.

A model name can script a failure, for the failover benchmark: a model starting with `fail429-` is
answered `429` (no Retry-After), one starting with `fail500-` is answered `500`. A streamed request for
a model starting with `paced-` gets the same stream one event every `PACE_S` (the role and the first text at
once), like a model producing tokens. Every request's arrival
and every answer's write time (`time.monotonic_ns()`, the same clock in every process on Linux) can be
recorded with `--record`; `GET /_events` returns them as JSON and clears them.

Run: `python benchmarks/_server.py [--record]`; it prints `PORT <n>` on stdout once it listens.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time

MODEL = "bench-model"
TEXT = "Hello from the loopback benchmark server."
STREAM_PIECES = ["Hello", " from", " the", " loopback", " benchmark", " server", "."]

PACE_S = 0.002

_MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"]*)"')
_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')


def _completion(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
        },
        separators=(",", ":"),
    ).encode()


def _stream(model: str) -> bytes:
    return b"".join(_stream_parts(_stream_events(model)))


def _stream_events(model: str) -> list[dict]:
    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> dict:
        body: dict = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []}
        if usage is not None:
            body["usage"] = usage
        return body

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in STREAM_PIECES]
    events.append(chunk({}, "stop"))
    events.append(chunk({}, usage={"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}))
    return events


def _stream_parts(events: list[dict]) -> list[bytes]:
    """One HTTP chunk per SSE event; the last part also ends the chunked body."""
    parts = []
    for e in events:
        data = b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n"
        parts.append(b"%x\r\n%s\r\n" % (len(data), data))
    done = b"data: [DONE]\n\n"
    parts.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    return parts


def _json_response(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


_OK = _json_response(b"200 OK", _completion(MODEL))
_STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
_STREAM = _STREAM_HEAD + _stream(MODEL)
_PACED = _stream_parts(_stream_events(MODEL))
_429 = _json_response(b"429 Too Many Requests", json.dumps(
    {"error": {"message": "Rate limit reached (benchmark)", "type": "requests", "code": "rate_limit_exceeded"}}).encode())
_500 = _json_response(b"500 Internal Server Error", json.dumps(
    {"error": {"message": "Internal error (benchmark)", "type": "server_error", "code": None}}).encode())
_404 = _json_response(b"404 Not Found", b'{"error":{"message":"not found"}}')


class _Connection(asyncio.Protocol):
    record = False
    events: list[tuple[int, str, str, int]] = []  # (monotonic ns, "in" | "out", model, status)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15 : j if j >= 0 else len(head)])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = self.buf[end + 4 : total]
            self.buf = self.buf[total:]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        arrived = time.monotonic_ns()
        if head.startswith(b"get /_events"):
            payload = json.dumps(_Connection.events).encode()
            _Connection.events = []
            self.transport.write(_json_response(b"200 OK", payload))  # type: ignore[attr-defined]
            return
        if not head.startswith(b"post ") or b"/chat/completions" not in head[: head.find(b"\r\n")]:
            self.transport.write(_404)  # type: ignore[attr-defined]
            return
        m = _MODEL_RE.search(body)
        model = m.group(1).decode() if m else ""
        if model.startswith("fail429-"):
            out, status = _429, 429
        elif model.startswith("fail500-"):
            out, status = _500, 500
        elif model.startswith("paced-") and _STREAM_RE.search(body):
            # the role event and the first text at once, then one event per PACE_S
            self.transport.write(_STREAM_HEAD + _PACED[0] + _PACED[1])  # type: ignore[attr-defined]
            loop = asyncio.get_running_loop()
            for i, part in enumerate(_PACED[2:], 1):
                loop.call_later(i * PACE_S, self.transport.write, part)  # type: ignore[attr-defined]
            return
        elif _STREAM_RE.search(body):
            out, status = _STREAM, 200
        else:
            out, status = _OK, 200
        self.transport.write(out)  # type: ignore[attr-defined]
        if self.record:
            _Connection.events.append((arrived, "in", model, 0))
            _Connection.events.append((time.monotonic_ns(), "out", model, status))


async def main() -> None:
    _Connection.record = "--record" in sys.argv
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Connection, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    # the parent closes our stdin when it is done (or dies): then stop
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
