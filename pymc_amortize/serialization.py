"""Save a fitted amortized approximation and load it back into the same model.

The weights (encoder parameters and the globals' mean and rho) go to a ``.safetensors`` archive
through pytensor-ml's ``save_state``/``load_state``; the structure needed to rebuild the encoders
goes to a small JSON file beside it: per local latent its plate (row or indexed, and the index),
its unit and row inputs with their scalings, and its encoder (MLP, or pooled with its row-count
scaling) and its training envelope (the range of its inputs in training), plus widths and
activation.

Loading (:func:`load_approximation`) runs in named steps: read the JSON (upgrading old formats);
rebuild an :class:`~pymc_amortize.AmortizedVI` on the model with the saved options (this runs the
model analysis and builds the encoders on the model's data); check that the rebuilt globals,
latents and encoder weights are those saved; load the weights; then apply the saved state the
rebuild cannot know, because it belongs to the fitted data and not to this model's
(:func:`_apply_saved_state`: input scalings, training envelopes, a pooled encoder's row-count
scaling, the conditional family's plates). New units are then encoded without refitting.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pymc as pm
import pytensor
import xarray as xr
from pytensor_ml.checkpoint import load_state, save_state

from pymc_amortize.errors import AmortizationError
from pymc_amortize.fitting.vi import AmortizedVI
from pymc_amortize.guide.conditional import ConditionalGaussian
from pymc_amortize.guide.encoders import MLPEncoder, PooledEncoder
from pymc_amortize.guide.envelope import TrainingEnvelope
from pymc_amortize.guide.inputs import InputScaling, fixed_input_flags
from pymc_amortize.model.types import IndexedLocal, LocalLatent, Plate
from pymc_amortize.posterior.approximation import AmortizedApproximation

__all__ = ["load_approximation", "save_approximation"]

FORMAT_VERSION = 2
#: Versions :func:`load_approximation` reads (1: one row plate, before the model analysis).
READABLE_VERSIONS = (1, 2)


def _paths(path: str | Path) -> tuple[Path, Path]:
    base = Path(path)
    if base.suffix in (".json", ".safetensors"):
        base = base.with_suffix("")
    return base.with_suffix(".json"), base.with_suffix(".safetensors")


def _named_copies(approx: AmortizedApproximation) -> list:
    """Detached copies of every parameter under unique archive names."""
    copies = []
    if approx.globals is not None:
        for key, param in approx.globals.named_params.items():
            copies.append(pytensor.shared(param.get_value(), name=f"global/{key}"))
    for i, param in enumerate(approx.encoder_params):
        copies.append(pytensor.shared(param.get_value(), name=f"encoder/{i}/{param.name}"))
    return copies


def _global_shapes(approx: AmortizedApproximation) -> dict[str, list[int]]:
    """The shapes of q(θ)'s variables, by value name, as the JSON file records them."""
    if approx.globals is None:
        return {}
    return {name: list(shape) for name, shape in approx.globals.shapes().items()}


def _scaling_json(scaling: InputScaling | None) -> dict | None:
    if scaling is None:
        return None
    return {
        "center": np.asarray(scaling.center).tolist(),
        "scale": np.asarray(scaling.scale).tolist(),
        # Optional (added within format 2; absent: none): the raw columns that held NaN or inf
        # in training and get an indicator column.
        "flagged": list(scaling.flagged),
    }


def _scaling_from_json(saved: dict | None) -> InputScaling | None:
    if saved is None:
        return None
    return InputScaling(
        np.asarray(saved["center"], dtype=float),
        np.asarray(saved["scale"], dtype=float),
        tuple(int(j) for j in saved.get("flagged", ())),
    )


def _encoder_json(encoder: object) -> dict:
    if isinstance(encoder, PooledEncoder):
        return {
            "kind": "PooledEncoder",
            "n_row_inputs": int(encoder.n_row_inputs),
            "n_unit_covariates": int(encoder.n_unit_covariates),
            # Fixed at the fit from its units' row counts: a new model's counts must not move them.
            "log_count_center": float(encoder.log_count_center),
            "log_count_scale": float(encoder.log_count_scale),
            # Optional (added within format 2; absent: False): every fitted unit had the same
            # number of rows (new units with another count get the rows' message scaled).
            "constant_count": bool(encoder.constant_count),
        }
    if isinstance(encoder, MLPEncoder):
        return {"kind": "MLPEncoder", "n_inputs": int(encoder.n_inputs)}
    raise AmortizationError(f"Cannot save an encoder of type {type(encoder).__name__}.")


