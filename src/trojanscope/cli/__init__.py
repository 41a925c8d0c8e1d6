"""Command-line interface (typer). See :mod:`trojanscope.cli.main`."""
