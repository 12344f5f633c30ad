"""The local stack: embedded servers started, checked and stopped by `agentflow up|status|down`."""
