"""Developer entry points: ``python -m scripts.run`` (make run) and ``python -m scripts.demo`` (make demo)."""
