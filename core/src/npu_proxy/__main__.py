"""``python -m npu_proxy`` runs the command line."""

from .cli import main

main()
