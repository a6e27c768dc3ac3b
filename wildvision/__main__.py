"""`python -m wildvision` runs the `wildvision` command."""

from wildvision.cli import run

run()
