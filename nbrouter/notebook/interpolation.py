"""`{name}` in a prompt cell, replaced by the value of `name` in the user namespace.

Only a brace pair around a bare name that exists in the namespace is replaced, and `{In[3]}` / `{Out[3]}`
(the source and the output of cell 3) when that cell exists; every other brace stays exactly as written,
so pasted code and JSON pass through untouched. `{{name}}` writes a literal `{name}` even when `name`
exists. A pandas DataFrame (or anything with the same `head`/`to_markdown` API) becomes a compact
Markdown table of its first MAX_TABLE_ROWS rows.
"""

from __future__ import annotations

from typing import Any, Container, Mapping, Sequence

from .._core import template

#: a DataFrame in a prompt is cut to this many rows (a prompt is not the place for a whole data set)
MAX_TABLE_ROWS = 20

def value_text(value: Any) -> str:
    """How a value reads in a prompt: `str()`, or a Markdown table for a DataFrame.

    Args:
        value: any Python object from the user's namespace.
    """
    if _is_frame(value):
        rows = len(value)
        table = value.head(MAX_TABLE_ROWS).to_markdown()
        return table if rows <= MAX_TABLE_ROWS else f"{table}\n\n({MAX_TABLE_ROWS} of {rows} rows)"
    return str(value)


def _is_frame(value: Any) -> bool:
    # duck typing: pandas is not a dependency, and a frame that has this API renders the same way
    return callable(getattr(value, "to_markdown", None)) and callable(getattr(value, "head", None)) and hasattr(value, "columns")


def interpolate(text: str, namespace: Mapping[str, Any], hidden: Container[str] = (), *,
                inputs: Sequence[str] = (), outputs: Mapping[int, Any] | None = None) -> str:
    """Replace `{name}` by the value of `namespace[name]`, `{In[n]}` / `{Out[n]}` by cell n's source and
    output; `{{name}}` by `{name}`; leave everything else alone.

    Args:
        text: the prompt as typed.
        namespace: the user's variables.
        hidden: names that are in the namespace but not the user's (IPython's `In`, `Out`, `exit`...).
        inputs: the cells' sources as typed, by execution count (IPython's raw input history).
        outputs: the cells' results, by execution count (IPython's `Out`).
    """
    outputs = outputs or {}

    def history(kind: str, n: int) -> str | None:
        if kind == "In" and 0 < n < len(inputs):
            return inputs[n].rstrip("\n")
        if kind == "Out" and n in outputs:
            return value_text(outputs[n])
        return None

    return template.interpolate(text, namespace, hidden, render=value_text, history=history)
