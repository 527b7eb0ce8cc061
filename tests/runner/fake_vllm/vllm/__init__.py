"""A stand-in for the `vllm` package in tests: only what runner/graders/serving_vllm.py starts
(`python -m vllm.entrypoints.openai.api_server --port N ...`), answered by the tests' fake
OpenAI-compatible server. It is not vLLM and measures nothing about vLLM."""
