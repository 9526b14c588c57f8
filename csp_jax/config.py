"""Experiment configuration: frozen dataclasses, named configs and overrides.

A config is a `Config` of sections (`model`, `data`, `neighbors`, `sampler`,
`train`, `eval`). Named configs live in `csp_jax/configs/<name>.py`, each with a
`get_config()`. Values are changed only by `override(config, "section.key",
"text")`, which checks that the key exists, parses the text to the field's type
and checks its range (`RANGES`); `Config.from_dict` (a run's config.json) checks
every value the same way.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pkgutil


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # The energy: a name of `csp_jax.energy.registry.ENERGIES` ("continuousp", the paper's CGCNN'
    # energy, sized by the fields below) or an import path "package.module:Class" of a class
    # built with `Class.from_config(model_config)` if it has one, else `Class()`.
    energy: str = "continuousp"
    features: int = 32  # d = d_v = d_e
    num_conv: int = 3
    num_fc: int = 2
    rho0: float = 0.05  # reference density (A^-3)
    density_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "perov_5"
    train_split: str = "train"  # the split that trains
    val_split: str = "val"  # the split that validates ("" = a hold-out of train_split)
    val_holdout: int = 0  # with val_split "": the last N of a fixed shuffle of train_split validate
    max_atoms: int = 35  # cap on atoms of expanded training cells
    train_limit: int = 0  # use only the first N training crystals (0 = all)
    val_limit: int = 0
    # Negatives' cells (SPEC §3): Expand(Reduce(A), j) ("formula", the paper's) or the
    # data cell repeated j times ("cell"), with P(j) = q^(j-1) (1 - q): q = 0 gives j = 1.
    expand_from: str = "formula"
    geometric_q: float = 0.5


@dataclasses.dataclass(frozen=True)
class NeighborConfig:
    max_images: int = 216  # lattice translations tried per atom pair (slots)
    edge_factor: float = 1.5  # pair-edge capacity / mean pair-edge count


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    # The kernel: a name of `csp_jax.sampling.kernel.KERNELS` ("mala", SPEC §3) or an import
    # path "package.module:factory" of a `Kernel` factory.
    kernel: str = "mala"
    num_steps: int = 1000
    step_size_start: float = 0.5
    step_size_end: float = 5e-4
    temperature_start: float = 1.0
    temperature_end: float = 1e-3
    segment_length: int = 100  # steps per jitted segment (overflow checks between)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 128
    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    num_epochs: int = 5
    regularization: float = 0.1  # weight of mean(E_data^2) + mean(E_sample^2)
    checkpoint_every: int = 20  # steps
    max_bad_steps: int = 5  # consecutive non-finite losses before stopping
    keep_checkpoints: int = 3  # newest checkpoints kept (0 = keep all)
    seed: int = 0
    # Negatives run in groups of this many chains of similar size (sorted by size),
    # each padded to the bucket size of its largest cell: few shapes to compile.
    chains_per_group: int = 16
    # Per data crystal, this many copies of it with two sites' species exchanged (0: none),
    # each held at least swap_margin above the crystal's energy by a hinge term of the loss:
    # they teach the energy to rank the true structure below its species swaps (e.g. a
    # perovskite's A and B cations exchanged).
    swap_negatives: int = 0
    swap_margin: float = 0.1
    swap_pairs: str = "any"  # which species exchange: any two, or "cations" (not the anion)
    # Start from this trained model's variables ("": a random init): a shipped model's
    # name, a model folder or a run directory of a model of the same size.
    init_from: str = ""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    dataset: str = ""  # the dataset whose split is tested ("": the model's, data.dataset)
    split: str = "test"
    max_cell_atoms: int = 0  # test only the crystals of at most this many atoms (0: all)
    # Leave out the test crystals whose material_id occurs in these splits: "DATASET/SPLIT"
    # names, comma-separated (e.g. "mp_20_biternary/val", what the mp20 model trained on).
    exclude: str = ""
    num_samples: int = 20
    batch_size: int = 128
    limit: int = 0  # evaluate the first N test crystals of a fixed shuffle (0 = all)
    skip: int = 0  # leave out the first N of that shuffle (with limit L: crystals N+1 to L)
    match_timeout: float = 60.0  # seconds per structure pair
    num_steps: int = 0  # MALA steps of evaluation and prediction chains (0 = sampler.num_steps)
    max_atoms: int = 100  # largest cell `predict` samples
    seed: int = 0  # sampling key of evaluation and prediction: PRNGKey(seed)
    ranking: str = "energy"  # the order of `predict`'s samples: energy | consensus


@dataclasses.dataclass(frozen=True)
class DisplacementConfig:
    split: str = "test"
    sigma: float = 0.1  # Angstrom per Cartesian component (SPEC §6; the authors' code 0.05)
    num_crystals: int = 5
    num_draws: int = 1000
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class RelaxConfig:
    enabled: bool = False  # relax the candidates and rank them by the potential's energy per atom
    # An ASE calculator: a name of `csp_jax.candidates.relax.POTENTIALS` (chgnet, sevennet) or an
    # import path "package.module:factory" of a function returning one.
    potential: str = "chgnet"
    # Which valid samples relax: all, or a representative of each group of matching samples
    # (half the relaxations, a lower top-1: docs/relaxation.md).
    candidates: str = "all"
    fmax: float = 0.1  # eV/A: converged when every force and the cell's stress are below it
    max_steps: int = 150  # FIRE steps per candidate (and per refinement)
    # A second potential (a name or import path, as `potential`; empty: none) that relaxes again the
    # relaxed structures within refine_window meV/atom of the lowest, one per group of matching
    # ones, and ranks them first, by its energy per atom (docs/relaxation.md).
    refine: str = ""
    refine_window: float = 30.0  # meV/atom


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "default"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    neighbors: NeighborConfig = NeighborConfig()
    sampler: SamplerConfig = SamplerConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    displacement: DisplacementConfig = DisplacementConfig()
    relax: RelaxConfig = RelaxConfig()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Inverse of `to_dict`; ValueError naming the first unknown key or bad value."""
        if not isinstance(d, dict):
            raise ValueError(f"a config is a JSON object of sections, not {type(d).__name__}")
        default = cls()
        sections = {}
        d = _moved_keys(d)
        for name, values in d.items():
            if name == "name":
                continue
            if not hasattr(default, name) or not isinstance(values, dict):
                raise ValueError(f"unknown config section {name!r}")
            section = getattr(default, name)
            types = _field_types(section)
            for field, value in values.items():
                if field not in types:
                    raise ValueError(f"unknown config key {name}.{field}")
                if not isinstance(value, types[field]) and not (
                        types[field] is float and type(value) is int):
                    raise ValueError(f"bad value for {name}.{field}: expected "
                                     f"{types[field].__name__}, got {value!r}")
                check_value(f"{name}.{field}", value)
            sections[name] = type(section)(**values)
        return cls(name=d.get("name", default.name), **sections)


