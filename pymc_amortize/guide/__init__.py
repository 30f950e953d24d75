"""The guide: q(θ) families, the encoders and their inputs, and the symbolic q of a fit."""
