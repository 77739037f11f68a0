"""`python -m tools.train_tiny_clip [ARGS]`: see the package docstring."""

from .train import main

main()
