"""Agent roles (prompt, output schema, tools, LLM profile) and the runner that executes them."""
