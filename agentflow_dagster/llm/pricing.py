"""A small price table: USD per million input and output tokens, by model name prefix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Override per deployment through LLMResource.prices; longest matching prefix wins.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "offline-extractive": (0.0, 0.0),
}


def cost_usd(
    model: str, input_tokens: int, output_tokens: int, prices: Mapping[str, Sequence[float]] | None = None
) -> float:
    """Cost of one call; unknown models cost 0 (the table is configurable, not guessed)."""
    table: dict[str, Sequence[float]] = {**DEFAULT_PRICES, **(prices or {})}
    matches = [prefix for prefix in table if model.startswith(prefix)]
    if not matches:
        return 0.0
    price_in, price_out = table[max(matches, key=len)][:2]
    return round((input_tokens * price_in + output_tokens * price_out) / 1_000_000, 6)
