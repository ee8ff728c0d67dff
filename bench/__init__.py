"""Benchmarks: each starts the system on real processes and prints its figures."""
