"""`{name}` in a prompt cell, replaced by the value of `name` in the user namespace (the rules live in
`nbrouter._core.template`, shared with `Router.map`'s prompt templates)."""

from __future__ import annotations

from .._core.template import interpolate

__all__ = ["interpolate"]
