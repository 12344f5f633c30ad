"""Workflow specs: models, the YAML loader and validator, and the shipped specs."""
