"""Dagster ConfigurableResources wrapping the platform's servers."""
