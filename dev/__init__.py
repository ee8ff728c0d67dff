"""Developer tooling: the `make run` launcher."""
