"""``python -m privateshare``."""

from .cli import main

main(prog_name="privateshare")
