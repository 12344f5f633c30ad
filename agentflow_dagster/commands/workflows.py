"""`agentflow workflows`: the shipped workflow specs, their versions and declared inputs."""

from __future__ import annotations

import json

import click

from agentflow_dagster.workflows.loader import load_specs


@click.command("workflows")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def workflows(as_json: bool) -> None:
    """List the shipped workflows with their versions and declared inputs."""
    specs = load_specs()
    if as_json:
        data = [
            {
                "name": s.name,
                "version": s.version,
                "description": s.description,
                "spec_hash": s.spec_hash,
                "inputs": [f.model_dump(exclude_none=True) for f in s.inputs],
                "tasks": s.topological_order(),
            }
            for s in specs.values()
        ]
        click.echo(json.dumps(data, indent=2))
        return
    for spec in specs.values():
        click.echo(f"{spec.name} {spec.version}  {spec.description}")
        for field in spec.inputs:
            need = (
                "required"
                if field.required and field.default is None
                else f"optional, default {field.default!r}"
            )
            limit = f", max_length {field.max_length}" if field.max_length else ""
            click.echo(f"    {field.name}: {field.type} ({need}{limit})")
        click.echo(f"    tasks: {' -> '.join(spec.topological_order())}")
