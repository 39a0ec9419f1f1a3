"""The ``schoolgate`` command: a subcommand module per area, sharing helpers in
:mod:`schoolgate.cli.common`; none of them imports the entry point."""
