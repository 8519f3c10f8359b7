"""Tools in a call: declarations from dicts or plain Python functions, and running the calls a model asks for.

A function's declaration is read from the function itself: its name, the first line of its docstring as
the description, and a JSON Schema of its arguments from the signature's annotations (`int`, `float`,
`str`, `bool`, `list[...]`, `dict`, `Literal[...]`, an `Enum`, `X | None`), each argument described by
its line in the docstring's `Args:` section. An argument without a default is required.

    def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
        '''The weather now in a city.

        Args:
            city: the city's name.
            unit: degrees Celsius or Fahrenheit.
        '''
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from dataclasses import replace
from decimal import Decimal
from typing import Any, Awaitable, Callable, Mapping, Sequence

from .._core import Usage
from .._core.content import TOOL_CHOICES, Tool, ToolCall, tool_result
from .types import RouteResult

#: a tool's name as every protocol takes it (OpenAI: letters, digits, `_` and `-`, up to 64; Gemini: starting
#: with a letter or `_`)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters)\s*:\s*$")
_ARG_LINE = re.compile(r"^\s*\*{0,2}(\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what}: a tool's name is a letter or '_' then letters, digits, '_' or '-' "
                         f"(at most 64 characters), not {name!r}")
    return name


def type_schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of one annotation (an empty schema, any value, for what it cannot say)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [m.value for m in annotation]}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return type_schema(inner[0]) if len(inner) == 1 else {"anyOf": [type_schema(a) for a in inner]}
    if annotation in (list, tuple, set) or origin in (list, tuple, set, Sequence):
        schema: dict[str, Any] = {"type": "array"}
        if args and args[0] is not Ellipsis:
            schema["items"] = type_schema(args[0])
        return schema
    if annotation is dict or origin in (dict, Mapping):
        return {"type": "object"}
    return {}


def _docstring(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The first line of a function's docstring and the description of each argument under `Args:`."""
    doc = inspect.getdoc(fn) or ""
    lines = doc.splitlines()
    first = lines[0].strip() if lines else ""
    described: dict[str, str] = {}
    in_args = False
    current: str | None = None
    for line in lines[1:]:
        if _ARGS_HEADER.match(line):
            in_args, current = True, None
            continue
        if not in_args:
            continue
        if line.strip() and not line.startswith((" ", "\t")):  # the next section, unindented
            break
        match = _ARG_LINE.match(line)
        if match and len(line) - len(line.lstrip()) <= 8:
            current = match.group(1)
            described[current] = match.group(3).strip()
        elif current is not None and line.strip():
            described[current] = f"{described[current]} {line.strip()}".strip()
    return first, described


