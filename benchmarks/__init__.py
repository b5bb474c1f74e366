"""Benchmarks: ``python -m benchmarks.run [name ...] [-- options]``; each ``bench_*.py`` has a ``main()``."""
