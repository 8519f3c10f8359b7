"""The Gemini generateContent wire protocol: `POST {base_url}/models/{model}:generateContent`, and
`:streamGenerateContent?alt=sse`, whose stream has no terminator.

Facts encoded here come from providers.md section 3 (wire format) and the Gemini table of section 8
(classification). The API key travels in the `x-goog-api-key` header only, never in the URL, so that it
cannot leak through a logged URL or an exception that quotes one.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from typing import Any, Mapping

from .._core import ErrorKind, Usage
from .._core.clock import Clock
from .._core.content import JSON_MODE, Tool, ToolCall, calls_of, image_of
from .._core.secrets import excerpt
from .base import (
    UNSUPPORTED_TEXT,
    ChatRequest,
    Completion,
    Endpoint,
    ProviderFailure,
    RateLimits,
    SSEEvent,
    StreamDecoder,
    WireProtocol,
    arr,
    clean_id,
    count,
    json_value,
    loose_text,
    malformed,
    names_model,
    obj,
    reasoning_budget,
    string,
    wrong_url_message,
)
from .openai import MAX_MESSAGE_CHARS, parse_duration, retry_after

#: finish reasons that mean a safety or policy filter stopped the answer (providers.md section 3)
SAFETY_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
#: more finish reasons that mean a policy layer stopped the answer (Vertex AI's Model Armor, escalation
#: to review, an answer flagged for a language the model may not use): content_filter like the safety
#: ones, a refusal and not an empty answer
POLICY_FINISH_REASONS = frozenset({"ESCALATION", "MODEL_ARMOR", "LANGUAGE"})
#: finish reasons that say the account itself is limited or disabled (for Prohibited Use Policy
#: violations): account_locked, so the account is held and another provider is tried
ACCOUNT_FINISH_REASONS = frozenset({"PUP_LIMITED_DISABLED"})
#: finish reasons that end an answer normally: with no text they are an empty answer only if nothing came
NORMAL_FINISH_REASONS = frozenset({"STOP", "MAX_TOKENS"})
# Any other finish reason with no text (MALFORMED_FUNCTION_CALL, MALFORMED_RESPONSE, OTHER,
# UNEXPECTED_TOOL_CALL, NO_IMAGE, FINISH_REASON_UNSPECIFIED...) means the model produced nothing usable
# but another model may: empty_response.
#: the most characters of bare (non-SSE) JSON lines gathered while waiting for their brackets to close
MAX_BARE_JSON_CHARS = 1024 * 1024
#: daily quotas reset at midnight in this zone (providers.md section 8, "What to do with each kind")
QUOTA_RESET_ZONE = "America/Los_Angeles"

_CONTEXT_TEXT = re.compile(r"input token count.*exceeds the maximum", re.I | re.S)
_RETRY_IN_TEXT = re.compile(r"retry in\s+([0-9.]+\s*(?:ms|s|m|h)?(?:[0-9.]+\s*(?:ms|s))?)", re.I)
_PER_DAY_TEXT = re.compile(r"per[ _-]?day", re.I)
#: a 403 for a request that carried no API key
_NO_KEY_TEXT = re.compile(r"method doesn't allow unregistered callers", re.I)


def _strip_models(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return None
    return name[len("models/"):] if name.startswith("models/") else name


def usage_from(raw: Any) -> Usage | None:
    """Usage: prompt tokens already include cached ones; billable output adds the thinking tokens."""
    if raw is None:
        return None
    raw = obj(raw, "usageMetadata")
    thoughts = count(raw.get("thoughtsTokenCount"), "usageMetadata.thoughtsTokenCount")
    return Usage(
        input_tokens=count(raw.get("promptTokenCount"), "usageMetadata.promptTokenCount"),
        output_tokens=count(raw.get("candidatesTokenCount"), "usageMetadata.candidatesTokenCount") + thoughts,
        cached_tokens=count(raw.get("cachedContentTokenCount"), "usageMetadata.cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def error_parts(body: Any) -> tuple[int | None, str, str, list[dict[str, Any]]]:
    """(code, status, message, details) of a Google error body; it may come wrapped in an array."""
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return None, "", "", []
    err = body.get("error", body)
    if isinstance(err, str):
        return None, "", excerpt(err, MAX_MESSAGE_CHARS), []
    if not isinstance(err, dict):
        return None, "", "", []
    code = loose_text(err.get("code"))
    # ASCII digits of an HTTP status only ("²".isdigit() is True; 1e400 is no status)
    code_int = int(code) if code.isascii() and code.isdecimal() and len(code) == 3 else None
    raw_details = err.get("details")
    details = [d for d in raw_details if isinstance(d, dict)] if isinstance(raw_details, list) else []
    return code_int, excerpt(loose_text(err.get("status")), 100), excerpt(loose_text(err.get("message")), MAX_MESSAGE_CHARS), details


def _list(value: Any) -> list[Any]:
    """`value` if it is a JSON array, else an empty one (an error body's odd field is dropped)."""
    return value if isinstance(value, list) else []


def _detail(details: list[dict[str, Any]], type_suffix: str) -> list[dict[str, Any]]:
    return [d for d in details if loose_text(d.get("@type")).endswith(type_suffix)]


def next_pacific_midnight(now: float) -> float | None:
    """The first midnight in QUOTA_RESET_ZONE after `now` (epoch seconds): when a Gemini daily quota resets;
    None when this machine has no time-zone database."""
    try:
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(QUOTA_RESET_ZONE)
    except Exception:  # no tz database on this machine: the router falls back to its default
        return None
    local = _dt.datetime.fromtimestamp(now, zone)
    tomorrow = (local + _dt.timedelta(days=1)).date()
    return _dt.datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=zone).timestamp()


