"""The data side of a fit on ``unit_data``: reading an xarray Dataset chunk by chunk
(``streaming``) and drawing the step's minibatches from a pool of chunks (``sampler``)."""

__all__: list[str] = []
