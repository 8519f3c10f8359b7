"""Structured output: a JSON schema (or a pydantic model class) sent natively, the reply parsed and validated.

The schema travels to the wire as `response_format` (each protocol maps it: OpenAI `json_schema`,
Anthropic `output_config.format`, Gemini `responseSchema`). A reply that is not JSON, or does not match,
is the failure kind `invalid_output`: the policy table retries it once on the same target, then falls back.
Validation uses `jsonschema` (the reference validator of the JSON Schema drafts), imported on first use;
pydantic is used only when the caller gives a pydantic model class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Mapping, Union

from .._core import ErrorKind, ProviderFailure

#: the pandas dtype of each JSON schema type (nullable dtypes: a failed item leaves the cell empty)
PANDAS_DTYPES = {"integer": "Int64", "number": "Float64", "boolean": "boolean", "string": "string"}


@dataclass(frozen=True)
class OutputSchema:
    """The schema a call's answer must match: the JSON schema and, when given one, the pydantic model."""

    json_schema: dict[str, Any]
    model: Any = None

    @property
    def fields(self) -> dict[str, str | None]:
        """The top-level properties and their JSON types (None when not a single simple type)."""
        props = self.json_schema.get("properties")
        if not isinstance(props, Mapping):
            return {}
        out: dict[str, str | None] = {}
        for name, spec in props.items():
            kind = spec.get("type") if isinstance(spec, Mapping) else None
            if isinstance(kind, list):  # ["integer", "null"] is still an integer column
                kinds = [k for k in kind if k != "null"]
                kind = kinds[0] if len(kinds) == 1 else None
            out[str(name)] = kind if isinstance(kind, str) else None
        return out

    def parse(self, text: str) -> Any:
        """The validated value of a reply (a pydantic instance when the schema came from a model).

        Raises:
            ValueError: the text is not JSON or does not match the schema (the message says where).
        """
        body = _strip_fence(text)
        try:
            value = json.loads(body)
        except ValueError as exc:
            raise ValueError(f"the answer is not JSON ({exc.args[0][:80]})") from None
        if self.model is not None:
            try:
                return self.model.model_validate(value)
            except Exception as exc:  # pydantic's ValidationError; its first line names the field
                raise ValueError(f"the answer does not match {self.model.__name__}: {str(exc).splitlines()[0][:160]}") from None
        import jsonschema

        error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(self.json_schema)(self.json_schema).iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "the top level"
            raise ValueError(f"the answer does not match the schema at {where}: {error.message[:160]}")
        return value

    def row(self, parsed: Any) -> dict[str, Any]:
        """The parsed value as a dict of the schema's fields (for table columns)."""
        if parsed is None:
            return {}
        if hasattr(parsed, "model_dump"):
            parsed = parsed.model_dump()
        return dict(parsed) if isinstance(parsed, Mapping) else {"value": parsed}


def _strip_fence(text: str) -> str:
    """A reply wrapped in a Markdown code fence (some models add one even in JSON mode), unwrapped."""
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        if t.rstrip().endswith("```"):
            t = t.rstrip()[:-3]
    return t


#: what a caller may give as `schema=`: a JSON schema dict, a pydantic model class, or an OutputSchema
SchemaSpec = Union[Mapping[str, Any], "type[Any]", OutputSchema]


def output_schema(schema: SchemaSpec) -> OutputSchema:
    """An OutputSchema from what a caller gives: a JSON schema dict, a pydantic model class, or an OutputSchema.

    Args:
        schema: the schema.

    Raises:
        TypeError: it is none of those.
    """
    if isinstance(schema, OutputSchema):
        return schema
    if isinstance(schema, Mapping):
        return OutputSchema(dict(schema))
    if isinstance(schema, type) and hasattr(schema, "model_json_schema") and hasattr(schema, "model_validate"):
        js = schema.model_json_schema()
        js.setdefault("title", schema.__name__)
        return OutputSchema(js, schema)
    raise TypeError(f"schema must be a JSON schema dict or a pydantic model class, not {type(schema).__name__}")


async def checked_output(sending: Awaitable[Any], schema: OutputSchema) -> Any:
    """Await a send and check its answer against the schema: a mismatch is the failure `invalid_output`
    (carrying the reply's usage and rate limits: the answer was paid for)."""
    completion = await sending
    try:
        schema.parse(completion.text)
    except ValueError as exc:
        raise ProviderFailure(ErrorKind.INVALID_OUTPUT, str(exc), usage=completion.usage,
                              request_id=completion.request_id, rate_limits=completion.rate_limits) from None
    return completion


__all__ = ["OutputSchema", "PANDAS_DTYPES", "checked_output", "output_schema"]
