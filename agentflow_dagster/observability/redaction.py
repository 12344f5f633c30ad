"""Redaction of secrets and configurable PII before LLM content is stored, logged or exported."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Secrets are always redacted; these cover the credential shapes this platform handles.
# (bandit B105 takes the token pattern below for a hard-coded password: it is a regex.)
SECRET_PATTERNS: dict[str, str] = {
    "private_key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]+?-----END [A-Z ]*PRIVATE KEY-----",
    "openai_key": r"\bsk-(?:proj-)?[A-Za-z0-9_\-]{16,}",
    "agentflow_key": r"\baf_[0-9a-f]{12}_[A-Za-z0-9_\-]{43}",
    "aws_access_key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "github_token": r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",  # nosec B105
    "jwt": r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    "bearer": r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{16,}",
    "assignment": r"(?i)\b(?:api[_-]?key|secret|password|passwd|access[_-]?token)\b\s*[:=]\s*[^\s,;\"']{6,}",
    "url_credentials": r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)",
}
# Defaults for AGENTFLOW_REDACT_PII_PATTERNS; a deployment replaces them with its own.
DEFAULT_PII_PATTERNS: dict[str, str] = {
    "email": r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b",
    "phone": r"(?<![\w+])\+?\d{1,3}[\s.\-]?\(?\d{2,4}\)?[\s.\-]\d{3,4}[\s.\-]\d{3,4}\b",
    "card_number": r"\b(?:\d[ \-]?){12,18}\d\b",
    "us_ssn": r"\b\d{3}-\d{2}-\d{4}\b",
    "ipv4": r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b",
}


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


@dataclass
class Redactor:
    """Replaces every match with `[REDACTED:<name>]`; counts what it replaced."""

    secret_patterns: Mapping[str, str] = field(default_factory=lambda: dict(SECRET_PATTERNS))
    pii_patterns: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PII_PATTERNS))

    def __post_init__(self) -> None:
        # Secrets first: a key inside an e-mail-looking string must not survive as a partial match.
        merged = {**self.secret_patterns, **self.pii_patterns}
        try:
            self._compiled = [(name, re.compile(rx)) for name, rx in merged.items()]
        except re.error as exc:
            raise ValueError(f"bad redaction pattern: {exc}; fix AGENTFLOW_REDACT_*_PATTERNS") from exc

    def text(self, value: str, counts: dict[str, int] | None = None) -> str:
        """`value` with secrets and PII replaced."""
        for name, rx in self._compiled:

            def sub(m: re.Match[str], name: str = name) -> str:
                if name == "card_number" and not _luhn_ok(re.sub(r"\D", "", m.group(0))):
                    return m.group(0)  # order numbers and timestamps are not cards
                if counts is not None:
                    counts[name] = counts.get(name, 0) + 1
                return f"[REDACTED:{name}]"

            value = rx.sub(sub, value)
        return value

    def value(self, value: Any, counts: dict[str, int] | None = None) -> Any:
        """Redact every string inside a JSON-like value."""
        if isinstance(value, str):
            return self.text(value, counts)
        if isinstance(value, dict):
            return {k: self.value(v, counts) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, counts) for v in value]
        return value


def redactor_from_settings(
    pii_patterns: Mapping[str, str] | None, extra_secrets: Mapping[str, str] | None = None
) -> Redactor:
    """The redactor for configured patterns (None = the default PII patterns)."""
    return Redactor(
        {**SECRET_PATTERNS, **(extra_secrets or {})},
        DEFAULT_PII_PATTERNS if pii_patterns is None else pii_patterns,
    )
