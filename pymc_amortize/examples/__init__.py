"""Real-data example models (their data sets need the ``examples`` extra)."""

__all__: list[str] = []
