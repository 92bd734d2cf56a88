"""`python -m loadtest` (also `gate loadtest`): the load-test harness; see --help."""

from __future__ import annotations

import sys

from loadtest import options


def main(argv: list[str] | None = None) -> int:
    opts = options.parse(sys.argv[1:] if argv is None else argv)
    from loadtest.run import main as run_main  # heavy imports only once the options are good

    return run_main(opts)


if __name__ == "__main__":
    sys.exit(main())
