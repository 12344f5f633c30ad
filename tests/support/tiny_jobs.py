"""A tiny code location for launcher tests: one op that records the worker's pid."""

import os

import dagster as dg


@dg.op
def record_pid(context: dg.OpExecutionContext) -> int:
    context.add_output_metadata({"pid": os.getpid()})
    return os.getpid()


@dg.job(executor_def=dg.in_process_executor)
def tiny_job() -> None:
    record_pid()


defs = dg.Definitions(jobs=[tiny_job])
