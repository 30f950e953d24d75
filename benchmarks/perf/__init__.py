"""Performance benchmarks of A-VI against PyMC's ADVI and NumPyro (see README.md here)."""