# Keys that moved to another section: (old section, key) -> new section.
MOVED = {("sampler", "geometric_q"): "data"}


def _moved_keys(d: dict) -> dict:
    """A config dict written before a key moved, with the key in its section of today."""
    d = {name: dict(values) if isinstance(values, dict) else values for name, values in d.items()}
    for (old, key), new in MOVED.items():
        if isinstance(d.get(old), dict) and key in d[old]:
            d.setdefault(new, {})
            if isinstance(d[new], dict):
                d[new].setdefault(key, d[old].pop(key))
    return d


# Allowed values: (lowest, highest, lowest allowed?); floats must also be finite.
RANGES = {
    "model.features": (1, None, True), "model.num_conv": (1, None, True),
    "model.num_fc": (1, None, True), "model.rho0": (0, None, False),
    "model.density_weight": (0, None, True),
    "data.max_atoms": (1, None, True), "data.train_limit": (0, None, True),
    "data.val_limit": (0, None, True), "data.val_holdout": (0, None, True),
    "data.geometric_q": (0, 1, True),
    "neighbors.max_images": (1, None, True), "neighbors.edge_factor": (0, None, False),
    "sampler.num_steps": (1, None, True), "sampler.step_size_start": (0, None, False),
    "sampler.step_size_end": (0, None, False), "sampler.temperature_start": (0, None, False),
    "sampler.temperature_end": (0, None, False), "sampler.segment_length": (1, None, True),
    "train.batch_size": (1, None, True), "train.learning_rate": (0, None, False),
    "train.b1": (0, 1, True), "train.b2": (0, 1, True), "train.num_epochs": (1, None, True),
    "train.regularization": (0, None, True), "train.checkpoint_every": (1, None, True),
    "train.max_bad_steps": (1, None, True), "train.keep_checkpoints": (0, None, True),
    "train.seed": (0, None, True), "train.chains_per_group": (1, None, True),
    "train.swap_negatives": (0, None, True), "train.swap_margin": (0, None, True),
    "eval.num_samples": (1, None, True), "eval.batch_size": (1, None, True),
    "eval.limit": (0, None, True), "eval.skip": (0, None, True), "eval.match_timeout": (0, None, False),
    "eval.num_steps": (0, None, True), "eval.max_atoms": (1, None, True),
    "eval.seed": (0, None, True), "eval.max_cell_atoms": (0, None, True),
    "displacement.sigma": (0, None, False), "displacement.num_crystals": (1, None, True),
    "displacement.num_draws": (1, None, True), "displacement.seed": (0, None, True),
    "relax.fmax": (0, None, False), "relax.max_steps": (1, None, True),
    "relax.refine_window": (0, None, True),
}
# Allowed words of string keys.
CHOICES = {"data.expand_from": ("formula", "cell"),
           "eval.ranking": ("energy", "consensus"),  # csp_jax.candidates.ranking
           "train.swap_pairs": ("any", "cations"),  # csp_jax.data.species.swapped_sites
           "relax.candidates": ("all", "representatives")}


