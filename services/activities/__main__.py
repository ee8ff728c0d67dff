"""`python -m services.activities`: migrate the database, then serve."""

from .app import main

main()
