"""Backends turn completion requests into completions; they never see documents."""