def function_tool(fn: Callable[..., Any]) -> Tool:
    """The declaration of a Python function: its name, its docstring's first line, its arguments' schema.

    Raises:
        ValueError: the function's name is not a valid tool name, or it takes `*args`/`**kwargs` only.
    """
    name = _check_name(getattr(fn, "__name__", None), f"the function {fn!r}")
    description, described = _docstring(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that names something not importable here: read it as written
        hints = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        schema = type_schema(hints.get(param.name, param.annotation))
        if param.name in described and described[param.name]:
            schema = {**schema, "description": described[param.name]}
        properties[param.name] = schema
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return Tool(name, description, parameters)


def tool_of(value: Any) -> Tool:
    """A Tool from a Tool, a dict `{"name", "description", "parameters"}` (or OpenAI's
    `{"type": "function", "function": {...}}`), or a plain Python function.

    Raises:
        ValueError: a dict without a valid `name`, with `parameters` that are no JSON Schema object, or a
            value that is none of these.
    """
    if isinstance(value, Tool):
        return Tool(_check_name(value.name, "a Tool"), value.description, value.parameters)
    if isinstance(value, Mapping):
        inner = value.get("function")
        spec: Mapping[str, Any] = inner if value.get("type") == "function" and isinstance(inner, Mapping) else value
        unknown = set(spec) - {"name", "description", "parameters", "strict"}
        if unknown:
            raise ValueError(f"a tool dict has name, description and parameters, not {', '.join(sorted(map(str, unknown)))}")
        name = _check_name(spec.get("name"), "a tool dict")
        parameters = spec.get("parameters") or {}
        if not isinstance(parameters, Mapping) or (parameters and parameters.get("type", "object") != "object"):
            raise ValueError(f"tool {name!r}: parameters must be the JSON Schema of an object, not {parameters!r:.80}")
        description = spec.get("description") or ""
        if not isinstance(description, str):
            raise ValueError(f"tool {name!r}: the description must be text")
        return Tool(name, description, dict(parameters))
    if callable(value):
        return function_tool(value)
    raise ValueError(f"a tool is a dict with a name, description and parameters, or a Python function, not {type(value).__name__}")


def tools_of(values: Any) -> list[Tool] | None:
    """The Tools of a call's `tools=` (one tool or a list); None for none.

    Raises:
        ValueError: a tool is not valid (see `tool_of`), or two have the same name.
    """
    if values is None:
        return None
    items = list(values) if isinstance(values, (list, tuple)) else [values]
    tools = [tool_of(v) for v in items]
    names = [t.name for t in tools]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two tools are named {twice[0]!r}")
    return tools or None


def check_tool_choice(choice: Any, tools: Sequence[Tool] | None) -> str | None:
    """A call's `tool_choice`, checked: "auto", "required", "none", or one declared tool's name.

    Raises:
        ValueError: it is none of these, or it asks for a tool while none is declared.
    """
    if choice is None:
        return None
    names = [t.name for t in tools or ()]
    if choice in TOOL_CHOICES:
        if choice != "none" and not names:
            raise ValueError(f"tool_choice={choice!r} needs tools=")
        return str(choice)
    if isinstance(choice, str) and choice in names:
        return choice
    known = ", ".join([*sorted(TOOL_CHOICES), *names])
    raise ValueError(f"tool_choice must be one of {known}, not {choice!r}")


# ---- running the calls a model asked for --------------------------------------------------------------


def functions_of(values: Any) -> dict[str, Callable[..., Any]]:
    """The Python functions among a call's tools, by tool name (dicts and Tools cannot be run)."""
    items = list(values) if isinstance(values, (list, tuple)) else [values]
    return {function_tool(v).name: v for v in items if callable(v) and not isinstance(v, (Tool, Mapping))}


def result_text(value: Any) -> str:
    """What a function returned, as the text a tool result carries (JSON for anything but text)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


async def run_call(functions: Mapping[str, Callable[..., Any]], call: ToolCall) -> dict[str, Any]:
    """Run one call with its arguments and return the tool result message; an exception, a tool that is
    not a function here, or arguments that do not fit become an error result the model reads."""
    fn = functions.get(call.name)
    if fn is None:
        return tool_result(call, f"no function {call.name!r} to run (known: {', '.join(sorted(functions)) or 'none'})", is_error=True)
    try:
        value = fn(**call.arguments)
        if inspect.isawaitable(value):
            value = await value
    except Exception as exc:  # the model is told, and may try again or answer without it
        return tool_result(call, f"{type(exc).__name__}: {exc}", is_error=True)
    return tool_result(call, result_text(value))


async def run_calls(functions: Mapping[str, Callable[..., Any]], calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """The result messages of every call, in the calls' order (run one after another)."""
    return [await run_call(functions, call) for call in calls]


def assistant_message(text: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
    """The assistant turn that asked for `calls`, as the next request's history carries it."""
    return {"role": "assistant", "content": text, "tool_calls": [c.as_dict() for c in calls]}


#: asks the model once: (the messages so far, the tool choice of this round) -> its answer
Ask = Callable[[list[dict[str, Any]], "str | None"], Awaitable[RouteResult]]


async def run_tool_loop(ask: Ask, functions: Mapping[str, Callable[..., Any]], messages: list[dict[str, Any]],
                        max_rounds: int, first_choice: str | None = None) -> RouteResult:
    """Ask, run the calls the answer asks for, send the results back, until an answer calls nothing or
    `max_rounds` requests were sent (the first with `first_choice`, the last with "none").

    Returns:
        the last answer, carrying every round's attempts and their totals, and the `transcript`.
    """
    transcript: list[dict[str, Any]] = []
    rounds: list[RouteResult] = []
    for n in range(max_rounds):
        choice = "none" if n == max_rounds - 1 else first_choice if n == 0 else "auto"
        result = await ask([*messages, *transcript], choice)
        rounds.append(result)
        if not result.tool_calls or n == max_rounds - 1:
            break
        transcript.append(result.as_message())
        transcript.extend(await run_calls(functions, result.tool_calls))
    return _combined(rounds, transcript)


def _combined(rounds: Sequence[RouteResult], transcript: list[dict[str, Any]]) -> RouteResult:
    """The last round's answer with the whole loop's record: every attempt, the usage, the cost, the time."""
    last = rounds[-1]
    usage = Usage()
    for r in rounds:
        usage = usage + r.usage
    known = [r.cost_usd for r in rounds if r.cost_usd is not None]
    attempts = [a for r in rounds for a in r.attempts]
    return replace(last, attempts=attempts, usage=usage, cost_usd=sum(known, Decimal(0)) if known else None,
                   cost_unknown_attempts=sum(r.cost_unknown_attempts for r in rounds)
                   + (sum(1 for r in rounds if r.cost_usd is None) if known else 0),
                   latency_s=sum(r.latency_s for r in rounds), usage_known=all(r.usage_known for r in rounds),
                   cost_estimated=any(r.cost_estimated for r in rounds), transcript=transcript)


__all__ = ["Ask", "assistant_message", "run_tool_loop", "check_tool_choice", "function_tool", "functions_of", "result_text", "run_call",
           "run_calls", "tool_of", "tools_of", "type_schema"]
