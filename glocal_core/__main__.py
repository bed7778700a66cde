"""`python -m glocal_core`: the reproduction's command line (`glocal_core.repro.cli`)."""

from .repro.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
