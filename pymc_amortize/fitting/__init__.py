"""Fitting: the objective graph, its compiled step and the adapter to PyMC's ``Inference`` loop."""
