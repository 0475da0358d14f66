"""The typed shape of the whole config: every key, its type and its range, checked before anything is written.

Both commands compose conf/ with Hydra and pass the plain dict to `check_config` (through
`sweep.cli.load_config`): a wrong type, a value out of range or an unknown key becomes one
`ConfigError` line naming the key, before any study, run, directory or file exists.

Why pydantic (strict mode, over TypedDicts) and not Hydra structured configs: ranges and patterns
are part of a field's type (`Field(gt=0)`, `Literal`); strict mode refuses `optimizer.lr=true` and
`search.multi_objective=maybe` where OmegaConf would convert or accept them; each error carries its
key path, so it becomes one line; and the config stays the plain dict every module already reads,
composed by Hydra exactly as before. Config groups whose options differ per choice (model, data,
lr_split, schedule, search/pruner) are open here: `Registry.build` checks their options against the
chosen builder's signature and annotations.

Adding a config key (everyone who adds one does this):
1. Put it, with a comment, in the yaml file under conf/ that holds its section.
2. Add one typed field to that section's class below, using the constrained types where they fit:
       class Train(TypedDict):
           ...
           threads: PositiveInt | None
   A key the yaml always has is a plain field (missing = error); one that may be absent is
   `NotRequired[...]`. A new section is a new `@section` TypedDict and a field of that type in `RunConfig`
   (or in `ReportConfig` for settings only `python -m sweep.report` reads).
tests/test_schema.py composes every config group's every choice through this schema, so a key
in conf/ that is not declared here fails CI.

This module imports only pydantic: a mistake must answer in well under two seconds.
"""

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Discriminator, Field, Tag, TypeAdapter, \
    ValidationError, with_config
from typing_extensions import NotRequired, TypeAliasType, TypedDict

from sweep.errors import ConfigError, unknown_key

section = with_config(ConfigDict(strict=True, extra="forbid"))
"""A closed section: exactly its declared keys, of exactly their types (no `true` for a number)."""
open_section = with_config(ConfigDict(strict=True, extra="allow"))
"""A config group's entry: its `name` is checked here, its options by the builder's signature."""

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, lt=2 ** 32)]  # what numpy and scikit-learn accept as a seed
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Number = Annotated[float, Field(allow_inf_nan=False)]
UnitInterval = Annotated[float, Field(ge=0, lt=1)]  # momentum, Adam's betas: [0, 1)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100 characters"
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def name_text(value: Any) -> str:
    """A name as the user typed it: Hydra reads `experiment=2024` as a number, which is still a name."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def plain_name(value: str) -> str:
    """An experiment name is part of file and directory names (checkpoints, reports), so it cannot hold a path."""
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"a name holds only {NAME_RULE}")
    return value


ExperimentName = Annotated[str, BeforeValidator(name_text), AfterValidator(plain_name)]


def device_name(value: str) -> str:
    if not DEVICE_PATTERN.fullmatch(value):
        raise ValueError("choose one of auto, cpu, cuda, cuda:N, mps")
    return value


Device = Annotated[str, AfterValidator(device_name)]


@open_section
class Choice(TypedDict):
    name: str


@section
class Optimizer(TypedDict):
    name: str
    lr: PositiveFloat
    weight_decay: NotRequired[NonNegativeFloat]
    momentum: NotRequired[UnitInterval]
    nesterov: NotRequired[bool]
    betas: NotRequired[Annotated[list[UnitInterval], Field(min_length=2, max_length=2)]]
    no_decay_bias_norm: NotRequired[bool]


@section
class Selection(TypedDict, total=False):
    """What is frozen: the union of the given selectors."""

    depth: NonNegativeInt | None
    names: list[str] | str
    indices: list[int] | int
    regex: str | None


@section
class Freeze(Selection):
    norm_policy: Literal["train", "eval"]


@section
class Phase(TypedDict):
    epochs: PositiveInt
    freeze: NotRequired[Selection]
    lr_scale: NotRequired[PositiveFloat]


@section
class GradualUnfreezing(TypedDict, total=False):
    epochs_per_block: PositiveInt
    lr_scale: PositiveFloat


@section
class Train(TypedDict):
    epochs: PositiveInt
    batch_size: PositiveInt
    grad_clip_norm: PositiveFloat | None
    threads: PositiveInt | None
    checkpoint_every_s: NonNegativeFloat


@section
class Cache(TypedDict):
    max_bytes: NonNegativeInt


@section
class Tracking(TypedDict):
    uri: str | None
    system_metrics: bool
    log_model: Literal["none", "best"]
    write_every_s: NonNegativeFloat


def dimension_bounds(dimension: "Dimension") -> "Dimension":
    low, high = dimension["low"], dimension["high"]
    if dimension["type"] == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise ValueError(f"type int needs whole-number bounds; got low={low}, high={high}")
    if not low < high:
        raise ValueError(f"needs low < high; got low={low:g}, high={high:g}")
    if dimension.get("log") and low <= 0:
        raise ValueError(f"log=true needs low > 0; got low={low:g}")
    return dimension


@section
class Dimension(TypedDict):
    """One searched hyperparameter, e.g. `search.space.optimizer.lr: {type: float, low: 0.005, high: 0.2}`."""

    type: Literal["float", "int"]
    low: int | Number  # int first: a whole number stays one, as `type: int` needs
    high: int | Number
    log: NotRequired[bool]


def _space_node_kind(node: Any) -> str:
    return "dimension" if isinstance(node, Mapping) and "type" in node else "subtree"


SpaceNode = TypeAliasType("SpaceNode", Annotated[
    Annotated[Dimension, AfterValidator(dimension_bounds), Tag("dimension")]
    | Annotated[dict[str, "SpaceNode"], Tag("subtree")],
    Discriminator(_space_node_kind),
])
"""`search.space` nests dimensions by config path, so `search.space.optimizer.lr.high=0.5` is an ordinary override."""


def dimensions(space: Mapping[str, Any] | None, prefix: str = "") -> dict[str, dict[str, Any]]:
    """`search.space` nested by config path -> {dotted path: its dimension}; `optimizer: {lr: ...}` is optimizer.lr."""
    found = {}
    for key, node in (space or {}).items():
        path = f"{prefix}{key}"
        if _space_node_kind(node) == "dimension":
            found[path] = dict(node)
        else:
            found.update(dimensions(node, f"{path}."))
    return found


UNNAMEABLE = re.compile(r"['\"/\x00-\x1f]")
"""What a grid value cannot hold: it names studies (checkpoint folders) and is quoted in MLflow's filters."""


