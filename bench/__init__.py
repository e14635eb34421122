"""Benchmarks that print tables (speed, memory); `make bench`. Never timed asserts."""
