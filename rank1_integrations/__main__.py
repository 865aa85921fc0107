"""``python -m rank1_integrations``: the ``rank1`` command."""

import sys

from rank1_integrations.cli import main

sys.exit(main())
