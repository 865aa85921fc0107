"""Backends turn completion requests into completions; they never see documents."""

from rank1_integrations.backends.base import AsyncBackend, Backend, Completion, CompletionRequest

__all__ = ["AsyncBackend", "Backend", "Completion", "CompletionRequest"]
