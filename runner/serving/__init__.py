"""LLM serving: a load harness for OpenAI-compatible endpoints (`loadgen`) and serving engines."""
