"""Backends turn completion requests into completions; they never see documents."""

from rank1_integrations.backends.base import Backend, Completion, CompletionRequest

__all__ = ["Backend", "Completion", "CompletionRequest"]