def _latent_json(approx: AmortizedApproximation, plate: Plate, latent: LocalLatent) -> dict:
    data = approx.inputs[latent.name]
    return {
        "plate": plate.name,
        "kind": "row" if plate.index is None else "indexed",
        "index": None if plate.index is None else plate.index.key,
        "unit_inputs": [d.key for d in latent.unit_inputs],
        "row_inputs": [d.key for d in latent.row_inputs],
        "explicit_input": latent.input_matrix is not None,
        "event_shape": list(latent.event_shape),
        "unit_scaling": _scaling_json(data.unit_scaling),
        "row_scaling": _scaling_json(data.row_scaling),
        "encoder": _encoder_json(approx.encoders[latent.name]),
        # Optional (added within format 2; files without it load with no envelope): the range
        # of the standardised encoder inputs in training, for the out-of-range warning.
        "envelope": (
            approx.envelopes[latent.name].to_json() if latent.name in approx.envelopes else None
        ),
    }


def save_approximation(approx: AmortizedApproximation, path: str | Path) -> tuple[Path, Path]:
    """Save a fitted amortized approximation: ``path.json`` (structure) and ``path.safetensors``.

    Works for every plate kind (units with one row each, units tied to rows by an index, several
    plates). The JSON file records, per local latent, its plate, its unit and row encoder inputs
    with their scalings and its encoder (MLP or pooled); the archive holds the weights. Only
    approximations with the built-in encoders can be saved (a user's encoder is arbitrary code;
    save its weights yourself).

    Parameters
    ----------
    approx : AmortizedApproximation
        The fitted approximation.
    path : str or Path
        Base path; the two files get the suffixes ``.json`` and ``.safetensors``.

    Returns
    -------
    tuple of Path
        The JSON and safetensors files written.

    Examples
    --------
    .. code-block:: python

        save_approximation(approx, "fit/radon")
        approx2 = load_approximation("fit/radon", model=radon_model)
        approx2.encode({"log_radon": y_new, "county_idx": county_new})
    """
    if not isinstance(approx, AmortizedApproximation):
        raise AmortizationError(
            f"save_approximation takes an AmortizedApproximation; got {type(approx).__name__}."
        )
    options = approx.settings
    if not options or options.get("user_encoders"):
        raise AmortizationError(
            "Only approximations with the built-in encoders can be saved; this one uses a "
            "user encoder. Save its weights with pytensor_ml.save_state instead."
        )
    json_path, weights_path = _paths(path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    structure = {
        "format_version": FORMAT_VERSION,
        "options": {
            key: options[key] for key in ("encoder_widths", "activation", "standardize_inputs")
        },
        "analysis": approx.analysis.summary(),
        # q(θ)'s family (absent in older files: mean-field).
        "global_family": approx.globals.kind if approx.globals is not None else "meanfield",
        # The conditional family's settings and plates (absent, as in older files: the encoder's).
        "family": (
            None
            if approx.local_family is None
            else {
                **dataclasses.asdict(approx.local_family),
                "plates": sorted(approx.conditional_plates),
            }
        ),
        "latents": {
            latent.name: _latent_json(approx, plate, latent)
            for plate in approx.analysis.plates
            for latent in plate.latents
        },
        "encoder_params": [
            [param.name, list(param.get_value(borrow=True).shape)]
            for param in approx.encoder_params
        ],
        "globals": _global_shapes(approx),
    }
    json_path.write_text(json.dumps(structure, indent=2))
    save_state(_named_copies(approx), weights_path)
    return json_path, weights_path


def _upgrade(structure: dict) -> dict:
    """A version-1 file (one row plate, unit inputs only) in the version-2 layout."""
    if structure.get("format_version") != 1:
        return structure
    latents = {}
    for name, saved in structure["latents"].items():
        latents[name] = {
            "plate": None,
            "kind": "row",
            "index": None,
            "unit_inputs": list(saved["input_names"]),
            "row_inputs": [],
            "explicit_input": saved["explicit_input"],
            "unit_scaling": {"center": saved["center"], "scale": saved["scale"]},
            "row_scaling": None,
            "encoder": {"kind": "MLPEncoder"},
        }
    return {**structure, "format_version": 2, "latents": latents, "encoder_params": None}


def _saved_widths(saved: list | dict) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
    """The saved ``encoder_widths``: one list for every latent (files before the default width
    rule), or ``{latent: widths}`` as resolved at fit time."""
    if isinstance(saved, dict):
        return {name: tuple(widths) for name, widths in saved.items()}
    return tuple(saved)


def _local_spec(model: pm.Model, name: str, saved: dict):
    """The ``local=`` entry that rebuilds latent ``name`` as it was fitted."""
    if saved["explicit_input"]:
        example = (
            f"IndexedLocal('{saved['index']}', unit_covariates=matrix)"
            if saved["kind"] == "indexed"
            else "matrix"
        )
        raise AmortizationError(
            f"'{name}' was fitted on an explicit input matrix; pass local={{'{name}': {example}}} "
            "with this model's units."
        )
    if saved["kind"] == "row":
        return list(saved["unit_inputs"])
    index = saved["index"] if saved["index"] in model.named_vars else None
    return IndexedLocal(
        index=index, inputs=list(saved["row_inputs"]), unit_covariates=list(saved["unit_inputs"])
    )


def _read_structure(json_path: Path, weights_path: Path) -> dict:
    """The saved JSON structure, in the current format's layout."""
    if not json_path.exists() or not weights_path.exists():
        raise AmortizationError(f"No saved approximation at {json_path} and {weights_path}.")
    structure = json.loads(json_path.read_text())
    if structure.get("format_version") not in READABLE_VERSIONS:
        raise AmortizationError(
            f"{json_path} has format version {structure.get('format_version')!r}; this version of "
            f"pymc_amortize reads versions {READABLE_VERSIONS}."
        )
    return _upgrade(structure)


def _rebuild(
    structure: dict,
    model: pm.Model,
    local: Mapping[str, object] | None,
    unit_data: xr.Dataset | None,
) -> AmortizedApproximation:
    """An unfitted approximation on ``model`` with the saved options: the model analysis runs and
    the encoders are built on this model's data, with the saved encoders' input widths."""
    latents = structure["latents"]
    missing = [name for name in latents if name not in model.named_vars]
    if missing:
        raise AmortizationError(
            f"The model has no variable(s) {missing}, which the saved approximation amortizes."
        )
    spec = {
        name: (local[name] if local and name in local else _local_spec(model, name, saved))
        for name, saved in latents.items()
    }
    options = structure["options"]
    # The saved encoders' widths count an indicator per flagged column, whatever this model's
    # data hold.
    flags = {
        (name, part): (saved.get(f"{key}_scaling") or {}).get("flagged", ())
        for name, saved in latents.items()
        for part, key in (("units", "unit"), ("rows", "row"))
    }
    family = structure.get("family")
    with fixed_input_flags(flags):
        return AmortizedVI(
            spec or None,
            model=model,
            family=(
                "encoder"
                if family is None
                else ConditionalGaussian(
                    # Files from before the variational steps hold only these two: Laplace.
                    **{"quadrature": 1, "variational_steps": 0}
                    | {k: v for k, v in family.items() if k != "plates"}
                )
            ),
            global_family=structure.get("global_family", "meanfield"),
            encoder_widths=_saved_widths(options["encoder_widths"]),
            activation=options["activation"],
            standardize_inputs=options["standardize_inputs"],
            # Batches are never drawn from a loaded approximation: the smallest buffers do.
            unit_data=unit_data,
            batch_size=1 if unit_data is not None else None,
        ).approx


def _check_structure(approx: AmortizedApproximation, structure: dict) -> None:
    """The rebuilt globals, latents, inputs, encoders and weights must be those saved."""
    saved_globals = structure["globals"]
    if _global_shapes(approx) != saved_globals:
        raise AmortizationError(
            f"The model's globals {_global_shapes(approx)} differ from the saved ones "
            f"{saved_globals}."
        )
    have = {
        lat.name: (
            "row" if plate.index is None else "indexed",
            [d.key for d in lat.unit_inputs],
            [d.key for d in lat.row_inputs],
            type(approx.encoders[lat.name]).__name__,
        )
        for plate in approx.analysis.plates
        for lat in plate.latents
    }
    want = {
        name: (s["kind"], s["unit_inputs"], s["row_inputs"], s["encoder"]["kind"])
        for name, s in structure["latents"].items()
    }
    if have != want:
        raise AmortizationError(
            "The model's local latents (kind, unit inputs, row inputs, encoder) "
            f"{have} differ from the saved ones {want}; load into a model of the same structure."
        )
    params = structure.get("encoder_params")  # None in a version-1 file
    if params is not None:
        shapes = [[p.name, list(p.get_value(borrow=True).shape)] for p in approx.encoder_params]
        if shapes != params:
            raise AmortizationError(
                f"The rebuilt encoders' weights {shapes} differ from the saved ones {params}."
            )


def _load_weights(approx: AmortizedApproximation, weights_path: Path) -> None:
    """q(θ)'s parameters and the encoders' weights from the archive, in ``_named_copies`` order."""
    targets = _named_copies(approx)
    load_state(targets, weights_path)
    values = iter(t.get_value() for t in targets)
    if approx.globals is not None:
        for param in approx.globals.named_params.values():
            param.set_value(next(values))
    for param in approx.encoder_params:
        param.set_value(next(values))


def _apply_latent(approx: AmortizedApproximation, latent: LocalLatent, saved: dict) -> None:
    """One latent's fitted state: its inputs' scalings, its training envelope and a pooled
    encoder's row-count scaling, all the fitted data's rather than this model's."""
    data = approx.inputs[latent.name]
    unit_scaling = _scaling_from_json(saved["unit_scaling"])
    row_scaling = _scaling_from_json(saved["row_scaling"])
    # The scaling lives in the input's graph (set_scaling) and in its record in approx.inputs.
    if data.units is not None:
        data.units.set_scaling(unit_scaling)
    if data.rows is not None:
        data.rows.set_scaling(row_scaling)
    approx.inputs[latent.name] = data._replace(
        unit_scaling=unit_scaling if data.units is not None else None,
        row_scaling=row_scaling if data.rows is not None else None,
    )
    # The saved envelope, or none (a file written before envelopes were saved).
    envelope = TrainingEnvelope.from_json(saved.get("envelope"))
    if envelope is None:
        approx.envelopes.pop(latent.name, None)
    else:
        approx.envelopes[latent.name] = envelope
    encoder = approx.encoders[latent.name]
    if isinstance(encoder, PooledEncoder):
        encoder.set_count_scaling(
            saved["encoder"]["log_count_center"], saved["encoder"]["log_count_scale"]
        )
        encoder.constant_count = bool(saved["encoder"].get("constant_count", False))


def _apply_saved_state(approx: AmortizedApproximation, structure: dict) -> None:
    """What the rebuild computed from this model's data but belongs to the fit: every latent's
    scalings, envelope and pooled count scaling, and the conditional family's plates."""
    for plate in approx.analysis.plates:
        for latent in plate.latents:
            _apply_latent(approx, latent, structure["latents"][latent.name])
    family = structure.get("family")
    if family is not None:
        # A minibatched fit of crossed plates conditions only its batch plate.
        approx.conditional_plates = frozenset(family["plates"])


def load_approximation(
    path: str | Path,
    *,
    model: pm.Model | None = None,
    local: Mapping[str, object] | None = None,
    unit_data: xr.Dataset | None = None,
) -> AmortizedApproximation:
    """Load an approximation saved by :func:`save_approximation` into ``model``.

    The model must have the same variables (globals of the same shapes, the same local latents on
    the same kind of plate with the same encoder inputs); its data may differ (a model built on
    new units). The saved input scalings (and a pooled encoder's row-count scaling) are kept, so
    the encoders map a given input to the same q(z_n) as before.

    Parameters
    ----------
    path : str or Path
        Base path given to :func:`save_approximation`.
    model : pm.Model, optional
        Taken from the context when omitted.
    local : mapping, optional
        Needed only when the saved fit took an explicit input matrix: the ``local=`` entry of that
        latent for this model's units (``{latent: matrix}``, or an ``IndexedLocal`` with
        ``unit_covariates=matrix``).
    unit_data : xarray.Dataset, optional
        The units of a fit on ``unit_data`` (see :class:`~pymc_amortize.AmortizedVI`), for
        ``model`` written on a few of them: ``encode`` and ``encode_dataset`` then cover every
        unit of the dataset.

    Returns
    -------
    AmortizedApproximation
        Ready for ``encode``, ``sample`` and ``sample_new_units``; its ``hist`` is empty.

    Examples
    --------
    .. code-block:: python

        approx = load_approximation("fit/linear", model=model)
        q_new = approx.encode({"x": np.array([0.3, 4.0])})["z"]
    """
    model = pm.modelcontext(model)
    json_path, weights_path = _paths(path)
    structure = _read_structure(json_path, weights_path)
    approx = _rebuild(structure, model, local, unit_data)
    _check_structure(approx, structure)
    _load_weights(approx, weights_path)
    _apply_saved_state(approx, structure)
    approx.record.settings = {**approx.record.settings, "loaded_from": str(json_path)}
    return approx
