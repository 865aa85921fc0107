"""``python -m rank1_integrations.serve``: the same as the ``rank1-serve`` command."""

from rank1_integrations.serve.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
