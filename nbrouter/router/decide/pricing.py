"""What an attempt cost: genai-prices (imported on first use), `[prices]` overrides, local servers at 0.

Unit prices are looked up once per (provider, model) and cached, so pricing an attempt is a few
multiplications; an unknown price is None, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from ..._core import Usage
from ..model import Config, Provider

MTOK = Decimal(1_000_000)


@dataclass(frozen=True)
class UnitPrices:
    """USD per token: input, cached input, output; `source` says where they came from."""

    input: Decimal
    cached_input: Decimal
    output: Decimal
    source: str

    def per_mtok(self) -> tuple[float, float]:
        return float(self.input * MTOK), float(self.output * MTOK)

    def cost(self, usage: Usage) -> Decimal:
        cached = min(usage.cached_tokens, usage.input_tokens)
        return (
            self.input * (usage.input_tokens - cached)
            + self.cached_input * cached
            + self.output * usage.output_tokens
        )


FREE = UnitPrices(Decimal(0), Decimal(0), Decimal(0), "local")


class PriceBook:
    """Prices per (provider, model), from overrides, local presets, or genai-prices."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._cache: dict[tuple[str, str], UnitPrices | None] = {}

    def unit_prices(self, provider: Provider, model: str) -> UnitPrices | None:
        key = (provider.name, model)
        try:
            return self._cache[key]
        except KeyError:
            pass
        prices = self._lookup(provider, model)
        self._cache[key] = prices
        return prices

    def _lookup(self, provider: Provider, model: str) -> UnitPrices | None:
        override = self.config.prices.get(f"{provider.name}/{model}")
        if override is not None:
            inp, out = (Decimal(str(v)) / MTOK for v in override)
            return UnitPrices(inp, inp, out, "config")
        if provider.local:
            return FREE
        return _genai_prices(provider.prices_id, model)

    def cost(self, provider: Provider, model: str, usage: Usage | None, reported: Decimal | None = None) -> Decimal | None:
        """The cost of one attempt: the provider's own report first, else usage x unit prices."""
        if reported is not None:
            return reported
        if usage is None:
            return None
        prices = self.unit_prices(provider, model)
        return None if prices is None else prices.cost(usage)

    def estimate(self, provider: Provider, model: str, prompt_tokens: int, max_tokens: int) -> Decimal | None:
        prices = self.unit_prices(provider, model)
        if prices is None:
            return None
        return prices.input * prompt_tokens + prices.output * max_tokens


_genai_cache: dict[tuple[str | None, str], UnitPrices | None] = {}


def _genai_prices(provider_id: str | None, model: str) -> UnitPrices | None:
    key = (provider_id, model)
    if key in _genai_cache:
        return _genai_cache[key]
    result = None
    ref = model[len("models/") :] if model.startswith("models/") else model
    try:
        from genai_prices import Usage as GUsage, calc_price  # imported on first use: it takes ~0.5 s

        provider = provider_id or None
        # priced on a small request: long-context tiers (above 200k tokens) are not the usual price
        n = 1000
        inp = calc_price(GUsage(input_tokens=n), ref, provider_id=provider).total_price
        out = calc_price(GUsage(output_tokens=n), ref, provider_id=provider).total_price
        try:
            cached = calc_price(GUsage(input_tokens=n, cache_read_tokens=n), ref, provider_id=provider).total_price
        except (LookupError, ValueError):
            cached = inp
        result = UnitPrices(Decimal(inp) / n, Decimal(cached) / n, Decimal(out) / n, "genai-prices")
    except (LookupError, ValueError, ImportError):
        result = None
    _genai_cache[key] = result
    return result
