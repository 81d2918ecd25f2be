"""`python -m vidmask ...` (and `torchrun -m vidmask ...`) runs the CLI."""

from vidmask.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
