"""Batch prices: what a provider charges for a line of an asynchronous batch (half the live price for the
three providers with batch APIs), from genai-prices' batch variants (`price_context={"processing": "batch"}`).

Unknown stays unknown: a model genai-prices has no batch variant for gets no batch price (never a guessed
half), and neither does a model priced by a `[prices]` override (the override names the live price only).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ..decide.pricing import UnitPrices
from ..model import Provider

BATCH_CONTEXT = {"processing": "batch"}
#: (prices id, model) -> the batch unit prices, or None (no batch price known)
_known: dict[tuple[str | None, str], UnitPrices | None] = {}


def batch_unit_prices(provider: Provider, model: str, overridden: bool) -> UnitPrices | None:
    """USD per token of one batch line on `provider`/`model`, or None when no batch price is known.

    Args:
        provider: the provider (its `prices_id` names it to genai-prices).
        model: the model.
        overridden: the config's `[prices]` names this target's live price (then no batch price is known).
    """
    if overridden or provider.local:
        return None
    key = (provider.prices_id, model)
    if key not in _known:
        _known[key] = _lookup(provider.prices_id, model)
    return _known[key]


def _lookup(provider_id: str | None, model: str) -> UnitPrices | None:
    ref = model[len("models/"):] if model.startswith("models/") else model
    try:
        from genai_prices import Usage as GUsage, calc_price  # imported on first use (it takes ~0.5 s)
    except ImportError:
        return None
    kwargs: dict[str, Any] = {"provider_id": provider_id} if provider_id else {}
    n = 1000  # a small request: long-context tiers are not the usual price
    try:
        probe = calc_price(GUsage(input_tokens=n), ref, price_context=BATCH_CONTEXT, **kwargs)
        if not _has_batch_variant(probe.model):
            return None
        inp = probe.total_price
        out = calc_price(GUsage(output_tokens=n), ref, price_context=BATCH_CONTEXT, **kwargs).total_price
        try:
            cached = calc_price(GUsage(input_tokens=n, cache_read_tokens=n), ref, price_context=BATCH_CONTEXT,
                                **kwargs).total_price
        except (LookupError, ValueError):
            cached = inp
    except (LookupError, ValueError):
        return None
    return UnitPrices(Decimal(inp) / n, Decimal(cached) / n, Decimal(out) / n, "genai-prices (batch)")


def _has_batch_variant(model: Any) -> bool:
    """Whether genai-prices has a batch price for this model (else it answers with the live one)."""
    variants = getattr(model, "price_variants", None) or ()
    return any(getattr(v, "when", {}).get("processing") == "batch" for v in variants)


__all__ = ["BATCH_CONTEXT", "batch_unit_prices"]
