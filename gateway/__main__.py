"""`python -m gateway`: serve the gateway."""

from .app import main

main()
