"""Benchmark 4: Postgres bytes per workflow (Dagster event log + our tables) and what `agentflow purge` keeps.

    python bench/storage_bench.py [--workflows 40] [--cycles 3]

Runs the bench_three_step workflow in-process against the stack's Postgres-backed Dagster instance
(a launched run adds a handful of queue/launch events on top). Per cycle: N workflows, measure,
`agentflow purge --older-than 0` (the command's own function), VACUUM, measure. Bounded storage shows
as the table sizes levelling off across cycles. Writes bench/results/storage_bench.{json,md,png}.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path
from typing import Any

from common import BENCH, BenchStack, machine, md_table, plot_path, pyplot, write_results

from tests.support.llm_server import LLMTestServer, ok

OURS = {
    "workflow_definitions", "workflow_runs", "task_runs", "task_outputs", "audit_log", "llm_calls",
    "published_results", "api_keys", "api_requests", "api_collections", "agentflow_alembic_version",
}  # fmt: skip
RAG_PREFIXES = ("rag_", "documents", "chunks", "embedding", "document_")


def table_bytes(engine: Any) -> dict[str, dict[str, int]]:
    """table -> total relation bytes (with indexes and TOAST) and live rows."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT c.relname, pg_total_relation_size(c.oid), s.n_live_tup FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
                "WHERE n.nspname = 'public' AND c.relkind = 'r'"
            )
        ).all()
    return {name: {"bytes": int(size), "rows": int(live or 0)} for name, size, live in rows}


def group(sizes: dict[str, dict[str, int]]) -> dict[str, int]:
    """Bytes of Dagster's tables and of ours (RAG tables left out: no documents are ingested here)."""
    out = {"dagster": 0, "agentflow": 0}
    for name, v in sizes.items():
        if name in OURS:
            out["agentflow"] += v["bytes"]
        elif not name.startswith(RAG_PREFIXES):
            out["dagster"] += v["bytes"]
    return out


