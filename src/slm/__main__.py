"""`python -m slm` runs the same CLI as the `slm` console script."""

from slm.cli.main import entry

entry()
