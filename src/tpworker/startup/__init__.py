"""From settings to a running worker: layout (no vLLM) -> plan (engine arguments, preflight) -> start."""
