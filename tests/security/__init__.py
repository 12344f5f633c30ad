"""LLM-specific security (OWASP top 10 for LLM applications): injection, consumption, secrets."""
