"""Retrieval inside a run: where the query embedding comes from, and query embedding + index search.

    python bench/retrieval_bench.py [--chunks 3000] [--queries 60]

Issue 16's two options for never loading the model per run, measured in one invocation on the same
index (the project's docs/ and README chunked, topped up with generated text to --chunks chunks):
- cold: a fresh interpreter loads the model for one query (what every run worker paid before);
- service: the embedding service (rag/embed_service.py) over loopback HTTP, as run workers and
  `agentflow search` use it;
- fork: the model loaded in a parent that forks a child per "run" (the warm launcher's forkserver,
  preloaded): first query and p50 in each child; with 2 torch threads, and with 1 (the default);
- in-process: the model already warm in this process (the floor);
then index search alone (pgvector hybrid, k=5), the whole Retriever through the service, and
`agentflow search` wall time. Writes bench/results/retrieval_bench.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentflow_dagster.rag import embed_service  # noqa: E402
from agentflow_dagster.rag.embedders import LocalEmbedder  # noqa: E402
from agentflow_dagster.stack import services  # noqa: E402
from bench.common import REPO, finish, machine, md_table, plot_path, pyplot, summary  # noqa: E402

QUESTIONS = [
    "how does the request sensor avoid losing events",
    "what happens to a bad event",
    "how are LLM calls recorded and never paid twice",
    "where are large payloads stored",
    "how do I purge old runs",
    "which port does the dagster webserver use",
    "how is a workflow spec compiled into ops",
    "what does the warm launcher preload",
    "how do approvals resume a workflow",
    "what metrics does the platform export",
    "how are API keys stored",
    "what is the per-tenant run limit",
]
TICKET_WORDS = (
    "invoice refund account password reset login billing cycle shipment delay warranty claim router firmware "
    "upgrade outage latency dashboard export token budget audit trail retention policy"
)
WORDS = TICKET_WORDS.split()


def corpus(n_chunks: int, chunker: Any) -> list[tuple[str, str]]:
    """(document, chunk text): the repo's docs first, then generated support tickets."""
    out: list[tuple[str, str]] = []
    for path in sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")]):
        for piece in chunker.split("bench", path.name, path.read_text()):
            out.append((path.name, piece.text))
    rng = random.Random(16)
    i = 0
    while len(out) < n_chunks:
        words = " ".join(rng.choice(WORDS) for _ in range(30))
        out.append((f"ticket{i // 20:04d}.txt", f"Ticket {i}: customer reports {words}."))
        i += 1
    return out[:n_chunks]


def timed(fn: Any, n: int) -> list[float]:
    """Milliseconds of n calls."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t0))
    return out


def cold_load_ms() -> float:
    """A fresh interpreter: import, load the model, embed one query (in-process, no service)."""
    code = (
        "import time; t=time.perf_counter(); from agentflow_dagster.rag.embedders import LocalEmbedder; "
        "LocalEmbedder(service_url=None).embed(['q']); print(1000*(time.perf_counter()-t))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


FORK_CHILD = """
import os, sys, time, json
os.environ["AGENTFLOW_EMBED_THREADS"] = sys.argv[1]
from agentflow_dagster.rag.embedders import LocalEmbedder
emb = LocalEmbedder(service_url=None)
emb.embed(["warm the parent"])
qs = json.loads(sys.argv[2])
for run in range(3):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        ts = []
        for q in qs:
            t = time.perf_counter(); emb.embed([q]); ts.append(1000 * (time.perf_counter() - t))
        os.write(w, json.dumps(ts).encode()); os._exit(0)
    os.close(w)
    print(os.read(r, 1 << 16).decode(), flush=True)
    os.waitpid(pid, 0)
