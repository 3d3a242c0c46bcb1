"""`python -m kubelbd` / `kubelbd`: see kubelbd.app for the flags."""

from __future__ import annotations

import sys

import anyio

from .app import run
from .config import parse_args


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    anyio.run(run, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
