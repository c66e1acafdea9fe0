"""``python -m ramraft`` runs the ``ramraft`` command line, as the console
script does."""

import sys

from ramraft.tools.cli import main

sys.exit(main())
