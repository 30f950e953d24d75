"""The model side: what a PyMC model's graph says about its units, and PyMC's own machinery.

``types`` (the analysis's frozen descriptions), ``dataflow`` (what a factor computes along a unit
axis), ``analysis`` (``analyze_model``: plates, local latents, verdicts), ``plates`` (batches of a
plate's units), ``logjoint`` (the log joint of a batch) and ``forward`` (PyMC's forward draws on a
model resized to new units). Nothing here knows the guide or the fit.
"""

__all__: list[str] = []
