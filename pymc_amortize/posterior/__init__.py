"""The posterior: the public approximation and what a user does with a fit (encode, sample, new
units, datasets, ArviZ groups)."""
