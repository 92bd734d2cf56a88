"""`python -m loadtest`: the load-test harness (filled in by the load-test issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    sys.stderr.write("loadtest: not built yet; see the load-test issue\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
