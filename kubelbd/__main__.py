"""`python -m kubelbd` / `kubelbd`: the command line (kubelbd.cli)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
