"""The ``ramraft`` command line's entry: the console script calls ``main``,
and ``python -m ramraft`` runs it.

Ctrl-C ends a command with one line and exit 130, here, for the whole
run: also in the few tenths of a second the command line's modules (grpc,
protobuf and the parsers) take to import, and while the arguments are
parsed, which is why this module imports nothing of them until ``main``
runs, inside the ``try`` (a handler inside the command line could not
catch those).
"""

import sys

EXIT_INTERRUPTED = 130  # tools/cli.py's, which is not imported yet


def main() -> int:
    try:
        from ramraft.tools.cli import main as run

        return run()
    except KeyboardInterrupt:
        if sys.stderr is not None:  # None: started with it closed (2>&-)
            sys.stderr.write("ramraft: interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
