"""Benchmark 3: our LLM client against the raw `openai` client, same loopback server, same request.

    python bench/llm_client_bench.py [--calls 300] [--latency 0]

Interleaved calls (raw, ours, agent runner) so machine noise hits all alike. `ours` is
OpenAICompatProvider.chat (attempt deadline hooks, retry bookkeeping, JSON check, cost); `agent` adds
prompt rendering and output-schema validation (agents.runner.run_agent). Writes
bench/results/llm_client_bench.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from common import machine, md_table, plot_path, pyplot, summary, write_results

from tests.support.llm_server import LLMTestServer, ok, slow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()

    import openai

    from agentflow_dagster.agents.roles import get_agent
    from agentflow_dagster.agents.runner import build_messages, run_agent
    from agentflow_dagster.llm.openai_compat import OpenAICompatProvider
    from agentflow_dagster.llm.types import ChatRequest

    role = get_agent("classifier")
    inputs = {"message": "My invoice was charged twice; please refund one.", "customer_tier": "standard"}
    messages = build_messages(role, inputs, None)
    schema = role.output.model_json_schema()
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "Classification", "schema": schema, "strict": False},
    }
    times: dict[str, list[float]] = {"raw openai": [], "ours (provider.chat)": [], "agent runner": []}

    with LLMTestServer() as server:
        server.rule(lambda body: True, slow(args.latency) if args.latency else ok())
        raw = openai.OpenAI(base_url=server.base_url, api_key="bench-key", max_retries=0, timeout=30)
        ours = OpenAICompatProvider(server.base_url, "bench-key", timeout_s=30)

        def call_raw() -> Any:
            resp = raw.chat.completions.create(  # type: ignore[call-overload]
                model="gpt-4o-mini",
                messages=messages,
                temperature=0.0,
                response_format=fmt,
            )
            return json.loads(resp.choices[0].message.content or "{}")

        def call_ours() -> Any:
            return ours.chat(ChatRequest(messages, "gpt-4o-mini", schema, "Classification"))

        def call_agent() -> Any:
            return run_agent(role, inputs, provider=ours, model="gpt-4o-mini")

        calls = {"raw openai": call_raw, "ours (provider.chat)": call_ours, "agent runner": call_agent}
        for fn in calls.values():  # warm-up: connections, imports, schema caches
            for _ in range(10):
                fn()
        for _ in range(args.calls):
            for name, fn in calls.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        requests = server.count()

    ms = {k: [1000 * v for v in vals] for k, vals in times.items()}
    stats = {k: summary(v) for k, v in ms.items()}
    base = stats["raw openai"]
    rows = []
    for name, st in stats.items():
        rows.append(
            [name, st["p50"], st["p99"], st["mean"], round(st["mean"] - base["mean"], 3), st["n"]]  # type: ignore[operator]
        )
    data = {
        "machine": machine(),
        "calls": args.calls,
        "latency_s": args.latency,
        "server_requests": requests,
        "ms": stats,
        "overhead_vs_raw_mean_ms": {r[0]: r[4] for r in rows},
    }
    md = "\n".join(
        [
            "# Benchmark 3: LLM client overhead against the raw openai client",
            "",
            f"{data['machine']['host']} · {data['machine']['at']} · {data['machine']['note']}",
            "",
            f"{args.calls} interleaved calls each to the loopback test server (latency {args.latency} s), "
            "same messages and response_format.",
            "",
            md_table(["client", "p50 ms", "p99 ms", "mean ms", "mean - raw ms", "n"], rows),
        ]
    )
    write_results("llm_client_bench", data, md)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.boxplot(list(ms.values()), tick_labels=list(ms), showfliers=False)
    ax.set_ylabel("ms per call (loopback, no model latency)")
    ax.set_title("LLM call: raw openai vs our provider vs agent runner")
    fig.tight_layout()
    fig.savefig(plot_path("llm_client_bench"), dpi=110)
    plt.close(fig)
    print(md)


if __name__ == "__main__":
    main()
