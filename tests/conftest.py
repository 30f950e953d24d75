import os

# Small models: one BLAS thread is much faster on a busy 2-core machine (see README).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import matplotlib

matplotlib.use("Agg")

import pytest

import pymc_amortize  # noqa: F401  (registers method="amortized")
from pymc_amortize.examples.paper import linear_data, linear_model


@pytest.fixture(scope="session")
def linear_x():
    return linear_data(1_000, random_seed=0)


@pytest.fixture
def linear(linear_x):
    return linear_model(linear_x)
