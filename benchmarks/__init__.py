"""Benchmarks of digitlab against plain Keras: overhead, caching, memory, accuracy."""

