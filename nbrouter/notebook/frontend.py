"""The kernel's side of nbrouter's JupyterLab / Notebook 7 extension (`extension/`).

Two things, both light: `result_payload()` is the JSON a `%%llm` result bundle carries under `MIME` for
the extension's renderer (the route as a picture, the session's spend), and `register()` installs the
comm target `nbrouter` through which the extension's status board asks for `Router.status()` rows and
resets a candidate. Other front ends (VS Code, nbviewer, GitHub, nbclient) ignore both and show the
bundle's text/html, text/markdown and text/plain.

The comm protocol (every message's `data`):

    front end -> kernel   {"request": "status", "id": N}
                          {"request": "reset", "key": "prov#acct/model", "id": N}
    kernel -> front end   {"reply": "status", "id": N, "candidates": [...], "accounts": [...], "warning": str|null,
                           "store": {"kind", "mode", "warning"}, "budget": str|null, "spend": {...}}
                          {"reply": "reset", "id": N, "key": ..., "cleared": int, ...status fields}
                          {"reply": "spend", "spend": {...}}   (whenever the session's cost ledger grows)
                          {"reply": "error", "id": N, "message": str}
                          {"hello": VERSION, "spend": {...}}   (once, when the kernel opens its own comm at load)

`spend` is the session's one total, the cost ledger's that `%llm cost` shows (cells, `--over` batches,
the builder's tests): `{"usd": decimal string, "unknown": attempts at an unknown price, "calls": int}`.
A status row carries its health in words as `%llm status` says it (`health`, `tone`: one rule, views.py).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .._core import scrub
from ..router import account_health, candidate_health, health_text

#: the MIME type of the payload the extension renders (beside text/html, text/markdown, text/plain)
MIME = "application/vnd.nbrouter.result+json"
#: the comm target name, the same on both sides
COMM_TARGET = "nbrouter"
#: the payload's and the comm protocol's version; the front end ignores what it does not know
VERSION = 1
#: the fields of a status row the board shows (the rest of Router.status() stays in the kernel)
CANDIDATE_FIELDS = ("candidate", "breaker", "hold", "hold_reason", "hold_left_s", "p50_s", "requests", "errors", "error_rate",
                    "last_error")
ACCOUNT_FIELDS = ("account", "key_set", "tier", "hold", "hold_reason", "hold_left_s", "requests_minute", "requests_day")


def _cost(value: Any) -> str | None:
    # a Decimal as its exact string; None stays None so an unknown price is never shown as $0
    return None if value is None else str(value)


def _usage(usage: Any) -> dict[str, int]:
    counts: dict[str, int] = usage.as_dict()
    return {k: v for k, v in counts.items() if v or k in ("input_tokens", "output_tokens")}


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def result_payload(result: Any, code: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON the extension renders for one routed answer (never a key: the router scrubs the notes).

    Args:
        result: a `RouteResult` (read through its public attributes only).
        code: `{"source", "cell"}` for `-f code` in JupyterLab or Notebook 7: the extension writes the
            code into the cell it made below cell `cell` last time (found by its metadata), or makes one.

    Returns:
        `{"version", "combo", "served_by", "model", "usage", "cost", "cost_unknown_attempts", "latency",
        "partial", "cached", "attempts": [{"candidate", "path", "action", "kind", "status", "latency",
        "usage", "cost", "hold", "note"}]}`. `cost` is a decimal string in USD, or None when the price is
        unknown; `usage` is None when the provider reported no token counts; latencies are seconds. This
        is the one copy of the attempt record a saved notebook keeps: an attempt leaves out the fields
        that are None or empty (missing means None, `""` for the note, 0 cached tokens) and its `path`
        when it is only the combo and the candidate.
    """
    return {
        "version": VERSION,
        "combo": result.combo,
        "served_by": result.served_by,
        "model": result.model,
        "usage": _usage(result.usage) if result.usage_known else None,
        "cost": _cost(result.cost_usd),
        "cost_unknown_attempts": int(result.cost_unknown_attempts),
        "latency": _seconds(result.latency_s),
        "partial": bool(result.partial),
        "cached": False,  # the router has no response cache yet
        "attempts": [attempt_record(a, result.combo) for a in result.attempts],
        **({"code": code} if code is not None else {}),
    }


def attempt_record(a: Any, combo: str = "") -> dict[str, Any]:
    """One attempt of the payload, without the fields that say nothing: None, empty, no cached tokens, and
    a path that is only the combo and the candidate (the front end shows the candidate then)."""
    record = {
        "candidate": a.candidate,
        "path": a.path if a.path not in (a.candidate, f"{combo} > {a.candidate}") else None,
        "action": a.action.value,
        "kind": a.kind.value if a.kind is not None else None,
        "status": a.status,
        "latency": _seconds(a.latency_s),
        "usage": _usage(a.usage) if a.usage is not None else None,
        "cost": _cost(a.cost_usd) if a.cost_known else None,
        "hold": a.hold,
        "note": a.message or None,
    }
    return {k: v for k, v in record.items() if v is not None}


