"""The ``eval`` and ``demo`` commands: benchmarks, OpenOOD's baselines, metrics, tables, figures, image sources."""
