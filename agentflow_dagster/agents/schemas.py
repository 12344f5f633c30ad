"""Output schemas of the agent roles; an LLM answer is accepted only when it validates against one."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Plan(_Out):
    """A research plan: the sub-questions that are researched in parallel."""

    sub_questions: list[str] = Field(min_length=2, max_length=6, description="independent research questions")
    outline: list[str] = Field(default_factory=list, description="section headings of the final report")


class ResearchNote(_Out):
    """What one researcher found for one sub-question."""

    question: str = Field(min_length=1)
    findings: list[str] = Field(min_length=1, max_length=8, description="findings grounded in the sources")
    sources: list[str] = Field(default_factory=list, description="ids of the passages used")


class Section(_Out):
    heading: str = Field(min_length=1)
    body: str = Field(min_length=1)


class Report(_Out):
    """A written report."""

    title: str = Field(min_length=1, max_length=200)
    summary: str = Field(min_length=1, description="executive summary")
    sections: list[Section] = Field(min_length=1, max_length=10)


class Review(_Out):
    """A reviewer's verdict on a report; null verdicts mean nobody judged (the offline provider)."""

    approved: bool | None = None
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    issues: list[str] = Field(default_factory=list)


class Classification(_Out):
    """Category and urgency of a support message."""

    category: Literal["billing", "technical", "account", "other"]
    urgency: Literal["low", "medium", "high"] = "medium"
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    rationale: str = ""


class Route(_Out):
    """Which queue handles a message and which knowledge collection answers it."""

    queue: Literal["billing_team", "tech_support", "account_team", "general"]
    collection: str = Field(default="support_kb", pattern=r"^[a-z][a-z0-9_]{0,63}$")
    search_query: str = Field(min_length=1, description="query for the knowledge base")


class Passage(_Out):
    source: str = ""
    quote: str = Field(min_length=1)


class Evidence(_Out):
    """Passages selected from the knowledge base as evidence for an answer."""

    passages: list[Passage] = Field(default_factory=list)
    note: str = ""


class Draft(_Out):
    """A drafted reply to a customer."""

    reply: str = Field(min_length=1)
    citations: list[str] = Field(default_factory=list)


class PolicyVerdict(_Out):
    """Whether a reply complies with the support policy (null: not judged), with a compliant version."""

    compliant: bool | None = None
    violations: list[str] = Field(default_factory=list)
    final_reply: str = Field(min_length=1)


class Summary(_Out):
    """A summary of a document."""

    summary: str = Field(min_length=1)
    key_points: list[str] = Field(default_factory=list, max_length=10)
