"""The exceptions nbrouter raises, and what each one means.

The tree (catch `RouteError` for any routing failure; every one carries the `attempts` made):

    Exception
    └── RouteError                  any failure to route a call
        ├── AllTargetsFailed        every candidate failed or was skipped; carries every attempt
        │   ├── AllCoolingDown      every candidate is cooling down; names the first to free up
        │   ├── NotCapable          no candidate can take what the call carries (images, tools, a schema)
        │   └── StopError           an attempt failed with a kind whose action is `stop`
        ├── BudgetExceeded          the estimated cost is above the call's or session's budget
        └── ComboConfigError        the configuration is wrong; names file, combo and field (also a ValueError)
            └── NoProviders         nothing configured, no key set, no local server found
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .._core import ErrorKind
from .._core.text import span
from .types import Attempt, Attempts, RouteResult, attempt_text, output_width, tried_text

#: the widest line of an error's message (its attempt table is fitted to it)
ERROR_WIDTH = 150


class RouteError(Exception):
    """A call could not be routed to an answer.

    Every kind pickles and unpickles whole (a batch's worker on a cluster sends its failures back): the
    copy is made from the error's message and attributes, not by calling `__init__` again, whose
    arguments differ from one kind to the next.
    """

    attempts: list[Attempt]

    def __init__(self, message: str, attempts: list[Attempt] | None = None) -> None:
        super().__init__(message)
        self.attempts = Attempts(attempts or [])
        self.partial: RouteResult | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt, (type(self), self.args, dict(self.__dict__))


class AllTargetsFailed(RouteError):
    """Every candidate of the combo failed or was skipped. `str()` is the attempt table.

    `now` is the router's clock when the call ended: the time left on a hold in the table is counted from
    it (default: the system's).
    """

    def __init__(self, combo: str, attempts: list[Attempt], hint: str = "", headline: str = "", *,
                 now: float | None = None) -> None:
        self.combo = combo
        self.hint = hint or _hint_for(attempts)
        self.headline = headline or f"every target of {combo!r} failed ({tried_text(attempts)})"
        lines = [self.headline + ":", attempt_text(attempts, min(ERROR_WIDTH, output_width()), now)]
        if self.hint:
            lines.append(self.hint)
        super().__init__("\n".join(lines), attempts)


class AllCoolingDown(AllTargetsFailed):
    """Every candidate is cooling down or locked; `first_free` frees up first, at `free_at`."""

    def __init__(self, combo: str, attempts: list[Attempt], first_free: str, free_at: float, now: float) -> None:
        self.first_free = first_free
        self.free_at = free_at
        wait = max(0.0, free_at - now)
        hint = (
            f"all candidates are cooling down; {first_free} frees up first, in {span(wait)}. "
            "Wait, add another target to the combo, or set when_all_cooling = \"wait\" with max_wait_s."
        )
        super().__init__(combo, attempts, hint, now=now)


class NotCapable(AllTargetsFailed):
    """No candidate can take the call: each lacks a capability it needs (vision, tools, JSON schema) or an
    image passes its provider's limits. Nothing was sent. `needed` names what the call needed, `lacking`
    each candidate's reason."""

    def __init__(self, combo: str, attempts: list[Attempt], needed: list[str], lacking: dict[str, str], *,
                 now: float | None = None) -> None:
        self.needed = needed
        self.lacking = lacking
        what = " and ".join(needed) or "what it carries"
        hint = ("declare what a target takes in the config (capabilities = { vision = true, tools = true, "
                "json_schema = true } on a provider, or per model), or add a target that has it.")
        super().__init__(combo, attempts, hint, headline=f"no target of {combo!r} can take this call: it needs {what}",
                         now=now)


class BudgetExceeded(RouteError):
    """The call's estimated cost is above its budget; nothing was sent."""

    def __init__(self, message: str, attempts: list[Attempt] | None = None, estimate: Decimal | None = None) -> None:
        super().__init__(message, attempts)
        self.estimate = estimate


class StopError(AllTargetsFailed):
    """An attempt failed in a way that another target would not fix (invalid request, content filter...)."""

    def __init__(self, combo: str, attempts: list[Attempt], kind: ErrorKind, candidate: str, *, now: float | None = None) -> None:
        self.kind = kind
        self.candidate = candidate
        super().__init__(
            combo, attempts,
            hint=f"another target would not help: {kind.value} stops by default (the combo option fallback_on can change that).",
            headline=f"{combo!r} stopped at {candidate} ({kind.value})", now=now,
        )


class ComboConfigError(RouteError, ValueError):
    """The configuration is wrong; the message names the file, the combo and the field."""

    def __init__(self, message: str, *, file: str | None = None, combo: str | None = None, field: str | None = None) -> None:
        self.file = file
        self.combo = combo
        self.field = field
        where = []
        if file:
            where.append(f"file {file}")
        if combo:
            where.append(f"combo {combo!r}")
        if field:
            where.append(f"field {field!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)


class NoProviders(ComboConfigError):
    """Nothing to route to: no config file, no key in the environment, no local server listening."""

    def __init__(self, where: str) -> None:
        super().__init__(
            "no provider is configured or found. Three ways forward: set a key (e.g. OPENAI_API_KEY, "
            "ANTHROPIC_API_KEY, GEMINI_API_KEY) or start a local server (Ollama, llama.cpp, LM Studio, vLLM); "
            "build a combo with `%llm builder` (or write " + where + "); "
            "or rehearse with the simulator: `nbrouter demo`."
        )


def _rebuilt(cls: type[RouteError], args: tuple[Any, ...], state: dict[str, Any]) -> RouteError:
    """An unpickled RouteError of any kind: its message and attributes as they were, `__init__` not run."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def _hint_for(attempts: list[Attempt]) -> str:
    kinds = {a.kind.value for a in attempts if a.kind is not None}
    if not attempts:
        return "the combo has no usable candidate."
    if kinds and kinds <= {"auth"}:
        return "every key was refused: check the api_key_env variables of these accounts."
    if "rate_limit" in kinds or "quota_exceeded" in kinds:
        return "targets are rate-limited or out of quota: add another provider or account to the combo, or retry later."
    if kinds & {"network", "timeout"}:
        return "targets could not be reached: check the network, the base_url, or that the local server runs."
    return "see the attempt table; the router's status() shows cooldowns and breakers."
