"""LLM call cost: the deployment's own prices first, then the maintained `genai-prices` data, else unknown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from genai_prices import Usage, calc_price

from agentflow_dagster.llm.types import OFFLINE_MODEL

# gen_ai.provider.name -> genai-prices provider id, where the two name the same company.
_PRICE_PROVIDER = {
    "openai": "openai",
    "azure.ai.openai": "azure",
    "groq": "groq",
    "deepseek": "deepseek",
    "mistral_ai": "mistral",
    "x_ai": "x-ai",
    "perplexity": "perplexity",
}


def cost_usd(
    model: str,
    input_tokens: int,
    output_tokens: int,
    prices: Mapping[str, Sequence[float]] | None = None,
    provider: str | None = None,
) -> float | None:
    """USD for one call, or None when no price is known (an unlisted model is unknown, not free).

    `prices` (LLMResource.prices: USD per million input and output tokens, longest model-name prefix
    wins) overrides the genai-prices snapshot shipped in its wheel (no network at call time).
    """
    if model == OFFLINE_MODEL:
        return 0.0  # the offline provider calls no model: it really costs nothing
    matches = [prefix for prefix in prices or {} if model.startswith(prefix)]
    if prices and matches:
        price_in, price_out = prices[max(matches, key=len)][:2]
        return round((input_tokens * price_in + output_tokens * price_out) / 1_000_000, 6)
    try:
        calc = calc_price(
            Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            model_ref=model,
            provider_id=_PRICE_PROVIDER.get(provider or ""),
        )
    except LookupError:
        return None
    return round(float(calc.total_price), 6)
