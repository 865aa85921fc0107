"""The remote backend: OpenAI-compatible vLLM servers."""