def freeze_axes(grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """`search.grid` varies freeze keys only, every value of the type `Freeze` gives its key (sweep.grid)."""
    fields = get_type_hints(Freeze, include_extras=True)
    for key, values in grid.items():
        field = key.removeprefix("freeze.")
        if not key.startswith("freeze.") or field not in fields:
            raise ValueError(f"{key!r} is not a freeze key a grid can vary; choose among: "
                             f"{', '.join(f'freeze.{name}' for name in fields)}")
        for value in values:
            try:
                TypeAdapter(fields[field], config=ConfigDict(strict=True)).validate_python(value)
            except ValidationError as err:
                raise ValueError(f"point {explain(err, {'freeze': {field: value}}, ('freeze', field))}") from None
            if any(UNNAMEABLE.search(text) for text in (value if isinstance(value, list) else [value])
                   if isinstance(text, str)):
                raise ValueError(f"point {key}={value}: a grid value is part of study, folder and MLflow names, so it "
                                 "cannot hold a quote or a '/'; use another regex or the block names")
    return grid


Grid = Annotated[dict[str, Annotated[list[Any], Field(min_length=1)]], AfterValidator(freeze_axes)]
"""`search.grid='{freeze.depth:[0,1,2,3,4]}'`: freeze keys, each with a list of the values it takes."""


@section
class Search(TypedDict):
    n_trials: PositiveInt
    max_failures: PositiveInt
    sampler_seed: Seed
    storage: str | None
    multi_objective: bool
    pruner: Choice
    space: dict[str, SpaceNode] | None
    repeats: PositiveInt
    repeat_seed_offset: NonNegativeInt
    grid: Grid | None


@section
class Timing(TypedDict):
    rounds: NonNegativeInt
    steps: PositiveInt
    warmup_rounds: NonNegativeInt


@section
class RunConfig(TypedDict):
    """`python -m sweep.run`: conf/config.yaml and its groups."""

    experiment: ExperimentName
    seed: Seed
    results_dir: Annotated[str, Field(min_length=1)]
    device: Device
    model: Choice
    data: Choice
    optimizer: Optimizer
    lr_split: Choice
    schedule: Choice
    strategy: NotRequired[Choice]
    freeze: Freeze
    phases: list[Phase] | None
    gradual_unfreezing: bool | GradualUnfreezing | None
    train: Train
    cache: Cache
    search: Search
    timing: Timing
    tracking: Tracking
    executor: Choice


@section
class Report(TypedDict):
    experiments: list[ExperimentName] | ExperimentName | None
    out_dir: Annotated[str, Field(min_length=1)] | None


@section
class ReportConfig(RunConfig):
    """`python -m sweep.report`: conf/report.yaml, the run's config plus where the report goes."""

    report: Report


SCHEMAS = {"config": TypeAdapter(RunConfig), "report": TypeAdapter(ReportConfig)}  # by primary config name


def check_config(cfg: dict[str, Any], config_name: str) -> None:
    """Raise `ConfigError` with one line for the first key of `cfg` that breaks the schema of `config_name`."""
    try:
        SCHEMAS[config_name].validate_python(cfg)
    except ValidationError as err:
        raise ConfigError(explain(err, cfg)) from None


def explain(err: ValidationError, cfg: Mapping[str, Any], at: tuple[str, ...] = ()) -> str:
    """The first error as one line: the key as the user writes it, the value, and what it must be instead
    (`at`: where in `cfg` the validated value sits, when it was validated alone)."""
    errors = [(config_path((*at, *e["loc"]), cfg), e) for e in err.errors()]
    path, first = max(errors, key=lambda error: len(error[0]))  # the deepest: the union member the input was meant as
    key = ".".join(map(str, path))
    if first["type"] == "extra_forbidden":
        unknown = {p[-1] for p, e in errors if e["type"] == "extra_forbidden" and p[:-1] == path[:-1]}
        return str(unknown_key(key, [str(k) for k in lookup(cfg, path[:-1]) if k not in unknown]))
    if first["type"] == "missing":  # the key is not in `cfg`, so it is not in `path` either
        key = ".".join(map(str, (*path, first["loc"][-1])))
        return f"config key {key!r} is missing (deleted with ~{key}?); put it back"
    value = first["input"]
    stated = f"{key}={shown(value)}" if not isinstance(value, (Mapping, list)) else key
    if first["type"] == "value_error":  # one of this module's own checks: its message says what to do
        return f"{stated}: {first['ctx']['error']}"
    wants = list(dict.fromkeys(_expectation(e) for p, e in errors if p == path))  # several: a union's members
    if all(want.startswith(MUST_BE) for want in wants):
        return f"{stated} is not valid: {MUST_BE}{' or '.join(want.removeprefix(MUST_BE) for want in wants)}"
    return f"{stated} is not valid: {'; '.join(wants)}"


def config_path(loc: tuple[int | str, ...], cfg: Mapping[str, Any]) -> tuple[int | str, ...]:
    """An error location without pydantic's union-member tags: only the keys and indices `cfg` has."""
    path, node = [], cfg
    for part in loc:
        if isinstance(node, Mapping) and part in node or isinstance(node, list) and isinstance(part, int):
            path.append(part)
            node = node[part] if isinstance(node, Mapping) or part < len(node) else None
        elif not isinstance(node, (Mapping, list)):
            break
    return tuple(path)


def lookup(cfg: Mapping[str, Any], path: tuple[int | str, ...]) -> Any:
    node: Any = cfg
    for part in path:
        node = node[part]
    return node


MUST_BE = "it must be "


def _expectation(error: dict[str, Any]) -> str:
    """Pydantic's message as the end of a sentence: "it must be a valid number", "list should have at least..."."""
    message = error["msg"]
    if message.startswith("Input should be "):
        return MUST_BE + message.removeprefix("Input should be ")
    return message[:1].lower() + message[1:]


def shown(value: Any) -> str:
    """A value the way it is written in an override (`true`, `null`, `abc`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else "''"
    return str(value)
