"""Command-line option text into library values: a size target, a recipe (from the method options,
--option, --override, or a recipe file), fold ratios. Bad text is a Big2SmallError naming the option.

Torch loads only when a recipe is built, not when this module is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from big2small.errors import Big2SmallError
from big2small.specs import TARGET_OVER, parse_method_spec, parse_value

if TYPE_CHECKING:
    from big2small.recipe import Recipe


def target_bpw(bpw: float | None, ratio: float | None, size_mb: float | None = None) -> float | None:
    """Bits per weight asked for, by --bpw or as --ratio against fp32 (32 / ratio); None: no target
    (or --size-mb, which the caller turns into bits per weight once the model is loaded)."""
    if sum(x is not None for x in (bpw, ratio, size_mb)) > 1:
        raise Big2SmallError("give only one of --bpw, --ratio and --size-mb")
    if size_mb is not None and not size_mb > 0:
        raise Big2SmallError(f"--size-mb must be a positive number, got {size_mb}")
    if ratio is None:
        return bpw
    if not ratio > 1:
        raise Big2SmallError(f"--ratio must be > 1 (compression against fp32), got {ratio}")
    return 32.0 / ratio


def target_over(over: str | None, size_mb: float | None) -> str | None:
    """--bpw-over: what the size target counts (None: the recipe's own choice, else "model")."""
    if over is not None and over not in TARGET_OVER:
        raise Big2SmallError(f"--bpw-over must be one of {', '.join(TARGET_OVER)}, got {over!r}")
    if over == "compressed" and size_mb is not None:
        raise Big2SmallError("--size-mb is the whole artifact's size: give --bpw with --bpw-over compressed")
    return over


def extra_options(items: list[str]) -> dict[str, Any]:
    """--option KEY=VALUE items as method options (dashes in keys become underscores)."""
    options = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise Big2SmallError(f"bad --option {item!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = parse_value(value.strip())
    return options


def recipe_from_options(method: str | None, *, bpw: float | None, bits: float | None, override: list[str],
                        method_options: dict[str, Any], option: list[str], **recipe_options: Any) -> Recipe:
    """The recipe the command line describes: `method` with its options (--bits, bits per weight,
    turned into the method's own option; the other named ones; then --option items), --override
    items (PATTERN=METHOD:k=v,... or PATTERN=keep), and `recipe_options` for make_recipe
    (include_embeddings, min_numel, raw_dtype, seed)."""
    from big2small.compress import make_recipe
    from big2small.generators import REGISTRY, GeneratorConfig

    overrides = []
    for item in override:
        pattern, eq, spec = item.partition("=")
        if not eq or not pattern:
            raise Big2SmallError(f"bad --override {item!r}: expected PATTERN=METHOD:k=v or PATTERN=keep")
        if spec == "keep":
            overrides.append((pattern, None))
        else:
            name, opts = parse_method_spec(spec)
            overrides.append((pattern, GeneratorConfig.from_dict({"method": name, **opts})))
    options = {**{k: v for k, v in method_options.items() if v is not None}, **extra_options(option)}
    if method is None and (options or bits is not None):
        raise Big2SmallError("--bits and a method's options need --method (a size target alone chooses codecs per tensor)")
    if bits is not None and method in REGISTRY:  # an unknown method is refused by make_recipe
        for key, value in REGISTRY[method].config_type.options_for_bits(bits, options).items():
            if key in options:
                raise Big2SmallError(f"give --bits (bits per weight) or -O {key}={options[key]} ({method}'s own option), not both")
            options[key] = value
    return make_recipe(method, bpw=bpw, overrides=overrides, **recipe_options, **options)


# --distill's default learning rates: fold trains the folded weights; compress trains the log-gains
# of the codec's scales (a relative step: 5e-3 moves a scale by at most about 0.5% per step), or
# the INR's parameters.
WEIGHT_LR = 5e-5
SCALE_LR = 5e-3
# The INR trains its SIRENs' parameters themselves (an absolute step, as its fit's lr: 1e-3 to 1e-5).
INR_LR = 1e-4


def codec_lr(method: str | None) -> float:
    """compress --distill's default learning rate for `method`'s codec."""
    return INR_LR if method == "inr" else SCALE_LR


def distill_config(steps: int, *, option: str = "--distill", always: bool = False, **options: Any) -> Any:
    """The DistillConfig of `option` STEPS (--distill, or the distill command's --steps) and the
    --distill-* options; None when STEPS is 0 (no distillation) unless `always`. Options a user
    left at None (no time budget) keep the config's defaults."""
    if steps < 0:
        raise Big2SmallError(f"{option} must be a number of steps >= 0, got {steps}")
    if steps == 0 and not always:
        return None
    from big2small.distill import DistillConfig

    samples = options["samples"]
    config = DistillConfig(steps=steps, held_out=min(8, max(0, samples - 1)),
                           **{k: v for k, v in options.items() if v is not None})
    config.validate()
    return config


def recipe_from_file(path: Path) -> Recipe:
    """The recipe in the JSON file at `path` (as Recipe.to_dict writes it)."""
    from big2small.recipe import Recipe

    if not path.is_file():
        raise Big2SmallError(f"{path}: no such recipe file")
    try:
        return Recipe.from_json(path.read_text())
    except Big2SmallError as exc:
        raise Big2SmallError(f"{path}: not a valid recipe ({exc})") from None


def then_recipe(then: str | None, raw_dtype: str) -> Recipe | None:
    """fold --then METHOD:k=v,...: the recipe that compresses the folded tensors (None: stored raw)."""
    if then is None:
        return None
    from big2small.compress import make_recipe

    name, opts = parse_method_spec(then)
    return make_recipe(name, raw_dtype=raw_dtype, **opts)


def byte_size(text: str) -> int:
    """A size such as 2GB, 500MB, 1.5GiB or 1000000 (bytes) as a number of bytes (specs.byte_size)."""
    from big2small.specs import byte_size as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise Big2SmallError(str(exc)) from None


def group_ratios(items: list[str]) -> dict[str, float]:
    """fold --group-ratio PATTERN=R items: fold ratio by group-name pattern."""
    ratios = {}
    for item in items:
        pattern, eq, value = item.rpartition("=")
        try:
            ratio = float(value)
        except ValueError:
            ratio = None
        if not eq or not pattern or ratio is None:
            raise Big2SmallError(f"bad --group-ratio {item!r}: expected PATTERN=R")
        ratios[pattern] = ratio
    return ratios
