"""The package's layout rules, checked on its source: stages import only earlier stages (by any
import form), and every default that the config holds is defined there and nowhere else, the
experiments included.

Tests the imports of every module of `csp_jax` and the defaults of `csp_jax.config`.
"""
import ast
import dataclasses
from pathlib import Path

from csp_jax import config as config_module

PACKAGE = Path(config_module.__file__).parent
EXPERIMENTS = PACKAGE.parent / "experiments"
# The pipeline, earliest first: a module may import its own stage and earlier ones only.
STAGES = ["config", "files", "errors", "progress", "distributed", "geometry", "energy", "models", "sampling", "data",
          "candidates", "training", "evaluation", "pictures", "symmetry", "predict", "pretrained", "benchmark", "cli"]


def stage_of(module: str) -> str:
    """The stage of `csp_jax.<stage>[.<...>]` (a module at the top is a stage of its own)."""
    return module.split(".")[1]


def modules(with_experiments: bool = False):
    """(module name, syntax tree) of every module of the package (and of experiments/)."""
    paths = sorted(PACKAGE.rglob("*.py")) + (sorted(EXPERIMENTS.glob("*.py")) if with_experiments else [])
    for path in paths:
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(p for p in parts if p != "__init__"), ast.parse(path.read_text())


def imported_modules(tree) -> list[str]:
    """Every csp_jax module a tree imports: `import csp_jax.x.y`, `from csp_jax.x import y`, and
    `from csp_jax import x` (the module csp_jax.x)."""
    targets = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "csp_jax":
            targets += [f"csp_jax.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets.append(node.module)
    return [t for t in targets if t.startswith("csp_jax.")]


def test_no_stage_imports_a_later_stage():
    later = []
    for name, tree in modules():
        if name == "csp_jax" or stage_of(name) == "configs":
            continue
        own = STAGES.index(stage_of(name))
        for target in imported_modules(tree):
            if stage_of(target) != "configs" and STAGES.index(stage_of(target)) > own:
                later.append(f"{name} imports {target}")
    assert not later, later


def test_every_import_form_is_seen():
    """The import forms the rule above reads, on a made-up module."""
    tree = ast.parse("import csp_jax.cli\nfrom csp_jax import pretrained, models\n"
                     "from csp_jax.predict import predict\nfrom numpy import sort")
    assert imported_modules(tree) == ["csp_jax.cli", "csp_jax.pretrained", "csp_jax.models",
                                      "csp_jax.predict"]


def config_fields() -> set[str]:
    """The field names of every config section."""
    config = config_module.Config()
    return {f.name for section in dataclasses.fields(config) if section.name != "name"
            for f in dataclasses.fields(getattr(config, section.name))}


def test_no_default_of_the_config_is_defined_again():
    """A function parameter or command-line option named like a config field takes its
    default from the config (None, or a reference such as `SamplerConfig.segment_length`),
    never a literal of its own."""
    fields = config_fields()
    assert {"segment_length", "num_samples", "keep_checkpoints", "sigma", "rho0"} <= fields
    literals = []
    for name, tree in modules(with_experiments=True):
        # The benchmarks' workloads (batch, atoms, seeds, capacities, noise) are their own (SPEC §8),
        # not a config's.
        if name in ("csp_jax", "csp_jax.config", "csp_jax.benchmark") or name.startswith("experiments.bench") \
                or stage_of(name) == "configs":
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
                defaults += node.args.kw_defaults
                for arg, default in zip(args, defaults):
                    if (arg.arg in fields and isinstance(default, ast.Constant)
                            and default.value is not None):
                        literals.append(f"{name}.{node.name}({arg.arg}={default.value!r})")
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if node.target.id in fields and isinstance(node.value, ast.Constant) and \
                        node.value.value is not None:
                    literals.append(f"{name}: field {node.target.id} = {node.value.value!r}")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                option = next((a.value for a in node.args if isinstance(a, ast.Constant)
                               and str(a.value).startswith("--")), None)
                dest = option and option.lstrip("-").replace("-", "_")
                for keyword in node.keywords:
                    if keyword.arg == "default" and dest in fields | {"timeout"} and \
                            isinstance(keyword.value, ast.Constant) and keyword.value.value is not None:
                        literals.append(f"{name}: {option} default {keyword.value.value!r}")
    assert not literals, literals


def test_library_defaults_are_the_configs():
    """The references the rule above allows are the config's values."""
    import inspect

    from csp_jax.config import DisplacementConfig, ModelConfig, SamplerConfig, TrainConfig
    from csp_jax.energy.continuousp import EnergyModel
    from csp_jax.evaluation.displacement import displaced_energies
    from csp_jax.sampling.driver import sample, sample_rows
    from csp_jax.models.checkpoint import manager

    def default(fn, arg):
        return inspect.signature(fn).parameters[arg].default

    assert default(sample, "segment_length") == default(sample_rows, "segment_length") == \
        SamplerConfig().segment_length
    assert default(manager, "max_to_keep") == TrainConfig().keep_checkpoints
    assert (default(displaced_energies, "sigma"), default(displaced_energies, "num_draws")) == \
        (DisplacementConfig().sigma, DisplacementConfig().num_draws)
    model = EnergyModel(32, 3, 2)
    assert (model.rho0, model.density_weight) == (ModelConfig().rho0, ModelConfig().density_weight)
