"""Benchmarks, load generation and soak runs against covergen (never collected by pytest).

    python -m loadtest.loadgen --spawn-server --concurrency 16 --duration 30 --ceiling
    python -m loadtest.soak --duration 600 --rate 4
"""
