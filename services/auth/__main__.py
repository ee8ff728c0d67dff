"""`python -m services.auth`: migrate the database, then serve."""

from .app import main

main()
