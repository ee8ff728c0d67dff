"""`python -m services.connections`: migrate the database, then serve."""

from .app import main

main()
