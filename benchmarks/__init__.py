"""The benchmark behind docs/benchmarks.md and its speed measurements, run from the repository root:

    python -m benchmarks.benchmark --quick          # a smoke run in minutes
    python -m benchmarks.bench_speed --quick        # speed measurements only
    python -m benchmarks.bench_routing              # the cost of routing mixed batches
    python -m benchmarks.bench_data                 # the data path's rows per second

Each run trains through `mlora_peft.training` (the library `recipes/train.py` is a command line over).
"""
