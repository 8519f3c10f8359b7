"""`{name}` in a prompt, replaced by the value of `name`: a prompt cell's user namespace (the magic), or a
batch item's fields (`Router.map(prompt="Classify: {item}")`).

Only a brace pair around a bare name that exists in the namespace is replaced (and `{In[3]}` / `{Out[3]}`
where a history is given); every other brace stays exactly as written, so pasted code and JSON pass through
untouched. `{{name}}` writes a literal `{name}` even when `name` exists.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Container, Mapping

_FIELD = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|\{(In|Out)\[(\d+)\]\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def interpolate(text: str, namespace: Mapping[str, Any], hidden: Container[str] = (), *,
                render: Callable[[Any], str] = str, history: Callable[[str, int], str | None] | None = None) -> str:
    """Replace `{name}` by `render(namespace[name])`; `{{name}}` by `{name}`; leave everything else alone.

    Args:
        text: the prompt as typed.
        namespace: the values by name (the user's variables, or a batch item's fields).
        hidden: names that are in the namespace but not the user's (IPython's `In`, `Out`, `exit`...).
        render: how a value reads in the prompt.
        history: `("In" | "Out", n)` -> cell n's source or output, or None when there is none; without it,
            `{In[3]}` stays as written.
    """

    def replace(match: re.Match[str]) -> str:
        escaped, kind, index, name = match.groups()
        if escaped is not None:
            return "{" + escaped + "}"
        if kind is not None:
            value = history(kind, int(index)) if history is not None else None
            return match.group(0) if value is None else value
        if name in namespace and name not in hidden:
            return render(namespace[name])
        return match.group(0)

    return _FIELD.sub(replace, text)
