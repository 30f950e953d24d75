"""Fitting: the objective graph, its compiled step and the adapter to PyMC's ``Inference`` loop.

``objectives`` (ELBO, IWAE as values) → ``estimator`` (the Monte Carlo terms, the step graph and
its compilation) → ``guard`` (the divergence guard around the step) → ``vi`` (``AmortizedVI``, the
only module touching PyMC's loop, writing the fit's ``record.FitRecord``); ``jax`` (what the JAX
linker needs) and ``host_noise`` (the step fed with host-drawn noise, split across devices).
"""
