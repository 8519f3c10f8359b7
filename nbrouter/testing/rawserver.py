"""A loopback TCP server that answers each connection with exactly the scripted bytes, for tests of what
a client does with replies no HTTP server library would send: broken status lines and headers, invalid
UTF-8, bodies cut or split at any byte, events dripped with pauses.

    with RawServer() as raw:
        raw.script(RawResponse([b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\n", b"{}"]))
        ...  # POST to raw.url + "/v1/chat/completions"

Each connection reads one request (its head and a `content-length` body), takes the next scripted
response, writes its pieces in order (pausing `pause_s` between them), then closes the connection.
It imports only the standard library.
"""

from __future__ import annotations

import collections
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

#: what an unscripted connection gets
DEFAULT_RESPONSE_BYTES = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
#: the longest request head read (the client under test is ours: a bigger one is a bug)
MAX_REQUEST_HEAD = 65536


@dataclass(frozen=True)
class RawResponse:
    """Exactly these bytes, in these pieces.

    Args:
        pieces: written one after another (each a separate `send`, so the client may read them apart).
        pause_s: the pause before each piece after the first.
        hold_s: how long to keep the connection open after the last piece before closing it.
    """

    pieces: Sequence[bytes]
    pause_s: float = 0.0
    hold_s: float = 0.0


def http_response(status: int, body: bytes, headers: Iterable[tuple[str, str]] = (), *, reason: str = "X") -> bytes:
    """A well-formed HTTP/1.1 response with a content-length (the helper for scripts that vary only the body)."""
    head = [f"HTTP/1.1 {status} {reason}", f"content-length: {len(body)}", "connection: close"]
    head += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class RawServer:
    """A loopback server answering each connection with the next scripted RawResponse (see the module)."""

    def __init__(self) -> None:
        self._queue: collections.deque[RawResponse] = collections.deque()
        self._lock = threading.Lock()
        self._requests: list[bytes] = []
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> RawServer:
        """Start serving on an ephemeral port of 127.0.0.1; returns self."""
        if self._server is not None:
            return self
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._answer(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="nbrouter-raw-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (connections being answered finish on their own threads)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> RawServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        if self._server is None:
            raise RuntimeError("the raw server is not running; call start() first")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, *responses: RawResponse) -> None:
        """Queue responses: each new connection takes the next one."""
        with self._lock:
            self._queue.extend(responses)

    def reset(self) -> None:
        """Forget the queue and the recorded requests."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()

    @property
    def requests(self) -> list[bytes]:
        """The requests received so far (head and body), in order."""
        with self._lock:
            return list(self._requests)

    def _answer(self, sock: socket.socket) -> None:
        request = _read_request(sock)
        if request is None:
            return
        with self._lock:
            self._requests.append(request)
            response = self._queue.popleft() if self._queue else RawResponse([DEFAULT_RESPONSE_BYTES])
        try:
            for i, piece in enumerate(response.pieces):
                if i and response.pause_s:
                    time.sleep(response.pause_s)
                sock.sendall(piece)
            if response.hold_s:
                time.sleep(response.hold_s)
        except OSError:  # the client gave up first: that is one of the things under test
            pass
        finally:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _read_request(sock: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk or len(data) > MAX_REQUEST_HEAD:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body
