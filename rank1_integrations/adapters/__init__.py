"""LangChain and LlamaIndex adapters over one framework-free selection."""