"""


def fork_ms(threads: int, queries: list[str], timeout: float = 60) -> dict[str, Any]:
    """Children forked from a parent that loaded the model; a hung child (OpenMP after fork) is reported."""
    import json

    args = [sys.executable, "-c", FORK_CHILD, str(threads), json.dumps(queries)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        services.stop_pid(proc.pid, timeout=2)
        return {"hung": True, "runs": 0}
    runs = [json.loads(line) for line in stdout.splitlines() if line.startswith("[")]
    if not runs:
        return {"hung": True, "runs": 0}
    return {
        "hung": False,
        "runs": len(runs),
        "first_query_ms": summary([r[0] for r in runs]),
        "later_queries_ms": summary([x for r in runs for x in r[1:]]),
        "samples": [x for r in runs for x in r],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    rng = random.Random(3)
    queries = [f"{rng.choice(QUESTIONS)} ({i})" for i in range(args.queries)]
    result: dict[str, Any] = {"machine": machine(), "chunks": args.chunks, "queries": args.queries}

    with tempfile.TemporaryDirectory(prefix="retrieval-bench-") as tmp:
        data = Path(tmp)
        pg = services.start_postgres(data, services.free_port())
        env = {**os.environ, "AGENTFLOW_EMBED_PORT": str(services.free_port())}
        os.environ["AGENTFLOW_EMBED_PORT"] = env["AGENTFLOW_EMBED_PORT"]
        svc = embed_service.start_service(data, env)
        try:
            t0 = time.perf_counter()
            embed_service.wait_started(svc.address, svc.log, svc.pid)
            result["service_start_s"] = round(time.perf_counter() - t0, 2)
            result.update(measure(args, queries, pg.address, svc.address, result))
        finally:
            services.stop_pid(svc.pid)
            services.stop_postgres(data)
    finish("retrieval_bench", args.label, result, markdown(result), plot)


def measure(args: Any, queries: list[str], pg_url: str, url: str, result: dict[str, Any]) -> dict[str, Any]:
    from agentflow_dagster.rag.chunking import Chunker
    from agentflow_dagster.rag.pgvector_store import PgVectorStore
    from agentflow_dagster.rag.retriever import Retriever
    from agentflow_dagster.rag.store import VectorRecord

    remote = LocalEmbedder(service_url=url, batch_size=64)
    chunks = corpus(args.chunks, Chunker(120, 20, remote.tokenizer_json))
    t0 = time.perf_counter()
    texts = [t for _, t in chunks]
    # The index goes through the service with a long timeout (a busy machine); queries use the
    # embedder as run workers do, and the run fails if any of them fell back to an in-process load.
    bulk = embed_service.EmbedClient(url, timeout=1800)
    vecs = np.concatenate([bulk.embed(texts[i : i + 256]) for i in range(0, len(texts), 256)])
    embed_s = time.perf_counter() - t0
    records = [
        VectorRecord(f"c{i}", doc, "v1", i, 0, len(text), text, v.tolist())
        for i, ((doc, text), v) in enumerate(zip(chunks, vecs, strict=True))
    ]
    store = PgVectorStore(pg_url)
    store.rebuild("bench", records, model=remote.model_id, dim=int(vecs.shape[1]))
    out: dict[str, Any] = {"index_embed_s": round(embed_s, 1), "index_chunks": len(records)}

    print("cold loads ...", flush=True)
    cold = [cold_load_ms() for _ in range(2)]
    print("forked children ...", flush=True)
    fork_two = fork_ms(2, queries[:10])
    fork_one = fork_ms(1, queries[:10])
    print("service and in-process ...", flush=True)
    it = iter(queries * 3)
    service = timed(lambda: remote.embed([next(it)]), len(queries))
    local = LocalEmbedder(service_url=None)
    local.embed(["warm"])
    in_process = timed(lambda: local.embed([next(it)]), len(queries))
    qvecs = [v.tolist() for v in remote.embed(queries)]
    vi = iter(qvecs)
    search_only = timed(
        lambda: store.search("bench", vector=next(vi), text=queries[0], k=5, mode="hybrid"), len(qvecs)
    )
    retriever = Retriever(LocalEmbedder(service_url=url), store)
    qi = iter(queries)
    retrieve = timed(lambda: retriever.search(next(qi), "bench", 5), len(queries))
    store.close()
    print("agentflow search ...", flush=True)
    cli = cli_search_ms(pg_url, url, queries[:5])
    if remote._remote() is None or retriever.embedder._remote() is None:  # type: ignore[attr-defined]
        raise RuntimeError("a query fell back to an in-process model: the service figures would be wrong")
    out["cold_load_ms"] = summary(cold)
    out["fork_two_threads"] = fork_two
    out["fork_one_thread"] = fork_one
    out["service_ms"] = summary(service)
    out["in_process_ms"] = summary(in_process)
    out["index_search_ms"] = summary(search_only)
    out["retrieve_via_service_ms"] = summary(retrieve)
    out["agentflow_search_wall_ms"] = summary(cli)
    out["samples"] = {
        "cold load": cold,
        "forked child (1 thread)": fork_one.get("samples", []),
        "service (HTTP)": service,
        "in-process warm": in_process,
        "index search": search_only,
        "retrieve (service + search)": retrieve,
        "agentflow search (wall)": cli,
    }
    return out


def cli_search_ms(pg_url: str, url: str, queries: list[str]) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    env.update(AGENTFLOW_POSTGRES_URL=pg_url, AGENTFLOW_EMBED_URL=url)
    out = []
    for q in queries:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "agentflow_dagster", "search", q, "-c", "bench", "-k", "5"],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        out.append(1000 * (time.perf_counter() - t0))
    return out


def markdown(r: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, Any] | None, note: str = "") -> list[Any]:
        s = s or {}
        return [name, s.get("p50"), s.get("p99"), s.get("n"), note]

    fd, f1 = r["fork_two_threads"], r["fork_one_thread"]
    rows = [
        row("cold: fresh interpreter loads the model, 1 query", r["cold_load_ms"], "what a run worker paid"),
        row(
            "forked child, 2 torch threads: first query",
            fd.get("first_query_ms"),
            "HUNG (OpenMP after fork)" if fd["hung"] else "",
        ),  # fmt: skip
        row("forked child, 1 thread: first query", f1.get("first_query_ms"), "HUNG" if f1["hung"] else ""),
        row("forked child, 1 thread: later queries", f1.get("later_queries_ms")),
        row("**service** over loopback HTTP (query embedding)", r["service_ms"], "the chosen path"),
        row("in-process, model already warm (floor)", r["in_process_ms"]),
        row("index search only (pgvector hybrid, k=5)", r["index_search_ms"]),
        row(
            "**retrieve = service embedding + index search**", r["retrieve_via_service_ms"], "target p50 < 50"
        ),
        row("`agentflow search` wall (new interpreter)", r["agentflow_search_wall_ms"], "target < 1000"),
    ]
    m = r["machine"]
    return "\n".join(
        [
            "# Retrieval inside a run: where the query embedding comes from",
            "",
            f"{m['host']}, {m['at']}, load average at start {m['loadavg_at_start']} ({m['note']}).",
            f"Index: {r['index_chunks']} chunks (docs/ + README + generated tickets), embedded in "
            f"{r['index_embed_s']} s through the service; service start (model load) "
            f"{r['service_start_s']} s.",
            "",
            md_table(["path", "p50 ms", "p99 ms", "n", "note"], rows),
        ]
    )


def plot(r: dict[str, Any], name: str) -> None:
    plt = pyplot()
    samples = {k: v for k, v in r["samples"].items() if v}
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.boxplot(list(samples.values()), vert=False, showfliers=True)
    ax.set_yticks(range(1, len(samples) + 1), list(samples))
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds (log scale)")
    ax.axvline(50, color="tab:red", linestyle="--", linewidth=1)
    ax.set_title(f"query embedding + search, {r['index_chunks']} chunks (red: 50 ms target)")
    fig.tight_layout()
    fig.savefig(plot_path(name), dpi=110)


if __name__ == "__main__":
    main()