def check_range(name: str, value, low, high=None, low_ok: bool = True) -> None:
    """ValueError (one line) unless `value` is finite and in [low, high) (or (low, high))."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"bad value for {name}: {value} is not finite")
    if value < low or (value == low and not low_ok) or (high is not None and value >= high):
        bound = f"at least {low}" if low_ok else f"above {low}"
        bound += f" and below {high}" if high is not None else ""
        raise ValueError(f"bad value for {name}: must be {bound}, got {value}")


def check_value(key: str, value) -> None:
    """ValueError (one line) when `value` is outside the range of config key `key`."""
    if key in RANGES:
        low, high, low_ok = RANGES[key]
        check_range(key, value, low, high, low_ok)
    elif key in CHOICES:
        if value not in CHOICES[key]:
            raise ValueError(f"bad value for {key}: choose from {', '.join(CHOICES[key])}, got {value!r}")
    elif isinstance(value, float):
        check_range(key, value, -math.inf)


def _field_types(section) -> dict[str, type]:
    return {f.name: type(getattr(section, f.name)) for f in dataclasses.fields(section)}


def lookup(key: str, name: str, registry: dict):
    """What config key `key` names: `registry[name]`, or the object an import path
    "package.module:attribute" names (a class or function outside the package).

    Raises ValueError (one line) listing the registry's names for an unknown name,
    and naming the module or attribute for an import path that does not resolve.
    """
    if name in registry:
        return registry[name]
    module_name, sep, attribute = name.partition(":")
    if not sep:
        raise ValueError(f"unknown {key} {name!r}; choose from {', '.join(registry)} "
                         f"or give an import path package.module:Name")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except ImportError as err:
        raise ValueError(f"{key}={name!r}: cannot import {module_name} ({err})") from None
    except AttributeError:
        raise ValueError(f"{key}={name!r}: {module_name} has no {attribute!r}") from None


def available_configs() -> list[str]:
    from csp_jax import configs

    return sorted(m.name for m in pkgutil.iter_modules(configs.__path__))


def get_config(name: str) -> Config:
    """The named config (`perov5`, `mp20`, `mpts52`, `perov5_quick`, `test`)."""
    names = available_configs()
    if name not in names:
        raise ValueError(f"unknown config {name!r}; choose from {', '.join(names)}")
    return importlib.import_module(f"csp_jax.configs.{name}").get_config()


def _parse(text: str, kind: type):
    if kind is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    return kind(text)


def with_sets(config: Config, items) -> Config:
    """`config` with command-line items "section.key=value" applied in order (`override`)."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        config = override(config, key, value)
    return config


def updated(config: Config, values: dict) -> Config:
    """A copy of `config` with `{"section.field": value}` set (typed values, checked as
    `override` checks text): how library callers choose options."""
    for key, value in values.items():
        config = override(config, key, value if isinstance(value, str) else json.dumps(value))
    return config


def override(config: Config, key: str, text: str) -> Config:
    """A copy of `config` with `section.field` set from `text` (parsed to its type)."""
    parts = key.split(".")
    if len(parts) != 2:
        raise ValueError(f"override key {key!r} must look like section.field")
    section_name, field = parts
    sections = {f.name for f in dataclasses.fields(config)} - {"name"}
    if section_name not in sections:
        raise ValueError(f"unknown config section {section_name!r} in {key!r}; "
                         f"sections: {', '.join(sorted(sections))}")
    section = getattr(config, section_name)
    types = _field_types(section)
    if field not in types:
        raise ValueError(f"unknown config key {key!r}; {section_name} has: {', '.join(types)}")
    try:
        value = _parse(text, types[field])
    except ValueError as err:
        raise ValueError(f"bad value for {key}: {err}") from None
    check_value(key, value)
    return dataclasses.replace(config, **{section_name: dataclasses.replace(section, **{field: value})})
