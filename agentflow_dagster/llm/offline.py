"""The embedded default provider: deterministic, extractive, offline, and labelled as such everywhere.

It never invents facts: strings are sentences taken from the task inputs and retrieved passages,
lists of sources are the ids of retrieved passages, enums are chosen by keyword overlap. It never
invents a verdict either: a boolean or a number (approved, compliant, a score, a confidence) needs
judgement, so it is null when the schema allows null, and the call fails with a clear error when the
schema requires a value. Every answer carries `"offline": true`.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from agentflow_dagster.llm.types import (
    OFFLINE_MODEL,
    OFFLINE_PROVIDER,
    CallAttempt,
    ChatRequest,
    ChatResult,
    LLMError,
    Recorder,
    estimate_tokens,
)

_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|\n+")
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
    ]
)
# Keywords that make enum choices meaningful without a model (billing vs technical, urgency, ...).
_LEXICON: dict[str, tuple[str, ...]] = {
    "billing": ("charge", "charged", "invoice", "refund", "payment", "bill", "price", "subscription", "card"),
    "technical": ("error", "crash", "bug", "fail", "failing", "install", "api", "timeout", "broken", "slow"),
    "account": ("login", "log", "password", "account", "email", "sign", "locked", "username", "profile"),
    "high": ("urgent", "asap", "immediately", "outage", "down", "critical", "production", "twice"),
    "low": ("question", "curious", "wondering", "whenever", "minor"),
    "billing_team": ("billing",),
    "tech_support": ("technical",),
    "account_team": ("account",),
}
_PRIMARY_KEYS = ("question", "topic", "message", "document", "reply", "summary", "report", "text")
_EMPTY_LISTS = ("issues", "violations")
_SOURCE_LISTS = ("sources", "citations")


class OfflineCannotJudge(LLMError):
    """The schema asks for a verdict (boolean or number) that only a model could give."""

    def __init__(self, field: str, kind: str):
        super().__init__(
            f"the offline-extractive provider cannot produce field {field!r} ({kind}): it has no model to "
            "judge with and invents no verdicts; allow null for this field (offline answers leave it "
            "null) or configure a model endpoint (OPENAI_API_KEY and/or OPENAI_BASE_URL)",
            retryable=False,
        )


def _nullable(schema: dict[str, Any]) -> bool:
    kinds = schema.get("type")
    options = schema.get("anyOf") or schema.get("oneOf") or []
    return (isinstance(kinds, list) and "null" in kinds) or any(o.get("type") == "null" for o in options)


def _words(text: str) -> list[str]:
    return [w for w in _WORD_RE.findall(text.lower()) if w not in _STOP]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _sentences(text: str) -> list[str]:
    # Identifiers and labels ("kb-1", "billing") are not sentences worth quoting.
    return [s.strip() for s in _SENTENCE_RE.split(text) if len(s.split()) >= 3]


def _source_ids(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [str(value["source"])] if isinstance(value.get("source"), str) and value["source"] else []
        return own + [s for v in value.values() if isinstance(v, dict | list) for s in _source_ids(v)]
    if isinstance(value, list):
        return [s for v in value for s in _source_ids(v)]
    return []


class _Composer:
    """Builds one schema instance from the grounding text, consuming sentences in relevance order."""

    def __init__(self, schema: dict[str, Any], grounding: dict[str, Any]):
        self.defs = schema.get("$defs", {})
        inputs = grounding.get("inputs") or {}
        self.hits: list[dict[str, Any]] = list(grounding.get("retrieved") or [])
        primary = next((inputs[k] for k in _PRIMARY_KEYS if isinstance(inputs.get(k), str | dict)), None)
        self.primary = " ".join(_strings(primary)) if primary is not None else " ".join(_strings(inputs))
        self.query = set(_words(self.primary))
        texts = _strings(inputs) + [str(h.get("text", "")) for h in self.hits]
        # Where a retrieved sentence came from: a finding quoting it names its document.
        self.origin = {
            s: str(h.get("source") or h.get("id") or "")
            for h in self.hits
            for s in _sentences(str(h.get("text", "")))
        }
        seen: set[str] = set()
        pool: list[str] = []
        for text in texts:
            for sentence in _sentences(text):
                if sentence not in seen:
                    seen.add(sentence)
                    pool.append(sentence)
        # Most relevant first; original order breaks ties so the answer is deterministic.
        ranked = sorted(enumerate(pool), key=lambda p: (-len(self.query & set(_words(p[1]))), p[0]))
        self.pool = [s for _, s in ranked] or ["(offline-extractive: the inputs contain no text)"]
        self.corpus = set(_words(" ".join(texts)))
        ids = [str(h.get("id", "")) for h in self.hits] + _source_ids(inputs)
        self.source_ids = list(dict.fromkeys(i for i in ids if i))
        self.cursor = 0
        # Answers (replies, findings) should come from the evidence, not echo the question back.
        own = set(_sentences(self.primary))
        self.evidence = [s for s in self.pool if s not in own and not s.startswith("(offline")]
        self.evidence_cursor = 0

    def _take_evidence(self, n: int) -> str:
        if not self.evidence:
            return "(offline-extractive: no retrieved passages or upstream evidence to answer from)"
        picked = [self.evidence[(self.evidence_cursor + i) % len(self.evidence)] for i in range(n)]
        self.evidence_cursor += n
        return " ".join(picked)

    def _take(self, n: int = 1) -> str:
        picked = [self.pool[(self.cursor + i) % len(self.pool)] for i in range(max(1, n))]
        self.cursor += max(1, n)
        return " ".join(picked)

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = {
                **self.defs[schema["$ref"].split("/")[-1]],
                **{k: v for k, v in schema.items() if k != "$ref"},
            }
        if "anyOf" in schema:
            options = [s for s in schema["anyOf"] if s.get("type") != "null"]
            schema = {**self._resolve(options[0]), **{k: v for k, v in schema.items() if k != "anyOf"}}
        return schema

    def value(self, name: str, schema: dict[str, Any]) -> Any:
        nullable = _nullable(schema)
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self._enum(schema)
        kind = schema.get("type")
        if kind == "object":
            return self.obj(schema)
        if kind == "array":
            return self._array(name, schema)
        if isinstance(kind, list):
            nullable = nullable or "null" in kind
            kind = next((k for k in kind if k != "null"), "string")
        if kind in ("boolean", "number", "integer"):
            if nullable:
                return None
            raise OfflineCannotJudge(name, str(kind))
        return self._string(name, schema)

    def _enum(self, schema: dict[str, Any]) -> Any:
        options = list(schema["enum"])

        def score(option: Any) -> int:
            keys = set(_words(str(option).replace("_", " "))) | set(_LEXICON.get(str(option), ()))
            return len(keys & self.corpus)

        best = max(options, key=lambda o: (score(o), o == schema.get("default")))
        return best if score(best) > 0 else schema.get("default", options[-1])

    def _string(self, name: str, schema: dict[str, Any]) -> str:
        limit = int(schema.get("maxLength", 600))
        if "pattern" in schema and "default" in schema:
            return str(schema["default"])
        if name in ("question", "search_query"):
            text = self.primary or self._take()
        elif name == "source":
            text = str(self.hits[0].get("id", "")) if self.hits else "inputs"
        elif name in ("title", "heading"):
            text = self._take()
            limit = min(limit, 120)
        elif name == "final_reply":
            text = self.primary or self._take(2)
        elif name == "finding":
            text = self._take_evidence(1)
            if self.origin.get(text):
                text = f"{text} [source: {self.origin[text]}]"
        elif name == "reply":
            text = self._take_evidence(2)
        elif name in ("rationale", "note"):
            matched = sorted(self.query & self.corpus)[:8]
            text = f"offline-extractive: chosen by keyword overlap ({', '.join(matched) or 'no keywords'})"
            if not self.hits and name == "note":
                text = "offline-extractive: no retrieved passages"
        else:
            text = self._take(2 if name in ("summary", "body") else 1)
        text = text[:limit].strip() or "(offline-extractive)"
        return text

    def _array(self, name: str, schema: dict[str, Any]) -> list[Any]:
        lo = int(schema.get("minItems", 0))
        hi = int(schema.get("maxItems", 5))
        items = self._resolve(schema.get("items", {"type": "string"}))
        if name in _SOURCE_LISTS:
            return self.source_ids[:hi] or ([] if lo == 0 else ["inputs"] * lo)
        if name in _EMPTY_LISTS and lo == 0:
            return []
        if name == "sub_questions":
            return self._questions(max(lo, min(3, hi)))
        if name == "passages":
            return [
                {"source": str(h.get("id", "")), "quote": str(h.get("text", ""))[:400] or "(empty passage)"}
                for h in self.hits[: max(lo, min(hi, 5))]
            ]
        count = max(lo, min(3, hi))
        values = [self.value(name.rstrip("s"), items) for _ in range(count)]
        unique = [v for i, v in enumerate(values) if v not in values[:i]]
        return unique if len(unique) >= max(lo, 1) else values

    def _questions(self, count: int) -> list[str]:
        asked = [s for s in _sentences(self.primary) if s.endswith("?")]
        topic = self.primary.strip().rstrip(".?!")[:200] or "the topic"
        templates = [
            f"What is {topic}, and what are its key concepts?",
            f"What evidence and results exist on {topic}?",
            f"What are the open problems and trade-offs of {topic}?",
            f"How is {topic} applied in practice?",
        ]
        return (asked + templates)[:count]

    def obj(self, schema: dict[str, Any]) -> dict[str, Any]:
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        # An optional verdict is left out rather than invented.
        return {
            name: self.value(name, sub)
            for name, sub in props.items()
            if name in required or self._resolve(sub).get("type") not in ("boolean", "number", "integer")
        }


def compose(schema: dict[str, Any], grounding: dict[str, Any]) -> dict[str, Any]:
    """An instance of `schema` built only from the grounding (task inputs and retrieved passages)."""
    return _Composer(schema, grounding).obj(schema)


class OfflineExtractiveProvider:
    """Deterministic provider used only when no endpoint is configured; provider name `offline-extractive`."""

    name = OFFLINE_PROVIDER

    def chat(self, request: ChatRequest, recorder: Recorder | None = None) -> ChatResult:
        """Compose a JSON answer from the request's grounding (no network)."""
        started = time.monotonic()
        schema = request.json_schema or {"type": "object", "properties": {"answer": {"type": "string"}}}
        answer = compose(schema, request.grounding)
        # Labelled inside the payload too: output validation ignores unknown keys, the record keeps it.
        if schema.get("additionalProperties") is not False and "offline" not in answer:
            answer = {**answer, "offline": True}
        content = json.dumps(answer, ensure_ascii=False)
        tokens_in = estimate_tokens(json.dumps(request.messages))
        tokens_out = estimate_tokens(content)
        latency_ms = (time.monotonic() - started) * 1000
        if recorder:
            recorder(
                CallAttempt(
                    OFFLINE_PROVIDER,
                    OFFLINE_MODEL,
                    request.messages,
                    1,
                    latency_ms,
                    response=content,
                    input_tokens=tokens_in,
                    output_tokens=tokens_out,
                    finish_reason="stop",
                )
            )
        return ChatResult(
            content, tokens_in, tokens_out, "stop", latency_ms, OFFLINE_MODEL, OFFLINE_PROVIDER, 1
        )
