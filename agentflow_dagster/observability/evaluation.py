"""Per-call evaluation: schema validity, groundedness in the retrieved context, answer relevance.

Groundedness and relevance are lexical by default (content-word overlap, no model needed, deterministic);
answer relevance is the cosine similarity of embeddings when an embedding function is passed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jsonschema

_WORD_RE = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "this",
        "that",
        "as",
        "at",
        "by",
        "from",
        "i",
        "my",
        "we",
        "our",
        "you",
        "your",
        "me",
        "can",
        "not",
        "do",
        "does",
        "did",
        "have",
        "has",
        "had",
        "will",
        "would",
        "should",
        "could",
        "please",
        "what",
        "which",
        "who",
        "how",
        "why",
        "when",
        "where",
        "there",
        "their",
        "they",
        "them",
        "its",
        "into",
        "about",
        "than",
        "then",
        "so",
        "if",
        "but",
        "also",
        "any",
        "all",
        "some",
        "no",
        "yes",
    ]
)
Embed = Callable[[Sequence[str]], Sequence[Sequence[float]]]


def content_words(text: str) -> set[str]:
    """Lower-cased words that carry meaning (no stop words, no one- or two-letter tokens)."""
    return {w for w in _WORD_RE.findall(text.lower()) if w not in _STOP and len(w) > 2}


def answer_text(content: str) -> str:
    """The prose of an answer: every string value of a JSON answer, else the content itself."""
    try:
        data = json.loads(content)
    except ValueError:
        return content

    def strings(value: Any) -> Iterable[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    return " ".join(strings(data))


def schema_validity(content: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    """Whether the answer is JSON that validates against the schema the agent asked for."""
    if schema is None:
        return {"schema_valid": None}
    try:
        data = json.loads(content)
    except ValueError as exc:
        return {"schema_valid": False, "schema_error": f"not JSON: {exc}"[:300]}
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is None:
        return {"schema_valid": True}
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return {"schema_valid": False, "schema_error": f"{where}: {error.message}"[:300]}


def groundedness(answer: str, context: Sequence[str]) -> float | None:
    """Share of the answer's content words found in the retrieved passages; None without passages."""
    if not context:
        return None
    words = content_words(answer)
    if not words:
        return 1.0
    return round(len(words & content_words(" ".join(context))) / len(words), 4)


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def answer_relevance(question: str, answer: str, embed: Embed | None = None) -> tuple[float | None, str]:
    """(score, method): embedding cosine when `embed` is given, else the share of question words answered."""
    if not question.strip():
        return None, "none"
    if embed is not None:
        q, a = embed([question, answer])
        return round(_cosine(q, a), 4), "embedding-cosine"
    words = content_words(question)
    if not words:
        return None, "lexical-overlap"
    return round(len(words & content_words(answer)) / len(words), 4), "lexical-overlap"


def evaluate_call(
    content: str | None,
    *,
    schema: dict[str, Any] | None,
    question: str,
    context: Sequence[str],
    embed: Embed | None = None,
) -> dict[str, Any]:
    """Every metric for one answered call (an empty dict when the call produced no answer)."""
    if content is None:
        return {}
    text = answer_text(content)
    relevance, method = answer_relevance(question, text, embed)
    return {
        **schema_validity(content, schema),
        "groundedness": groundedness(text, context),
        "grounded_on_passages": len(context),
        "answer_relevance": relevance,
        "relevance_method": method,
        "groundedness_method": "lexical-overlap",
    }


def evaluation_results(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """One call's scores as GenAI evaluation results (name, score, label, explanation).

    Only schema validity gets a label (`pass`/`fail`); the lexical and cosine scores are measurements
    with no threshold behind them, so they carry a score and the method as explanation, never a verdict.
    """
    out: list[dict[str, Any]] = []
    if evaluation.get("schema_valid") is not None:
        valid = bool(evaluation["schema_valid"])
        out.append(
            {
                "name": "schema_validity",
                "score": 1.0 if valid else 0.0,
                "label": "pass" if valid else "fail",
                "explanation": evaluation.get("schema_error"),
            }
        )
    for name, method in (("groundedness", "groundedness_method"), ("answer_relevance", "relevance_method")):
        if evaluation.get(name) is not None:
            explanation = str(evaluation.get(method) or "")
            if name == "groundedness":
                explanation += f" over {evaluation.get('grounded_on_passages', 0)} passages"
            out.append({"name": name, "score": float(evaluation[name]), "explanation": explanation})
    return out


def summarize(evaluations: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Workflow-level view: share of schema-valid answers, mean groundedness and relevance over calls."""
    rows = [e for e in evaluations if e]
    out: dict[str, Any] = {"evaluated_calls": len(rows)}
    valid = [e["schema_valid"] for e in rows if e.get("schema_valid") is not None]
    out["schema_valid_rate"] = round(sum(valid) / len(valid), 4) if valid else None
    for key in ("groundedness", "answer_relevance"):
        values = [float(e[key]) for e in rows if e.get(key) is not None]
        out[f"mean_{key}"] = round(sum(values) / len(values), 4) if values else None
    return out
