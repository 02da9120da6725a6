"""`python -m segbatch` runs the command line."""

from segbatch.cli.main import main

main()
