"""``python -m trojanscope`` runs the command line (the same as the ``trojanscope`` script)."""

from .cli.main import main

main()
