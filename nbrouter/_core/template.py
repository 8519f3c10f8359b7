"""`{name}` in a prompt, replaced by the value of `name`: a prompt cell's user namespace (the magic), or a
batch item's fields (`Router.map(prompt="Classify: {item}")`).

Only a brace pair around a bare name that exists in the namespace is replaced; every other brace stays
exactly as written, so pasted code and JSON pass through untouched. `{{name}}` writes a literal
`{name}` even when `name` exists.
"""

from __future__ import annotations

import re
from typing import Any, Container, Mapping

_FIELD = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def interpolate(text: str, namespace: Mapping[str, Any], hidden: Container[str] = ()) -> str:
    """Replace `{name}` by `str(namespace[name])`; `{{name}}` by `{name}`; leave everything else alone.

    Args:
        text: the prompt as typed.
        namespace: the user's variables.
        hidden: names that are in the namespace but not the user's (IPython's `In`, `Out`, `exit`...).
    """

    def replace(match: re.Match[str]) -> str:
        escaped, name = match.group(1), match.group(2)
        if escaped is not None:
            return "{" + escaped + "}"
        if name in namespace and name not in hidden:
            return str(namespace[name])
        return match.group(0)

    return _FIELD.sub(replace, text)
