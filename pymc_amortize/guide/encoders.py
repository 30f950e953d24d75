"""Inference functions f_phi(x_n) -> (mean, log_sd) of q(z_n), built from pytensor-ml layers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.builders import OpFromGraph
from pytensor.compile.rewriting import inline_ofg_node
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.replace import graph_replace
from pytensor.graph.traversal import applys_between, graph_inputs
from pytensor.tensor.random.type import RandomType
from pytensor.tensor.variable import TensorVariable
from pytensor_ml.activations import GELU, LeakyReLU, ReLU, SoftPlus, Tanh
from pytensor_ml.layers import Linear, Sequential
from pytensor_ml.state import NormalInitializer, XavierNormalInitializer, initialize_params

from pymc_amortize.data.scaling import standardization_scale
from pymc_amortize.errors import AmortizationError

__all__ = [
    "Encoder",
    "MLPEncoder",
    "PooledEncoder",
    "PooledEncoderFn",
    "default_encoder_widths",
    "encoder_params",
    "inline_layers",
    "segment_mean",
]

#: An encoder maps a symbolic (B, n_inputs) matrix to the (B, event_size) mean and log-sd of q(z_n).
Encoder = Callable[[TensorVariable], tuple[TensorVariable, TensorVariable]]

#: A pooled encoder maps (rows (R, k), unit of each row (R,), number of units B, unit covariates
#: (B, c) or None) to the (B, event_size) mean and log-sd of q(z_j).
PooledEncoderFn = Callable[
    [TensorVariable, TensorVariable, TensorVariable, TensorVariable | None],
    tuple[TensorVariable, TensorVariable],
]

ACTIVATIONS = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "tanh": Tanh,
    "softplus": SoftPlus,
    "gelu": GELU,
}


def default_encoder_widths(n_units: int | None = None) -> tuple[int, ...]:
    """The hidden widths of the default encoder: one hidden layer of 64, fewer for a small plate.

    The width is at most the number of units rounded up to a power of two (at least 8): one hidden
    layer with as many units as data points can already fit any map on them, so a wider one only
    adds parameters (eight schools gets 66 encoder weights instead of the former default's 2,370).
    The rule comes from ``python -m benchmarks.perf.encoder_sizing``, which fits each candidate
    against ADVI's F-VI optimum on six models (eight schools, factor analysis, logistic and Poisson
    GLMMs, the paper's nonlinear and saw models), and from seed sweeps on factor analysis and a
    Poisson model with a unit covariate:

    * one hidden layer is needed: the affine encoder leaves a gap of ~500 nats on the nonlinear
      model, where widths below 32 fail in some seeds;
    * two hidden layers ((16, 16), (32, 32), the former default) collapsed one latent dimension of
      factor analysis in every seed (a gap of ~156 nats); one layer of 64 in none of 6 seeds, of
      32 in 1 of 6; elsewhere two layers were no better than one;
    * He's initial variance instead of Xavier's fixed the collapse at width 48 but sent the Poisson
      model's fit to a far worse optimum in 2 of 4 seeds, so the layers start from Xavier's;
    * the number of inputs did not change the best width over the inputs measured (1 to 3 unit
      inputs, 17 or 18 for a pooled encoder's ρ); give wide inputs (images) their own widths.

    Parameters
    ----------
    n_units : int, optional
        Units of the plate (no cap when omitted).

    Returns
    -------
    tuple of int
        The hidden widths, e.g. ``(64,)``.
    """
    width = 64
    if n_units is not None:
        width = min(width, max(8, 1 << max(int(n_units) - 1, 0).bit_length()))
    return (width,)


def _activation(activation: str | Callable) -> Callable:
    if callable(activation):
        return activation
    try:
        return ACTIVATIONS[activation]()
    except KeyError:
        raise AmortizationError(
            f"Unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)} or a callable."
        ) from None


def _mlp(name: str, n_in: int, widths: Sequence[int], activation: Callable) -> tuple[Callable, int]:
    layers, width_in = [], n_in
    for i, width in enumerate(widths):
        layers += [Linear(f"{name}_hidden{i}", n_in=width_in, n_out=int(width)), activation]
        width_in = int(width)
    return (Sequential(*layers) if layers else (lambda X: X)), width_in


@dataclass
class MLPEncoder:
    """The paper's encoder: two MLPs, one for the mean and one for the log-sd of q(z_n).

    Each is ``n_inputs -> widths... -> event_size`` with ``activation`` between layers;
    ``widths=()`` is an affine map (the ideal encoder of the linear-Gaussian model).

    Parameters
    ----------
    n_inputs : int
        Width of one unit's encoder input.
    event_size : int
        Size of one unit's latent z_n.
    widths : sequence of int, optional
        Hidden layer widths, shared by both networks; :func:`default_encoder_widths` when
        omitted.
    activation : str or callable
        ``"relu"``, ``"leaky_relu"``, ``"tanh"``, ``"softplus"``, ``"gelu"`` or a pytensor-ml
        activation.
    init_scale : float
        The sd of q(z_n) at the start of the fit. The output layers start with small weights and a
        log-sd bias of ``log(init_scale)``, so every unit starts near N(init_mean, init_scale²), as
        NumPyro's ``AutoNormal`` does; large initial scales make the first steps noisy.
    init_mean : float
        Bias of the mean head at the start (the model's initial point of the latent).
    name : str
        Prefix of the parameter names (kept unique per latent, for checkpoints).
    random_seed : int or Generator, optional
        Seed of the initial weights.
    constant_inputs : sequence of int
        Inputs with one value over the fitted units (standardised to 0 there): their weights in
        the first layer start at 0 and, with a gradient of 0, stay there, so the encoder ignores
        them. Otherwise their random initial weights, never trained, would shift a new unit's
        output arbitrarily when its value differs (all units of a balanced design have the same
        number of rows; a new unit with fewer is then read as one with that number).

    Examples
    --------
    .. code-block:: python

        import pytensor.tensor as pt
        from pymc_amortize import MLPEncoder

        encoder = MLPEncoder(n_inputs=1, event_size=1, widths=(16,), random_seed=0)
        mean, log_sd = encoder(pt.matrix("x"))
    """

    n_inputs: int
    event_size: int
    widths: Sequence[int] | None = None
    activation: str | Callable = "relu"
    init_scale: float = 0.1
    init_mean: float = 0.0
    name: str = "encoder"
    random_seed: int | np.random.Generator | None = None
    constant_inputs: Sequence[int] = ()

    def __post_init__(self):
        if self.widths is None:
            self.widths = default_encoder_widths()
        self.widths = tuple(int(w) for w in self.widths)
        if any(w <= 0 for w in self.widths):
            raise AmortizationError(f"encoder_widths must be positive integers; got {self.widths}.")
        if self.init_scale <= 0:
            raise AmortizationError(f"init_scale must be positive; got {self.init_scale}.")
        act = _activation(self.activation)
        self._mean_trunk, width = _mlp(f"{self.name}_mean", self.n_inputs, self.widths, act)
        self._log_sd_trunk, _ = _mlp(f"{self.name}_log_sd", self.n_inputs, self.widths, act)
        small = NormalInitializer(std=0.01)
        self._mean_head = Linear(
            f"{self.name}_mean_out", n_in=width, n_out=self.event_size, weight_initializer=small
        )
        self._log_sd_head = Linear(
            f"{self.name}_log_sd_out", n_in=width, n_out=self.event_size, weight_initializer=small
        )
        # Redraw every weight from one seed so that a fit is reproducible.
        params = encoder_params(self(pt.matrix("probe", shape=(None, self.n_inputs))), exclude=())
        hidden = XavierNormalInitializer()
        initializers = {p: hidden for p in params if "_hidden" in p.name and p.name.endswith("_W")}
        for param, value in zip(
            params, initialize_params(params, self.random_seed, initializers), strict=True
        ):
            param.set_value(np.asarray(value, dtype=param.dtype))
        # In the weights' own dtype, so that the encoder builds under floatX="float32" too.
        for head, bias in (
            (self._mean_head, self.init_mean),
            (self._log_sd_head, np.log(self.init_scale)),
        ):
            head.b.set_value(np.full(self.event_size, bias, dtype=head.b.dtype))
        self.constant_inputs = tuple(int(j) for j in self.constant_inputs)
        if self.constant_inputs:
            first = "_hidden0_W" if self.widths else "_out_W"
            for param in params:
                if param.name.endswith(first):  # (n_inputs, width): one row per input
                    value = param.get_value()
                    value[list(self.constant_inputs)] = 0.0
                    param.set_value(value)

    def __call__(self, X: TensorVariable) -> tuple[TensorVariable, TensorVariable]:
        mean = self._mean_head(self._mean_trunk(X))
        log_sd = self._log_sd_head(self._log_sd_trunk(X))
        return mean, log_sd


def resolve_user_encoders(
    encoder: Callable | Mapping[str, Callable] | None,
    latent_names: Sequence[str],
    *,
    signature: str,
) -> dict[str, Callable]:
    """The user's ``encoder=`` as ``{latent: encoder}``, checked against the local latents.

    ``signature`` describes what the encoder must map, for the error message.
    """
    if encoder is not None and not isinstance(encoder, Mapping):
        if len(latent_names) != 1:
            raise AmortizationError(
                f"The model has several local latents ({', '.join(latent_names)}); pass "
                "encoder={latent name: encoder}."
            )
        encoder = {latent_names[0]: encoder}
    user = dict(encoder or {})
    if unknown := set(user) - set(latent_names):
        raise AmortizationError(
            f"encoder= names {sorted(unknown)}, which are not local latents "
            f"({', '.join(latent_names)})."
        )
    for name, fn in user.items():
        if not callable(fn):
            raise AmortizationError(f"The encoder of '{name}' must be callable: {signature}.")
    return user


def encoder_params(
    outputs: Sequence[TensorVariable], exclude: Sequence[SharedVariable]
) -> list[SharedVariable]:
    """The trainable shared variables an encoder's outputs depend on.

    pytensor-ml marks its weights as ``TrainableParameter``; an encoder written by hand with plain
    ``pytensor.shared`` weights is supported too, so every float shared variable that is not data
    (``exclude``), a random generator, or marked ``var.tag.trainable = False`` counts.
    """
    excluded = set(exclude)
    params = []
    for var in graph_inputs(outputs):
        if (
            isinstance(var, SharedVariable)
            and var not in excluded
            and not isinstance(var.type, RandomType)
            and var.type.dtype.startswith("float")
            and getattr(var.tag, "trainable", True)
            and var not in params
        ):
            params.append(var)
    return params


def inline_layers(outputs: Sequence[TensorVariable]) -> list[TensorVariable]:
    """Replace every ``OpFromGraph`` (pytensor-ml's layers) in ``outputs`` by its inner graph.

    pytensor-ml's layers are opaque ``OpFromGraph`` nodes, and so are their gradients, which
    compute the pullback to every input (the data included) and fence off elementwise fusion across
    layers. Inlined before differentiation, the step is plain tensor ops that PyTensor fuses and
    prunes: the nonlinear model's full-batch step measured 2.4 ms opaque vs 1.1 ms inlined.
    """
    outputs = list(outputs)
    while True:
        nodes = [
            node
            for node in applys_between(graph_inputs(outputs), outputs)
            if isinstance(node.op, OpFromGraph)
        ]
        if not nodes:
            return outputs
        replace = {}
        for node in nodes:
            replace.update(zip(node.outputs, inline_ofg_node(node), strict=True))
        outputs = graph_replace(outputs, replace, strict=False)


def check_encoder_outputs(name: str, outputs: object, event_size: int) -> tuple:
    """Reject an encoder output that is not a (mean, log_sd) pair of (B, event_size) matrices."""
    if not isinstance(outputs, tuple | list) or len(outputs) != 2:
        raise AmortizationError(
            f"The encoder of '{name}' must return a pair (mean, log_sd); it returned "
            f"{type(outputs).__name__}. For a network with one output of width 2*d, return "
            "tuple(pt.split(out, [d, d], n_splits=2, axis=-1))."
        )
    checked = []
    for label, out in zip(("mean", "log_sd"), outputs, strict=True):
        out = pt.as_tensor(out)
        if out.ndim == 1 and event_size == 1:
            out = out[:, None]
        if out.ndim != 2 or out.type.shape[-1] not in (None, event_size):
            raise AmortizationError(
                f"The encoder of '{name}' returned a {label} of shape {out.type.shape}; it must be "
                f"(batch, {event_size}), one row of {event_size} per unit."
            )
        checked.append(out)
    return tuple(checked)


def segment_mean(
    values: TensorVariable, segment: TensorVariable, n_segments: TensorVariable
) -> tuple[TensorVariable, TensorVariable]:
    """Mean of the rows of ``values`` (R, F) per segment id in 0..n_segments-1, and the counts.

    A scatter-add: O(R·F) work, any number of rows per segment; an empty segment has mean 0.
    """
    sums = pt.inc_subtensor(
        pt.zeros((n_segments, values.shape[1]), dtype=values.dtype)[segment], values
    )
    counts = pt.inc_subtensor(pt.zeros((n_segments,), dtype=values.dtype)[segment], 1.0)
    return sums / pt.maximum(counts, 1.0)[:, None], counts


@dataclass
class PooledEncoder:
    """A DeepSets encoder: q(z_j) from the set of unit j's rows, whatever their number.

    ``h_j = [mean_{i in j} φ(row_i), log(1 + n_j), covariates_j]`` feeds an
    :class:`~pymc_amortize.MLPEncoder` ρ with separate mean and log-sd networks. φ is
    ``n_row_inputs -> row_widths... -> n_features``. The mean is invariant to the order of the rows,
    and the count tells ρ how much the rows weigh against the prior.

    Parameters
    ----------
    n_row_inputs : int
        Width of one row's input.
    event_size : int
        Size of one unit's latent z_j.
    n_unit_covariates : int
        Width of the per-unit covariates (0 for none).
    row_widths : sequence of int
        Hidden widths of φ.
    n_features : int
        Output width of φ (the pooled summary of a unit).
    widths : sequence of int, optional
        Hidden widths of ρ; :func:`default_encoder_widths` when omitted.
    activation : str or callable
        Activation of both networks.
    init_scale, init_mean : float
        sd and mean of every q(z_j) at the start (see :class:`~pymc_amortize.MLPEncoder`).
    log_count_center, log_count_scale : float
        Standardisation of log(1 + n_j) (the fitted units' mean and sd).
    constant_row_inputs, constant_unit_covariates : sequence of int
        Row inputs and unit covariates with one value over the fitted data; with
        ``constant_count`` (every fitted unit has the same number of rows), the encoder starts
        with zero weights on them and ignores them (see :class:`MLPEncoder`).
    constant_count : bool
        Every fitted unit has the same number of rows: ``log_count_center`` is its log(1 + n)
        exactly, the count reads 0 in training, and a new unit's other count is ignored (an
        encoder that saw one count cannot tell how the posterior depends on it).
    name : str
        Prefix of the parameter names.
    random_seed : int or Generator, optional
        Seed of the initial weights.

    Examples
    --------
    .. code-block:: python

        import pytensor.tensor as pt
        from pymc_amortize import PooledEncoder

        encoder = PooledEncoder(n_row_inputs=2, event_size=1, random_seed=0)
        mean, log_sd = encoder(pt.matrix("rows"), pt.lvector("unit_of_row"), pt.lscalar("n"))
    """

    n_row_inputs: int
    event_size: int
    n_unit_covariates: int = 0
    row_widths: Sequence[int] = (32,)
    n_features: int = 16
    widths: Sequence[int] | None = None
    activation: str | Callable = "relu"
    init_scale: float = 0.1
    init_mean: float = 0.0
    log_count_center: float = 0.0
    log_count_scale: float = 1.0
    name: str = "encoder"
    random_seed: int | np.random.Generator | None = None
    constant_row_inputs: Sequence[int] = ()
    constant_unit_covariates: Sequence[int] = ()
    constant_count: bool = False

    def __post_init__(self):
        if self.n_features <= 0 or any(int(w) <= 0 for w in self.row_widths):
            raise AmortizationError(
                f"n_features and row_widths must be positive; got {self.n_features}, "
                f"{self.row_widths}."
            )
        rng = np.random.default_rng(self.random_seed)
        trunk, width = _mlp(
            f"{self.name}_row", self.n_row_inputs, self.row_widths, _activation(self.activation)
        )
        self._row_out = Linear(f"{self.name}_row_out", n_in=width, n_out=self.n_features)
        self._phi = Sequential(trunk, self._row_out) if self.row_widths else self._row_out
        probe = self._phi(pt.matrix("probe", shape=(None, self.n_row_inputs)))
        params = encoder_params([probe], exclude=())
        xavier = XavierNormalInitializer()
        initializers = {p: xavier for p in params if p.name.endswith("_W")}
        for param, value in zip(params, initialize_params(params, rng, initializers), strict=True):
            if param.name.endswith(("_row_hidden0_W", "_row_out_W")) and self.constant_row_inputs:
                first = "_row_hidden0_W" if self.row_widths else "_row_out_W"
                if param.name.endswith(first):
                    value = np.array(value)
                    value[[int(j) for j in self.constant_row_inputs]] = 0.0
            param.set_value(value)
        # Shared, not literals, so that the compiled step does not depend on the data's row
        # counts (NUMBA compiles literals into machine code; see plates.PlateLayout.size).
        self.log_count_scale = float(
            standardization_scale(self.log_count_scale, self.log_count_center)
        )
        self._log_count_standardization = pytensor.shared(
            np.array([self.log_count_center, self.log_count_scale], dtype=pytensor.config.floatX),
            name=f"{self.name}_log_count_standardization",
        )
        self._log_count_standardization.tag.trainable = False
        n_rho_inputs = self.n_features + 1 + self.n_unit_covariates
        if self.widths is None:
            self.widths = default_encoder_widths()
        self.widths = tuple(int(w) for w in self.widths)
        self._rho = MLPEncoder(
            n_inputs=n_rho_inputs,
            event_size=self.event_size,
            widths=self.widths,
            activation=self.activation,
            init_scale=self.init_scale,
            init_mean=self.init_mean,
            name=f"{self.name}_unit",
            random_seed=rng,
            constant_inputs=[self.n_features] * bool(self.constant_count)
            + [self.n_features + 1 + int(j) for j in self.constant_unit_covariates],
        )

    def set_count_scaling(self, center: float, scale: float) -> None:
        """Set the standardisation of log(1 + n_j), e.g. to a saved fit's (graphs built before
        read the new values: they are shared variables)."""
        scale = float(standardization_scale(scale, center))
        self.log_count_center, self.log_count_scale = float(center), scale
        self._log_count_standardization.set_value(
            np.array([center, scale], dtype=self._log_count_standardization.dtype)
        )

    def __call__(
        self,
        rows: TensorVariable,
        unit_of_row: TensorVariable,
        n_units: TensorVariable,
        unit_covariates: TensorVariable | None = None,
    ) -> tuple[TensorVariable, TensorVariable]:
        pooled, counts = segment_mean(self._phi(rows), unit_of_row, n_units)
        center, scale = self._log_count_standardization[0], self._log_count_standardization[1]
        log_count = (pt.log1p(counts) - center) / scale
        parts = [pooled, log_count[:, None]]
        if self.n_unit_covariates:
            if unit_covariates is None:
                raise AmortizationError(
                    f"{self.name} takes {self.n_unit_covariates} unit covariate(s); got none."
                )
            parts.append(unit_covariates)
        return self._rho(pt.concatenate(parts, axis=1))
