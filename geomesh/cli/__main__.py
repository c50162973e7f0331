"""`python -m geomesh.cli`: the same entry point as the `geomesh` script."""

from geomesh.cli import main

main()