def _json_value(value: Any) -> Any:
    # status rows hold floats that may be inf/nan (JSON has neither) and enum-like values
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def _with_health(row: dict[str, Any], fields: tuple[str, ...], health: Callable[[Any], tuple[str, str]]) -> dict[str, Any]:
    out = {k: _json_value(row.get(k)) for k in fields}
    words, tone = health(row)
    out["health"] = health_text(words, tone)  # `! flaky`, as `%llm status` writes it
    out["tone"] = tone
    return out


def status_payload(router: Any) -> dict[str, Any]:
    """`Router.status()` as the board's rows: candidates and accounts with their holds and time left, and
    their health as `%llm status` words it.

    Args:
        router: the session's Router.
    """
    status = router.status()
    return {
        "candidates": [_with_health(row, CANDIDATE_FIELDS, candidate_health) for row in status.candidates],
        "accounts": [_with_health(row, ACCOUNT_FIELDS, account_health) for row in status.accounts],
        "warning": status.warning,
        "store": dict(status.store),  # the shared state: "shared", or "local"/"wait" while it is down
        "budget": status.budget,  # a shared budget as every kernel spent it, or None
    }


def spend_payload(ledger: Any) -> dict[str, Any]:
    """The session's total from the cost ledger: `{"usd", "unknown", "calls"}` (see the module's comment)."""
    total = ledger.total
    return {"usd": str(total.usd), "unknown": int(total.unknown), "calls": int(ledger.calls)}


class _Endpoint:
    """Answers the requests of every `nbrouter` comm of one kernel, with the router the magics hold, and
    tells every open comm when the session's spend changes."""

    def __init__(self, get_router: Callable[[], Any], ledger: Any = None) -> None:
        self.get_router = get_router
        self.ledger = ledger
        self.comms: list[Any] = []

    def spend_fields(self) -> dict[str, Any]:
        """`{"spend": ...}` for a message to the front end (nothing without a ledger)."""
        return {"spend": spend_payload(self.ledger)} if self.ledger is not None else {}

    def push_spend(self) -> None:
        """Send the session's spend to every open comm (called from any thread: a builder test runs in one)."""
        message = {"reply": "spend", **self.spend_fields()}
        for comm in list(self.comms):
            try:
                comm.send(message)
            except Exception:  # a comm the front end closed meanwhile: forget it
                self.comms.remove(comm)

    def answer(self, data: Any) -> dict[str, Any] | None:
        if not isinstance(data, dict) or "request" not in data:
            return None
        request, ident = data.get("request"), data.get("id")
        try:
            if request == "status":
                return {"reply": "status", "id": ident, **status_payload(self.get_router()), **self.spend_fields()}
            if request == "reset":
                key = data.get("key")
                if not isinstance(key, str) or not key:
                    raise ValueError("reset needs the candidate's or account's key")
                router = self.get_router()
                cleared = router.reset(key)
                return {"reply": "reset", "id": ident, "key": key, "cleared": cleared, **status_payload(router), **self.spend_fields()}
            raise ValueError(f"unknown request {str(request)[:40]!r} (requests: status, reset)")
        except Exception as exc:  # the board shows the reason; the kernel keeps running
            return {"reply": "error", "id": ident, "message": scrub(f"{type(exc).__name__}: {exc}")[:500]}

    def attach(self, comm: Any) -> None:
        def on_msg(msg: dict[str, Any]) -> None:
            reply = self.answer(msg.get("content", {}).get("data"))
            if reply is not None:
                comm.send(reply)

        comm.on_msg(on_msg)
        comm.on_close(lambda _msg: self.comms.remove(comm) if comm in self.comms else None)
        self.comms.append(comm)


def register(shell: Any, get_router: Callable[[], Any], ledger: Any = None) -> bool:
    """Install the `nbrouter` comm target on this kernel and tell the front end nbrouter is loaded.

    A no-op outside a kernel (terminal IPython). The front end shows its status-bar item once it sees
    the kernel's `hello` comm, and opens a comm of its own after a page reload.

    Args:
        shell: the IPython shell `%load_ext nbrouter` runs in.
        get_router: returns the session's Router (the magics create it on first use).
        ledger: the session's CostLedger, whose total the front end shows; it is told of every change.

    Returns:
        True when the target was installed (the shell has a kernel).
    """
    if getattr(shell, "kernel", None) is None:
        return False
    import comm  # ipykernel has imported it already, and set its kernel-backed manager

    endpoint = _Endpoint(get_router, ledger)
    if ledger is not None:
        ledger.listeners.append(endpoint.push_spend)

    def opened(channel: Any, open_msg: dict[str, Any]) -> None:
        endpoint.attach(channel)
        reply = endpoint.answer(open_msg.get("content", {}).get("data"))
        if reply is not None:
            channel.send(reply)

    comm.get_comm_manager().register_target(COMM_TARGET, opened)
    hello = comm.create_comm(target_name=COMM_TARGET, data={"hello": VERSION, **endpoint.spend_fields()})
    endpoint.attach(hello)
    return True