def row_bytes(engine: Any, run_ids: list[str], plan_ids: list[str]) -> dict[str, int]:
    """Exact tuple bytes (pg_column_size) these workflows wrote, per table."""
    import sqlalchemy as sa

    queries = {
        "event_logs": (
            "SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM event_logs t WHERE run_id = ANY(:r)"
        ),
        "runs": "SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM runs t WHERE run_id = ANY(:r)",
        "run_tags": "SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM run_tags t WHERE run_id = ANY(:r)",
    }
    for table in ("workflow_runs", "task_runs", "task_outputs", "llm_calls", "audit_log"):
        queries[table] = (
            f"SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM {table} t WHERE plan_id = ANY(:p)"
        )
    with engine.connect() as conn:
        return {
            k: int(conn.execute(sa.text(q), {"r": run_ids, "p": plan_ids}).scalar_one())
            for k, q in queries.items()
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=40)
    parser.add_argument("--cycles", type=int, default=3)
    args = parser.parse_args()

    import dagster as dg
    import sqlalchemy as sa

    from agentflow_dagster.commands.purge import purge
    from agentflow_dagster.db import make_engine
    from agentflow_dagster.events import WorkflowRequest
    from agentflow_dagster.resources_env import build_resources
    from agentflow_dagster.settings import get_settings
    from agentflow_dagster.workflows.loader import load_specs
    from ops.compiler import build_workflow_job, request_run_config

    tmp = Path(tempfile.mkdtemp(prefix="agentflow-bench-storage-"))
    llm = LLMTestServer().start()
    llm.rule(lambda body: True, ok())
    stack = BenchStack(tmp / "af")
    cycles: list[dict[str, Any]] = []
    try:
        stack.start({"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "bench-key"})
        spec = load_specs(BENCH / "specs")["bench_three_step"]
        job = build_workflow_job(spec)
        resources = build_resources(get_settings())
        engine = make_engine(stack.pg_url)
        with dg.DagsterInstance.get() as instance:
            empty = group(table_bytes(engine))
            for cycle in range(args.cycles):
                run_ids, plan_ids = [], []
                for i in range(args.workflows):
                    req = WorkflowRequest(
                        event_id=f"storage-{cycle}-{i}-{uuid.uuid4().hex[:6]}",
                        workflow=spec.name,
                        inputs={"message": f"Invoice {i} was charged twice; please refund one. " * 3},
                    )
                    result = job.execute_in_process(
                        run_config=request_run_config(req, spec.version),
                        resources=resources,
                        instance=instance,
                        tags={"agentflow/event_id": req.event_id, "agentflow/plan_id": req.plan_id},
                    )
                    assert result.success
                    run_ids.append(result.run_id)
                    plan_ids.append(req.plan_id)
                with engine.connect() as conn:
                    # Our run-status sensor would mark these finished; in-process runs finish inside the job.
                    conn.execute(sa.text("ANALYZE"))
                    conn.commit()
                exact = row_bytes(engine, run_ids, plan_ids)
                with engine.connect() as conn:
                    events = conn.execute(
                        sa.text("SELECT count(*) FROM event_logs WHERE run_id = ANY(:r)"), {"r": run_ids}
                    ).scalar_one()
                full = table_bytes(engine)
                grown = group(full)
                report = purge(instance, engine, 0.0)
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(sa.text("VACUUM ANALYZE"))
                after_tables = table_bytes(engine)
                after = group(after_tables)
                cycles.append(
                    {
                        "cycle": cycle + 1,
                        "exact_row_bytes_per_workflow": {
                            k: round(v / args.workflows) for k, v in exact.items()
                        },
                        "event_log_rows_per_workflow": round(events / args.workflows, 1),
                        "bytes_before_purge": grown,
                        "purged": {"dagster_runs": report.dagster_runs, **report.rows},
                        "bytes_after_purge_vacuum": after,
                        "rows_after_purge": {
                            k: after_tables[k]["rows"] for k in ("event_logs", "runs", "audit_log")
                        },
                    }
                )
                print(cycles[-1], flush=True)
            final_audit = int(
                engine.connect().execute(sa.text("SELECT count(*) FROM audit_log")).scalar_one()
            )
        engine.dispose()
    finally:
        stack.stop()
        llm.stop()

    first = cycles[0]["exact_row_bytes_per_workflow"]
    dagster_b = sum(v for k, v in first.items() if k in ("event_logs", "runs", "run_tags"))
    ours_b = sum(v for k, v in first.items() if k not in ("event_logs", "runs", "run_tags"))
    data = {
        "machine": machine(),
        "workflows_per_cycle": args.workflows,
        "empty_bytes": empty,
        "cycles": cycles,
        "row_bytes_per_workflow": {"dagster": dagster_b, "agentflow": ours_b, "by_table": first},
        "audit_rows_kept": final_audit,
    }
    rows = [[k, v] for k, v in sorted(first.items(), key=lambda kv: -kv[1])]
    cyc_rows = [
        [
            c["cycle"],
            round(c["bytes_before_purge"]["dagster"] / 1024),
            round(c["bytes_before_purge"]["agentflow"] / 1024),
            c["purged"]["dagster_runs"],
            c["purged"].get("workflow_runs"),
            round(c["bytes_after_purge_vacuum"]["dagster"] / 1024),
            round(c["bytes_after_purge_vacuum"]["agentflow"] / 1024),
        ]
        for c in cycles
    ]
    md = "\n".join(
        [
            "# Benchmark 4: storage per workflow and retention",
            "",
            f"{data['machine']['host']} · {data['machine']['at']} · {data['machine']['note']}",
            "",
            f"bench_three_step (3 LLM tasks), {args.workflows} workflows per cycle, in-process runs on the "
            "Postgres-backed instance (launched runs add ~5 queue/launch events).",
            "",
            f"**Row bytes per workflow: Dagster {dagster_b} B, agentflow tables {ours_b} B** "
            f"(pg_column_size of the rows; indexes not included). Event log rows per workflow: "
            f"{cycles[0]['event_log_rows_per_workflow']}.",
            "",
            md_table(["table", "bytes per workflow"], rows),
            "",
            "## Retention: N workflows, then `purge --older-than 0` and VACUUM, per cycle",
            "",
            "KiB of tables + indexes.",
            "",
            md_table(
                [
                    "cycle",
                    "Dagster before",
                    "ours before",
                    "runs purged",
                    "plans purged",
                    "Dagster after",
                    "ours after",
                ],
                cyc_rows,
            ),  # fmt: skip
            "",
            f"Audit rows kept (no --include-audit): {final_audit}. Empty database: {empty}.",
        ]
    )
    write_results("storage_bench", data, md)
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.barh([r[0] for r in rows], [r[1] for r in rows])
    ax1.set_xlabel("bytes per workflow")
    ax1.set_title("Row bytes per workflow by table")
    xs = [c["cycle"] for c in cycles]
    for key, color in (("dagster", "C0"), ("agentflow", "C1")):
        ax2.plot(
            xs,
            [c["bytes_before_purge"][key] / 1024 for c in cycles],
            "o-",
            color=color,
            label=f"{key} before",
        )
        ax2.plot(
            xs,
            [c["bytes_after_purge_vacuum"][key] / 1024 for c in cycles],
            "s--",
            color=color,
            label=f"{key} after",
        )
    ax2.set_xlabel("cycle")
    ax2.set_ylabel("KiB (tables + indexes)")
    ax2.set_title("Purge each cycle: size levels off")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plot_path("storage_bench"), dpi=110)
    plt.close(fig)
    print(md)


if __name__ == "__main__":
    main()