class GeminiProtocol(WireProtocol):
    """generateContent: `contents` with roles user/model, `systemInstruction`, `generationConfig`."""

    name = "gemini"

    def build(self, endpoint: Endpoint, request: ChatRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
        system_parts = [request.system] if request.system else []
        contents: list[dict[str, Any]] = []
        #: the `functionResponse` parts of the user turn being gathered (every result of a turn goes in one),
        #: and the name of each call by its id (a result must name its function)
        results: list[dict[str, Any]] | None = None
        names: dict[str, str] = {}
        for message in request.messages:
            role = message.get("role")
            content = message.get("content")
            if role in ("system", "developer"):
                system_parts.append(content if isinstance(content, str) else _text_of(content))
                continue
            if role == "tool":
                if results is None:
                    results = []
                    contents.append({"role": "user", "parts": results})
                results.append(_response_part(message, names))
                continue
            results = None
            parts = _parts(content)
            if "tool_calls" in message:
                calls = calls_of(message)
                names.update((c.id, c.name) for c in calls)
                parts = [p for p in parts if p != {"text": ""}] + [_call_part(c) for c in calls]
            contents.append({"role": "model" if role in ("assistant", "model") else "user", "parts": parts})
        body: dict[str, Any] = {"contents": contents}
        system = "\n\n".join(p for p in system_parts if p)
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.response_format is not None:
            config["responseMimeType"] = "application/json"
            schema = _json_schema(request.response_format)
            if schema is not None:
                config["responseJsonSchema"] = schema
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.stop:
            config["stopSequences"] = request.stop
        if request.reasoning is not None:
            config["thinkingConfig"] = {"thinkingBudget": reasoning_budget(request.reasoning)}
        if config:
            body["generationConfig"] = config
        if request.tools:
            body["tools"] = [{"functionDeclarations": [_declaration(t) for t in request.tools]}]
        if request.tool_choice is not None:
            body["toolConfig"] = {"functionCallingConfig": _calling_config(request.tool_choice)}
        if request.extra_body:
            body.update(request.extra_body)
        headers = {"content-type": "application/json", **endpoint.headers}
        if endpoint.api_key:
            headers["x-goog-api-key"] = endpoint.api_key
        model = _strip_models(request.model) or request.model
        method = ":streamGenerateContent?alt=sse" if request.stream else ":generateContent"
        return f"{endpoint.base_url.rstrip('/')}/models/{model}{method}", headers, body

    def parse(self, endpoint: Endpoint, status: int, headers: Mapping[str, str], body: Any, *, now: float) -> Completion:
        if isinstance(body, list) and len(body) == 1:
            body = body[0]
        body = obj(body, "the response")
        if "error" in body:
            raise self.failure(endpoint, status, headers, body, now=now)
        usage = usage_from(body.get("usageMetadata"))
        model = _strip_models(string(body.get("modelVersion"), "modelVersion"))
        candidates = arr(body.get("candidates"), "candidates")
        if not candidates:
            _check_blocked(body, usage, model, status)
            raise ProviderFailure(
                ErrorKind.EMPTY_RESPONSE, "200 with no candidates and no block reason", status=status, usage=usage, model=model
            )
        candidate = obj(candidates[0], "candidates[0]")
        text = _candidate_text(candidate)
        calls = _candidate_calls(candidate, 0)
        finish = string(candidate.get("finishReason"), "candidates[0].finishReason")
        _check_finish(finish, text, usage, model, status)
        if not text and not finish and not calls:
            raise ProviderFailure(ErrorKind.EMPTY_RESPONSE, "200 with no text and no finish reason", status=status, usage=usage)
        return Completion(
            text=text, model=model, finish_reason=finish, usage=usage,
            request_id=self.request_id(headers) or clean_id(body.get("responseId")),
            served_model=None if endpoint.local else model, tool_calls=calls,
        )

    def decoder(self, endpoint: Endpoint, request: ChatRequest, *, clock: Clock) -> StreamDecoder:
        return _GeminiStream(self, endpoint, clock)

    def classify(
        self, endpoint: Endpoint, status: int, headers: Mapping[str, str], body: Any, text: str, *, now: float
    ) -> ProviderFailure:
        return self.failure(endpoint, status, headers, body, now=now, raw=text)

    def rate_limits(self, headers: Mapping[str, str], *, now: float) -> RateLimits | None:
        # The Generative Language API sends no rate-limit headers; headroom comes from 429 bodies.
        return None

    # -- classification --------------------------------------------------------------------

    def failure(
        self, endpoint: Endpoint, status: int, headers: Mapping[str, str], body: Any, *, now: float, raw: str = ""
    ) -> ProviderFailure:
        """A ProviderFailure for a Google error body (an HTTP error, or an error object in a 200 stream);
        `now` is the clock's time it came at."""
        code, gstatus, message, details = error_parts(body)
        if not message:
            message = excerpt(raw, 300) if raw else f"HTTP {status}"
        judged = code if status < 300 and code else status
        kind = self.kind_for(judged, gstatus, message, details)
        wait = None
        reset_at = None
        if kind is ErrorKind.RATE_LIMIT:
            wait = _retry_delay(details, message)
            if wait is None:
                wait = retry_after(headers, now)
        elif kind is ErrorKind.QUOTA_EXCEEDED:
            # a daily quota: retryDelay may be present, but retrying before the reset is pointless
            reset_at = next_pacific_midnight(now)
        elif kind in (ErrorKind.OVERLOADED, ErrorKind.SERVER_ERROR):
            wait = retry_after(headers, now)
        label = " ".join(str(p) for p in (status, gstatus) if p)
        text = wrong_url_message(endpoint, status, excerpt(message, 200)) if kind is ErrorKind.ENDPOINT_NOT_FOUND else f"{label}: {message}"
        return ProviderFailure(
            kind,
            excerpt(text, 500),
            status=status,
            retry_after_s=wait,
            reset_at=reset_at,
            request_id=self.request_id(headers),
        )

    @staticmethod
    def kind_for(status: int, gstatus: str, message: str, details: list[dict[str, Any]]) -> ErrorKind:
        """The Gemini table of providers.md section 8: the canonical status and details, then the code."""
        low = message.lower()
        if gstatus == "RESOURCE_EXHAUSTED" or status == 429:
            quota_ids = [
                loose_text(v.get("quotaId")) + " " + loose_text(v.get("quotaMetric"))
                for d in _detail(details, "QuotaFailure")
                for v in _list(d.get("violations"))
                if isinstance(v, dict)
            ]
            if any(_PER_DAY_TEXT.search(q) for q in quota_ids) or "limit: 0" in low:
                return ErrorKind.QUOTA_EXCEEDED
            if "exceeded your current quota" in low and _PER_DAY_TEXT.search(low):
                return ErrorKind.QUOTA_EXCEEDED
            return ErrorKind.RATE_LIMIT
        reasons = {loose_text(d.get("reason")) for d in _detail(details, "ErrorInfo")}
        if "API_KEY_INVALID" in reasons or "api key not valid" in low or status == 401 or gstatus == "UNAUTHENTICATED":
            return ErrorKind.AUTH
        if _NO_KEY_TEXT.search(message):
            # a 403 PERMISSION_DENIED for a request that carried no key: the key is missing, nothing is locked
            return ErrorKind.AUTH
        if status == 403 or gstatus in ("PERMISSION_DENIED", "FAILED_PRECONDITION"):
            return ErrorKind.ACCOUNT_LOCKED
        if status == 404 or gstatus == "NOT_FOUND":
            # Google's own 404 names the model ("models/x is not found for API version v1beta"); a 404 that is
            # no Google error (the front end's HTML page, which quotes the path, /models/ and all) is the URL's
            if gstatus == "NOT_FOUND" and names_model(message):
                return ErrorKind.MODEL_NOT_FOUND
            return ErrorKind.ENDPOINT_NOT_FOUND
        if _CONTEXT_TEXT.search(message):
            return ErrorKind.CONTEXT_OVERFLOW
        if gstatus == "DEADLINE_EXCEEDED" or status in (408, 504):
            return ErrorKind.TIMEOUT
        if gstatus == "UNAVAILABLE" or status == 503:
            return ErrorKind.OVERLOADED
        if gstatus == "INTERNAL" or status >= 500:
            return ErrorKind.SERVER_ERROR
        if (gstatus == "INVALID_ARGUMENT" or 400 <= status < 500) and UNSUPPORTED_TEXT.search(message):
            return ErrorKind.UNSUPPORTED
        if gstatus == "INVALID_ARGUMENT" or 400 <= status < 500:
            return ErrorKind.INVALID_REQUEST
        # an error object with neither a known status nor a code, inside a 200 stream
        return ErrorKind.SERVER_ERROR


def _retry_delay(details: list[dict[str, Any]], message: str) -> float | None:
    """Seconds from `RetryInfo.retryDelay` ("32s"), else from "Please retry in 32.5s." in the message."""
    for info in _detail(details, "RetryInfo"):
        delay = parse_duration(loose_text(info.get("retryDelay")))
        if delay is not None:
            return delay
    match = _RETRY_IN_TEXT.search(message)
    if match:
        text = match.group(1).replace(" ", "")
        return parse_duration(text if text[-1:].isalpha() else text + "s")
    return None


def _check_blocked(body: dict[str, Any], usage: Usage | None, model: str | None, status: int | None) -> None:
    feedback = obj(body.get("promptFeedback"), "promptFeedback")
    reason = loose_text(feedback.get("blockReason"))
    if reason:
        extra = loose_text(feedback.get("blockReasonMessage"))
        raise ProviderFailure(
            ErrorKind.CONTENT_FILTER,
            excerpt(f"the prompt was blocked: {reason}{' (' + extra + ')' if extra else ''}", 500),
            status=status, usage=usage, model=model,
        )


def _check_finish(
    finish: str | None, text: str, usage: Usage | None, model: str | None, status: int | None, *, has_text: bool | None = None
) -> None:
    """Raise for the finish reasons that are failures although the status was 200 (`text`: the body's
    answer; `has_text`: whether a stream sent any text before this chunk)."""
    has_text = bool(text) if has_text is None else has_text
    if finish in SAFETY_FINISH_REASONS or finish in POLICY_FINISH_REASONS:
        raise ProviderFailure(
            ErrorKind.CONTENT_FILTER, f"the answer was stopped by a filter: finishReason {finish}",
            status=status, usage=usage, model=model, partial_text=text,
        )
    if finish in ACCOUNT_FINISH_REASONS:
        raise ProviderFailure(
            ErrorKind.ACCOUNT_LOCKED, f"the account is limited or disabled for Prohibited Use Policy violations: finishReason {finish}",
            status=status, usage=usage, model=model, partial_text=text,
        )
    if finish and finish not in NORMAL_FINISH_REASONS and not has_text:
        raise ProviderFailure(
            ErrorKind.EMPTY_RESPONSE, excerpt(f"no text: finishReason {finish}", 200), status=status, usage=usage, model=model,
        )


def _candidate_text(candidate: dict[str, Any]) -> str:
    content = obj(candidate.get("content"), "candidate.content")
    parts = arr(content.get("parts"), "candidate.content.parts")
    # thought summaries (`thought: true`) are not part of the answer
    return "".join(
        string(p.get("text"), "candidate.content.parts[].text") or ""
        for p in parts if isinstance(p, dict) and not p.get("thought")
    )


#: the start of the id nbrouter gives a Gemini call that came without one; never sent back as an id
GENERATED_ID_PREFIX = "nbr-call-"


def _candidate_calls(candidate: dict[str, Any], first: int) -> list[ToolCall]:
    """The `functionCall` parts of a candidate as ToolCalls (`first`: how many calls came before, for the
    ids of calls that came without one)."""
    content = obj(candidate.get("content"), "candidate.content")
    calls: list[ToolCall] = []
    for part in arr(content.get("parts"), "candidate.content.parts"):
        if not isinstance(part, dict) or part.get("functionCall") is None:
            continue
        call = obj(part["functionCall"], "candidate.content.parts[].functionCall")
        name = string(call.get("name"), "functionCall.name")
        if not name:
            raise ProviderFailure(ErrorKind.MALFORMED_RESPONSE, "a functionCall part names no function")
        ident = string(call.get("id"), "functionCall.id") or f"{GENERATED_ID_PREFIX}{first + len(calls)}"
        calls.append(ToolCall(ident, name, obj(call.get("args"), "functionCall.args"),
                              string(part.get("thoughtSignature"), "a functionCall part's thoughtSignature")))
    return calls


#: what Gemini 3 takes in place of a thought signature for a call it did not make (multimodal_tools.md §3)
SKIP_SIGNATURE = "skip_thought_signature_validator"


def _call_part(call: ToolCall) -> dict[str, Any]:
    """A model turn's `functionCall` part, with the signature the call came with (it is required back)."""
    fn: dict[str, Any] = {"name": call.name, "args": call.arguments}
    if call.id and not call.id.startswith(GENERATED_ID_PREFIX):
        fn["id"] = call.id
    return {"functionCall": fn, "thoughtSignature": call.signature or SKIP_SIGNATURE}


def _response_part(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """A tool result as a `functionResponse` part: `output`, or `error` when the tool failed."""
    ident = message.get("tool_call_id")
    ident = ident if isinstance(ident, str) else ""
    name = message.get("name") if isinstance(message.get("name"), str) else names.get(ident, "")
    content = message.get("content")
    value = content if isinstance(content, str) else _text_of(content)
    fn: dict[str, Any] = {"name": name, "response": {"error" if message.get("is_error") else "output": value}}
    if ident and not ident.startswith(GENERATED_ID_PREFIX):
        fn["id"] = ident
    return {"functionResponse": fn}


def _declaration(tool: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name, "parametersJsonSchema": tool.schema()}
    if tool.description:
        out["description"] = tool.description
    return out


#: the portable tool_choice values as Gemini's function-calling modes
_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


def _calling_config(choice: str) -> dict[str, Any]:
    if choice in _MODES:
        return {"mode": _MODES[choice]}
    return {"mode": "ANY", "allowedFunctionNames": [choice]}


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append({"text": part})
            elif isinstance(part, dict) and part.get("type") == "text":
                parts.append({"text": str(part.get("text") or "")})
            elif isinstance(part, dict) and part.get("type") in ("image", "image_url"):
                parts.append(_image_part(part))
            elif isinstance(part, dict):
                parts.append(part)
        return parts
    return [{"text": "" if content is None else str(content)}]


def _image_part(part: dict[str, Any]) -> dict[str, Any]:
    """An image part as `inlineData` (base64 with its MIME type) or `fileData` (a URL)."""
    image = image_of(part)
    if image is None:
        return part
    if image.url is not None:
        data: dict[str, Any] = {"fileUri": image.url}
        if isinstance(part.get("media_type"), str):
            data["mimeType"] = part["media_type"]
        return {"fileData": data}
    return {"inlineData": {"mimeType": image.media_type, "data": image.data}}


def _json_schema(response_format: dict[str, Any] | str) -> dict[str, Any] | None:
    """The JSON schema to send as `responseJsonSchema`; OpenAI-shaped values are unwrapped; "json" has none."""
    if isinstance(response_format, str):
        if response_format != JSON_MODE:
            raise ValueError(f"response_format {response_format!r}: give a JSON Schema, or {JSON_MODE!r} for any JSON object")
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return None
    if kind == "json_schema" and isinstance(response_format.get("json_schema"), dict):
        schema = response_format["json_schema"].get("schema")
        return schema if isinstance(schema, dict) else None
    if kind == "json_schema" and isinstance(response_format.get("schema"), dict):
        return dict(response_format["schema"])
    return response_format


class _JsonLines:
    """Collects bare (non-SSE) lines until the JSON value they spell is complete: Gemini can write an
    error object over several lines without a `data:` prefix. Brackets inside strings do not count."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.size = 0

    def _reset(self) -> None:
        self.lines, self.depth, self.in_string, self.escaped, self.size = [], 0, False, False, 0

    def add(self, line: str) -> Any:
        """Take one line; return the parsed value once its brackets balance, else None."""
        if not self.lines and not line.lstrip().startswith(("{", "[")):
            return None  # not JSON at all: ignore it
        self.size += len(line)
        if self.size > MAX_BARE_JSON_CHARS:
            self._reset()
            raise malformed(f"bare JSON lines in the stream past {MAX_BARE_JSON_CHARS:,} characters without closing")
        self.lines.append(line)
        for ch in line:
            if self.escaped:
                self.escaped = False
            elif self.in_string:
                if ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
        if self.depth > 0:
            return None
        text = "\n".join(self.lines)
        self._reset()
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            return None


class _GeminiStream(StreamDecoder):
    """Reads `data:` chunks until the connection closes (there is no terminator, so `done` stays
    False); the answer is complete only if a chunk carried a `finishReason`."""

    def __init__(self, protocol: GeminiProtocol, endpoint: Endpoint, clock: Clock) -> None:
        self.protocol = protocol
        self.endpoint = endpoint
        self.clock = clock
        self.done = False
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.response_id: str | None = None
        self.usage: Usage | None = None
        self.any_text = False
        self.bare = _JsonLines()
        #: the functionCall parts seen so far (each chunk carries whole calls)
        self.calls: list[ToolCall] = []

    def feed(self, event: SSEEvent) -> str | None:
        if event.event == "raw":
            value = self.bare.add(event.data)
            return None if value is None else self._values(value)
        return self._values(json_value(event.data, "a stream chunk"))

    def _values(self, value: Any) -> str | None:
        # a chunk may come as an array of chunks (one level: a deeper nesting is no Gemini chunk)
        if isinstance(value, list):
            pieces = [self._value(v) for v in value]
            return "".join(p for p in pieces if p) or None
        return self._value(value)

    def _value(self, value: Any) -> str | None:
        if not isinstance(value, dict):
            return None
        if "error" in value:
            raise self.protocol.failure(self.endpoint, 200, {}, value, now=self.clock.time())
        self.model = _strip_models(string(value.get("modelVersion"), "a stream chunk's modelVersion")) or self.model
        self.response_id = clean_id(value.get("responseId")) or self.response_id
        if value.get("usageMetadata"):
            # each chunk's usage is the running total; the last one holds the final counts
            self.usage = usage_from(value["usageMetadata"])
        candidates = arr(value.get("candidates"), "a stream chunk's candidates")
        if not candidates:
            _check_blocked(value, self.usage, self.model, None)
            return None
        candidate = obj(candidates[0], "a stream chunk's candidates[0]")
        text = _candidate_text(candidate)
        self.any_text = self.any_text or bool(text)
        self.calls += _candidate_calls(candidate, len(self.calls))
        finish = string(candidate.get("finishReason"), "a stream chunk's finishReason")
        if finish:
            self.finish_reason = finish
            _check_finish(finish, "", self.usage, self.model, None, has_text=self.any_text)
        return text or None

    def finish(self) -> Completion:
        if self.finish_reason is None:
            raise ProviderFailure(
                ErrorKind.STREAM_INTERRUPTED, "stream ended before a chunk with a finishReason", usage=self.usage, model=self.model
            )
        return Completion(
            text="", model=self.model, finish_reason=self.finish_reason, usage=self.usage,
            request_id=self.response_id, served_model=None if self.endpoint.local else self.model, tool_calls=self.calls,
        )
