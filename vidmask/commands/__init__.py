"""Command-line sub-commands; each module exposes `add_parser(subparsers)`."""
