"""Planning a layout from a prompt: the planner interface, the rule-based planner, and the LLM planner with its
chat-completions HTTP client (standard library only)."""
