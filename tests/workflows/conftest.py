"""A live stack whose run workers call a scripted loopback LLM server (as in tests/chaos), on free ports."""

from collections.abc import Iterator

import pytest

from agentflow_dagster.stack.services import free_seaweed_port
from tests.chaos.test_stack_faults import llm
from tests.support.live_stack import LiveStack
from tests.support.llm_server import LLMTestServer

__all__ = ["llm", "stack"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, llm: LLMTestServer) -> Iterator[LiveStack]:  # noqa: F811
    # The embedded S3 server's port block is chosen here: another stack on this host may hold the default.
    live = LiveStack.create(
        tmp_path_factory.mktemp("ops") / "af",
        OPENAI_BASE_URL=llm.base_url,
        OPENAI_API_KEY="test-key",
        AGENTFLOW_S3_PORT=str(free_seaweed_port()),
    )
    try:
        live.up()
        yield live
    finally:
        live.down()
