"""Every bad input we promise a clear error for, in one list.

Used by ``tests/test_reliability.py`` (each case must raise ``exception`` with a message matching
``match``, which names the variable or option at fault) and by ``docs/generate_error_table.py``,
which runs each case and writes the message it gets to ``docs/errors.md``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr
from pytensor_ml.layers import Linear

import pymc_amortize
from pymc_amortize import AmortizationError, IndexedLocal
from pymc_amortize.examples.simulated_radon import radon_data, radon_model

__all__ = ["CASES", "BadInputCase", "two_plates_model", "unit_model"]

N_UNITS = 20


@dataclass(frozen=True)
class BadInputCase:
    """One mistake a user can make, and the error it must get."""

    id: str
    mistake: str
    call: Callable[[], object]
    exception: type[Exception]
    match: str


def unit_model(n: int = N_UNITS, *, dims: bool = True, nan: bool = False) -> pm.Model:
    """theta ~ N(0, 1), z_n ~ N(0, 1), x_n ~ N(theta + z_n, 1): one local latent per unit."""
    x = np.random.default_rng(0).normal(size=n)
    if nan:
        x[3] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyMC's ImputationWarning for the NaN case
        with pm.Model(coords={"unit": range(n)} if dims else None) as model:
            theta = pm.Normal("theta", 0, 1)
            if dims:
                z = pm.Normal("z", 0, 1, dims="unit")
                pm.Normal("x", theta + z, 1, observed=x, dims="unit")
            else:
                z = pm.Normal("z", 0, 1, shape=n)
                pm.Normal("x", theta + z, 1, observed=x)
    return model


def _model_with(extra: Callable[[pm.Model], None]) -> pm.Model:
    model = unit_model()
    with model:
        extra(model)
    return model


def _fit(model: pm.Model | None = None, n: int = 5, **options):
    options.setdefault("family", "encoder")
    return pm.fit(
        n,
        method="amortized",
        model=model if model is not None else unit_model(),
        progressbar=False,
        random_seed=0,
        **options,
    )


@functools.cache
def _fitted():
    return _fit(encoder_widths=(), n=2)


def two_plates_model() -> pm.Model:
    """z_n ~ N(0, 1), x_n ~ N(z_n, 1) for 20 units; w_g ~ N(0, 1), y_g ~ N(w_g, 1) for 5 groups."""
    rng = np.random.default_rng(1)
    with pm.Model(coords={"unit": range(N_UNITS), "group": range(5)}) as model:
        z = pm.Normal("z", 0, 1, dims="unit")
        w = pm.Normal("w", 0, 1, dims="group")
        pm.Normal("x", z, 1, observed=rng.normal(size=N_UNITS), dims="unit")
        pm.Normal("y", w, 1, observed=rng.normal(size=5), dims="group")
    return model


def _minibatch_model() -> pm.Model:
    x = np.random.default_rng(2).normal(size=100)
    with pm.Model() as model:
        theta = pm.Normal("theta", 0, 1)
        pm.Normal("x", theta, 1, observed=pm.Minibatch(x, batch_size=10), total_size=100)
    return model


def _indexed_model(*, bad_index: bool = False) -> pm.Model:
    """a_j ~ N(0, 1) for 5 counties, y_i ~ N(a[county_idx[i]], 1) for 20 rows."""
    index = np.arange(N_UNITS) % 5
    if bad_index:
        index[3] = 5
    with pm.Model(coords={"county": range(5), "obs_id": range(N_UNITS)}) as model:
        county_idx = pm.Data("county_idx", index, dims="obs_id")
        a = pm.Normal("a", 0, 1, dims="county")
        pm.Normal("y", a[county_idx], 1, observed=np.zeros(N_UNITS), dims="obs_id")
    return model


def _global_model() -> pm.Model:
    with pm.Model() as model:
        theta = pm.Normal("theta", 0, 1)
        pm.Normal("x", theta, 1, observed=np.zeros(N_UNITS))
    return model


def _bad_linear_encoder(X):
    head = Linear("wrong_n_in", n_in=3, n_out=2)  # the input has 1 column, not 3
    out = head(X)
    return out[:, :1], out[:, 1:]


def _case(id, mistake, call, match, exception=AmortizationError):
    return BadInputCase(id, mistake, call, exception, match)


CASES: list[BadInputCase] = [
    # -- local= ----------------------------------------------------------------------------------
    _case(
        "local-unknown-variable",
        "`local=` names a variable the model does not have",
        lambda: _fit(local={"w": "x"}),
        r"'w'.* names no variable",
    ),
    _case(
        "local-observed",
        "`local=` names an observed variable",
        lambda: _fit(local={"x": "x"}),
        r"'x' is observed",
    ),
    _case(
        "local-deterministic",
        "`local=` names a Deterministic",
        lambda: _fit(
            _model_with(lambda m: pm.Deterministic("z_plus_one", m["z"] + 1, dims="unit")),
            local={"z_plus_one": "x"},
        ),
        r"'z_plus_one' is a Deterministic",
    ),
    _case(
        "local-discrete",
        "`local=` names a discrete latent",
        lambda: _fit(
            _model_with(lambda m: pm.Bernoulli("k", 0.5, dims="unit")),
            local={"k": "x"},
        ),
        r"'k' is discrete",
    ),
    _case(
        "local-scalar",
        "`local=` names a scalar (global) latent",
        lambda: _fit(local={"theta": "x"}),
        r"'theta' is a scalar",
    ),
    _case(
        "local-not-a-mapping",
        "`local=` is not a mapping",
        lambda: _fit(local=["z"]),
        r"local= must be a non-empty mapping",
    ),
    _case(
        "local-input-unknown",
        "`local=` feeds the encoder from data the model does not have",
        lambda: _fit(local={"z": "y"}),
        r"local\['z'\] names 'y'",
    ),
    _case(
        "local-input-is-latent",
        "`local=` feeds the encoder from a latent instead of data",
        lambda: _fit(local={"z": "theta"}),
        r"local\['z'\] names 'theta'",
    ),
    _case(
        "local-input-not-data",
        "`local=` gives encoder inputs that are neither names nor an array",
        lambda: _fit(local={"z": [[1.0]] * N_UNITS}),
        r"local\['z'\] must be a data name",
    ),
    # -- encoder data ----------------------------------------------------------------------------
    _case(
        "data-wrong-unit-count",
        "the data feeding the encoder has another number of units than the latent",
        lambda: _fit(
            _model_with(lambda m: pm.Data("covariate", np.ones(N_UNITS + 3))),
            local={"z": "covariate"},
        ),
        r"'covariate' feeds the encoder of 'z' but has leading length 23",
    ),
    _case(
        "matrix-wrong-unit-count",
        "an explicit encoder input matrix has another number of rows than the latent has units",
        lambda: _fit(local={"z": np.ones((N_UNITS - 1, 2))}),
        r"'z' has 19 rows but 'z' has 20 units",
    ),
    _case(
        "observed-data-has-nan",
        "the observed data contain NaN (PyMC would impute them)",
        lambda: _fit(unit_model(nan=True)),
        r"observed data of 'x' has 1 missing",
    ),
    _case(
        "matrix-not-numeric",
        "an explicit encoder input matrix holds strings",
        lambda: _fit(local={"z": np.array(["a"] * N_UNITS)}),
        r"given for 'z' has dtype <U1; it must be numeric",
    ),
    _case(
        "matrix-object-dtype",
        "an explicit encoder input matrix has dtype object",
        lambda: _fit(local={"z": np.array([None] * N_UNITS)}),
        r"given for 'z' has dtype object; it must be numeric",
    ),
    # -- user encoders ---------------------------------------------------------------------------
    _case(
        "encoder-single-output",
        "a user encoder returns one tensor instead of (mean, log_sd)",
        lambda: _fit(encoder=lambda X: X),
        r"encoder of 'z' must return a pair \(mean, log_sd\)",
    ),
    _case(
        "encoder-wrong-width",
        "a user encoder returns two columns for a scalar latent (static shape)",
        lambda: _fit(encoder=lambda X: (pt.concatenate([X, X], axis=1), X)),
        r"encoder of 'z' returned a mean of shape \(None, 2\); it must be \(batch, 1\)",
    ),
    _case(
        "encoder-wrong-ndim",
        "a user encoder returns a 3-d mean",
        lambda: _fit(encoder=lambda X: (X[None], X)),
        r"encoder of 'z' returned a mean of shape \(1, None, 1\); it must be \(batch, 1\)",
    ),
    _case(
        "encoder-wrong-rows-at-run-time",
        "a user encoder returns fewer rows than units (known only at run time)",
        lambda: _fit(encoder=lambda X: (X[:3], X[:3])),
        r"encoder of 'z' returned a mean of shape \(3, 1\) for 20 units",
    ),
    _case(
        "encoder-wrong-width-at-run-time",
        "a user encoder returns a batch-dependent number of columns (known only at run time)",
        lambda: _fit(encoder=lambda X: (pt.zeros((X.shape[0], X.shape[0])), X)),
        r"encoder of 'z' returned a mean of shape \(20, 20\) for 20 units",
    ),
    _case(
        "encoder-fails",
        "a user encoder's layer expects another input width",
        lambda: _fit(encoder=_bad_linear_encoder),
        r"encoder of 'z' failed on its symbolic inputs: ValueError: Incompatible shared "
        r"dimension for dot product: \(None, 1\), \(3, 2\)",
    ),
    _case(
        "encoder-returns-nan",
        "a user encoder returns NaN at its initial weights",
        lambda: _fit(encoder=lambda X: (X, pt.log(X - 1e9))),
        r"encoder of 'z' returned a log_sd with NaN or inf",
    ),
    _case(
        "encoder-not-callable",
        "`encoder=` is not callable",
        lambda: _fit(encoder={"z": 3}),
        r"encoder of 'z' must be callable",
    ),
    _case(
        "encoder-unknown-latent",
        "`encoder=` names a latent that is not local",
        lambda: _fit(encoder={"theta": lambda X: (X, X)}),
        r"encoder= names \['theta'\]",
    ),
    _case(
        "encoder-unknown-activation",
        "`activation=` is not a known activation",
        lambda: _fit(activation="swish"),
        r"Unknown activation 'swish'",
    ),
    _case(
        "encoder-nonpositive-width",
        "`encoder_widths=` has a width of 0",
        lambda: _fit(encoder_widths=(4, 0)),
        r"encoder_widths must be positive",
    ),
    _case(
        "init-scale-nonpositive",
        "`init_scale=` is not positive",
        lambda: _fit(init_scale=0.0),
        r"init_scale must be positive",
    ),
    # -- model structure -------------------------------------------------------------------------
    # A model with no local latent, latents of different unit counts and literal shapes under
    # minibatches now fit (tests/test_reliability.py checks them against closed forms).
    _case(
        "pm-minibatch",
        "the model is built on `pm.Minibatch` data with `total_size=`",
        lambda: _fit(_minibatch_model()),
        r"variable\(s\) x use pm.Minibatch / total_size.*pass batch_size= to the fit",
    ),
    _case(
        "indexed-local-unknown-index",
        "`IndexedLocal(index=...)` names a variable the model does not have",
        lambda: _fit(_indexed_model(), local={"a": IndexedLocal("cnty")}),
        r"IndexedLocal\(index='cnty'\) for 'a': the model has no variable 'cnty'",
    ),
    _case(
        "indexed-local-not-indexed",
        "`IndexedLocal()` for a latent no observation looks up by index",
        lambda: _fit(local={"z": IndexedLocal()}),
        r"'z' is never used as 'z\[index\]'",
    ),
    _case(
        "index-out-of-range",
        "an index array with a value past the last unit",
        lambda: _fit(_indexed_model(bad_index=True)),
        r"county_idx has values in \[0, 5\], but 'a' has 5 units; the index must lie in \[0, 4\]",
    ),
    # -- options ---------------------------------------------------------------------------------
    _case(
        "batch-size-zero",
        "`batch_size=0`",
        lambda: _fit(batch_size=0),
        r"batch_size must be an integer in \[1, 20\].*got 0",
    ),
    _case(
        "batch-size-negative",
        "`batch_size=-5`",
        lambda: _fit(batch_size=-5),
        r"batch_size must be an integer in \[1, 20\].*got -5",
    ),
    _case(
        "batch-size-above-n",
        "`batch_size` larger than the number of units",
        lambda: _fit(batch_size=N_UNITS + 1),
        r"batch_size must be an integer in \[1, 20\].*got 21",
    ),
    _case(
        "batch-size-without-plate",
        "`batch_size=` for a model whose latents are all fitted mean-field",
        lambda: _fit(_global_model(), batch_size=5),
        r"batch_size= needs a plate of units to minibatch, and this model has none",
    ),
    _case(
        "batch-size-not-integer",
        "`batch_size=2.5`",
        lambda: _fit(batch_size=2.5),
        r"batch_size must be an integer.*got 2.5",
    ),
    _case(
        "n-zero",
        "`n=0` steps",
        lambda: _fit(n=0),
        r"n \(the number of steps\) must be a positive integer; got 0",
    ),
    _case(
        "n-negative",
        "`n=-10` steps",
        lambda: _fit(n=-10),
        r"n \(the number of steps\) must be a positive integer; got -10",
    ),
    _case(
        "obj-n-mc-zero",
        "`obj_n_mc=0`",
        lambda: _fit(obj_n_mc=0),
        r"obj_n_mc must be a positive integer; got 0",
    ),
    _case(
        "unknown-option",
        "`pm.fit(method='amortized')` with a misspelt option",
        lambda: _fit(batchsize=5),
        r"unknown option 'batchsize'",
        exception=TypeError,
    ),
    _case(
        "unknown-inf-kwargs",
        "`inf_kwargs=` with an option AmortizedVI does not take",
        lambda: _fit(inf_kwargs={"bogus": 1}),
        r"inf_kwargs has unknown option\(s\) \['bogus'\]",
        exception=TypeError,
    ),
    _case(
        "fit-amortized-unknown-option",
        "`fit_amortized` with a misspelt option",
        lambda: pymc_amortize.fit_amortized(
            unit_model(), family="encoder", n=5, progressbar=False, drawz=10
        ),
        r"unknown option\(s\) \['drawz'\]",
        exception=TypeError,
    ),
    _case(
        "fit-amortized-draws-zero",
        "`fit_amortized(draws=0)`",
        lambda: pymc_amortize.fit_amortized(
            unit_model(), family="encoder", n=5, progressbar=False, draws=0
        ),
        r"draws must be a positive integer; got 0",
    ),
    # -- unit_data= (units read from a dataset) --------------------------------------------------
    _case(
        "unit-data-missing-variable",
        "`unit_data=` lacks a variable the model reads per unit",
        lambda: _fit(unit_data=xr.Dataset({"y": ("unit", np.zeros(50))}), batch_size=10),
        r"unit_data has no variable 'x', which the model reads per unit",
    ),
    _case(
        "unit-data-no-batch-size",
        "`unit_data=` without `batch_size=`",
        lambda: _fit(unit_data=xr.Dataset({"x": ("unit", np.zeros(50))})),
        r"unit_data= reads minibatches of units from a dataset; give their size, batch_size=",
    ),
    _case(
        "unit-data-unsorted-index",
        "`unit_data=` whose rows are not sorted by unit",
        lambda: _fit(
            radon_model(radon_data(10, 60, random_seed=0)),
            unit_data=xr.Dataset(
                {
                    "county_idx": ("obs_id", np.arange(40) % 10),
                    "floor": ("obs_id", np.zeros(40)),
                    "log_radon": ("obs_id", np.zeros(40)),
                }
            ),
            batch_size=2,
        ),
        r"unit_data\['county_idx'\] must be sorted by unit",
    ),
    # -- new units after a fit -------------------------------------------------------------------
    _case(
        "encode-missing-data",
        "`approx.encode` without the data the encoder needs",
        lambda: _fitted().encode({"y": np.zeros(3)}),
        r"new_data has none of the encoders' inputs \(x\); got \['y'\]",
    ),
    _case(
        "encode-nan",
        "`approx.encode` with NaN in the new units' data",
        lambda: _fitted().encode({"x": np.array([0.0, np.nan])}),
        r"unit inputs of 'z' for the new units have NaN or inf in 1 row\(s\) \(first: row 1, x\)",
    ),
    _case(
        "encode-wrong-width",
        "`approx.encode` with a matrix of the wrong number of columns",
        lambda: _fitted().encode(np.zeros((3, 2))),
        r"encoder of 'z' takes 1 input column\(s\); got 2",
    ),
]
