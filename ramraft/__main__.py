"""The ``ramraft`` command line's entry: the console script calls ``main``,
and ``python -m ramraft`` runs it.

The command line's modules (grpc, protobuf and the parsers) take a few
tenths of a second to import. Ctrl-C in that time, or while the arguments
are parsed, ends as it does later (one line, exit 130), not with a traceback
from inside an import: this module imports nothing of them until ``main``
runs, inside the ``try``.
"""

import sys

EXIT_INTERRUPTED = 130  # tools/cli.py's, which is not imported yet


def main() -> int:
    try:
        from ramraft.tools.cli import main as run

        return run()
    except KeyboardInterrupt:
        sys.stderr.write("ramraft: interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
