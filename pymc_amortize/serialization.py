"""Save a fitted amortized approximation and load it back into the same model.

The weights (encoder parameters and the globals' mean and rho) go to a ``.safetensors`` archive
through pytensor-ml's ``save_state``/``load_state``; the structure needed to rebuild the encoders
(local latents and their inputs, widths, activation, input scaling) goes to a small JSON file beside
it. Loading rebuilds an :class:`~pymc_amortize.AmortizedVI` on the model with the same options and
fills in the values, so new units are encoded without refitting.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pymc as pm
import pytensor
from pytensor_ml.checkpoint import load_state, save_state

from pymc_amortize.approximation import AmortizedApproximation
from pymc_amortize.errors import AmortizationError

__all__ = ["load_approximation", "save_approximation"]

FORMAT_VERSION = 1


def _paths(path: str | Path) -> tuple[Path, Path]:
    base = Path(path)
    if base.suffix in (".json", ".safetensors"):
        base = base.with_suffix("")
    return base.with_suffix(".json"), base.with_suffix(".safetensors")


def _named_copies(approx: AmortizedApproximation) -> list:
    """Detached copies of every parameter under unique archive names."""
    copies = []
    if approx.global_group is not None:
        for key in ("mu", "rho"):
            value = approx.global_group.params_dict[key].get_value()
            copies.append(pytensor.shared(value, name=f"global/{key}"))
    for i, param in enumerate(approx.encoder_params):
        copies.append(pytensor.shared(param.get_value(), name=f"encoder/{i}/{param.name}"))
    return copies


def save_approximation(approx: AmortizedApproximation, path: str | Path) -> tuple[Path, Path]:
    """Save a fitted amortized approximation: ``path.json`` (structure) and ``path.safetensors``.

    Only approximations with the built-in MLP encoders can be saved (a user's encoder is arbitrary
    code; save its weights yourself).

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

        save_approximation(approx, "fit/linear")
        approx2 = load_approximation("fit/linear", model=model)
        approx2.encode({"x": x_new})
    """
    options = approx.settings
    if not options or options.get("user_encoders"):
        raise AmortizationError(
            "Only approximations with the built-in MLP encoders can be saved; this one uses a "
            "user encoder. Save its weights with pytensor_ml.save_state instead."
        )
    json_path, weights_path = _paths(path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    structure = {
        "format_version": FORMAT_VERSION,
        "options": {
            key: options[key] for key in ("encoder_widths", "activation", "standardize_inputs")
        },
        "latents": {
            latent.name: {
                "input_names": list(latent.input_names),
                "explicit_input": latent.input_matrix is not None,
                "center": approx.input_scaling[latent.name].center.tolist(),
                "scale": approx.input_scaling[latent.name].scale.tolist(),
            }
            for latent in approx.plate.latents
        },
        "globals": (
            {name: list(shape) for name, _, shape, _ in approx.global_group.ordering.values()}
            if approx.global_group is not None
            else {}
        ),
    }
    json_path.write_text(json.dumps(structure, indent=2))
    save_state(_named_copies(approx), weights_path)
    return json_path, weights_path


def load_approximation(
    path: str | Path,
    *,
    model: pm.Model | None = None,
    local: dict | None = None,
) -> AmortizedApproximation:
    """Load an approximation saved by :func:`save_approximation` into ``model``.

    The model must have the same variables (globals of the same shapes, the same local latents); its
    data may differ (a model built on new units). The saved input scaling is kept, so the encoder
    maps a given input to the same q(z_n) as before.

    Parameters
    ----------
    path : str or Path
        Base path given to :func:`save_approximation`.
    model : pm.Model, optional
        Taken from the context when omitted.
    local : mapping, optional
        Needed only when the saved fit took an explicit (N, k) input matrix: ``{latent: matrix}``
        for this model's units.

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
    from pymc_amortize.approximation import InputScaling
    from pymc_amortize.inference import AmortizedVI

    model = pm.modelcontext(model)
    json_path, weights_path = _paths(path)
    if not json_path.exists() or not weights_path.exists():
        raise AmortizationError(f"No saved approximation at {json_path} and {weights_path}.")
    structure = json.loads(json_path.read_text())
    if structure.get("format_version") != FORMAT_VERSION:
        raise AmortizationError(
            f"{json_path} has format version {structure.get('format_version')!r}; this version of "
            f"pymc_amortize reads version {FORMAT_VERSION}."
        )
    spec = dict(local or {})
    for name, latent in structure["latents"].items():
        if name in spec:
            continue
        if latent["explicit_input"]:
            raise AmortizationError(
                f"'{name}' was fitted on an explicit input matrix; pass local={{'{name}': matrix}} "
                "for this model's units."
            )
        spec[name] = latent["input_names"]
    options = structure["options"]
    approx = AmortizedVI(
        spec,
        model=model,
        encoder_widths=tuple(options["encoder_widths"]),
        activation=options["activation"],
        standardize_inputs=options["standardize_inputs"],
    ).approx
    saved_globals = structure["globals"]
    have_globals = (
        {name: list(shape) for name, _, shape, _ in approx.global_group.ordering.values()}
        if approx.global_group is not None
        else {}
    )
    if have_globals != saved_globals:
        raise AmortizationError(
            f"The model's globals {have_globals} differ from the saved ones {saved_globals}."
        )
    targets = _named_copies(approx)
    load_state(targets, weights_path)
    values = iter(t.get_value() for t in targets)
    if approx.global_group is not None:
        for key in ("mu", "rho"):
            approx.global_group.params_dict[key].set_value(next(values))
    for param in approx.encoder_params:
        param.set_value(next(values))
    for latent in approx.plate.latents:
        saved = structure["latents"][latent.name]
        old = approx.input_scaling[latent.name]
        raw = approx.encoder_inputs[latent.name].get_value() * old.scale + old.center
        scaling = InputScaling(np.asarray(saved["center"]), np.asarray(saved["scale"]))
        approx.input_scaling[latent.name] = scaling
        approx.encoder_inputs[latent.name].set_value(
            scaling.apply(raw).astype(pytensor.config.floatX)
        )
    return approx
