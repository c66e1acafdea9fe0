"""``python -m client`` runs the ``ramraft`` command line (as the console
script does). Prefer it to ``python -m client.cli``, which would load
client/cli.py twice (once as __main__): its exception classes would then
not match the ones the server subcommands raise."""

import sys

from client.cli import main

sys.exit(main())
