"""The live stack whose run workers call a scripted loopback LLM server (shared with tests/chaos)."""

from tests.chaos.test_stack_faults import llm, stack

__all__ = ["llm", "stack"]
