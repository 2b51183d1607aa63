"""Stage configs: checks for their fields, and their mapping to command-line flags.

Every stage has one `@dataclass` config whose fields are declared with `option(default, help)`,
so each field's meaning sits where it is declared. `check_range` / `check_positive` /
`check_choice` are what their `__post_init__` calls, so a bad value stops with a message naming
the field and the allowed range. `add_config_flags` turns the fields into flags (`--kl-coef`, or
`--ppo.kl-coef` with a prefix) whose help text is the field's and whose default is the field's
default; `config_from_args` reads them back.
"""
import argparse
import dataclasses


def check_range(config, name, low=None, high=None, *, low_open=False, high_open=False):
    """Raise ValueError naming `Config.name` unless low ≤ value ≤ high (open ends excluded)."""
    value = getattr(config, name)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "unbounded" if low is None else ("(" if low_open else "[") + f"{low}"
        right = "unbounded" if high is None else f"{high}" + (")" if high_open else "]")
        allowed = f"{left}, {right}".replace("unbounded, ", "(-inf, ").replace(", unbounded", ", inf)")
        raise ValueError(f"{type(config).__name__}.{name} = {value!r} is out of range; allowed: {allowed}")


def check_positive(config, *names):
    """Each named field must be > 0 (integers: ≥ 1)."""
    for name in names:
        check_range(config, name, 0, None, low_open=True)


def check_choice(config, name, choices):
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{type(config).__name__}.{name} = {value!r}; allowed: {', '.join(map(repr, choices))}")


def option(default, help):
    """A config field with its help text: `lr: float = option(1e-3, "peak learning rate (> 0)")`.

    The help is kept in the field's metadata, where `add_config_flags` reads it for `--help`.
    """
    return dataclasses.field(default=default, metadata={"help": help})


def add_config_flags(parser, config_class, prefix="", skip=(), only_given=False):
    """One flag per field: `--field-name` (or `--prefix.field-name`), default and help from the class.

    Use with `argparse.ArgumentDefaultsHelpFormatter` so `--help` shows each default. With
    `only_given`, a flag left out sets nothing (`given_values` then lists just the flags typed),
    so it can override settings that come from elsewhere (the --quick settings, a config file).
    """
    for field in dataclasses.fields(config_class):
        if field.name in skip:
            continue
        flag = "--" + (f"{prefix}." if prefix else "") + field.name.replace("_", "-")
        default = field.default
        help_text = field.metadata.get("help", "") + (f" (default: {default!r})" if only_given else "")
        dest = f"{prefix}.{field.name}" if prefix else field.name
        parser_default = argparse.SUPPRESS if only_given else default
        if isinstance(default, bool):
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=parser_default,
                                help=help_text)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, dest=dest, type=kind, default=parser_default, help=help_text,
                                metavar=field.name.upper())


def given_values(config_class, args, prefix):
    """{field: value} of the `--prefix.field` flags that were given (see `only_given`)."""
    return {field.name: getattr(args, f"{prefix}.{field.name}") for field in dataclasses.fields(config_class)
            if hasattr(args, f"{prefix}.{field.name}")}


def config_from_args(config_class, args, prefix="", **overrides):
    """Build `config_class` from the parsed flags of `add_config_flags` (validation runs here)."""
    values = {}
    for field in dataclasses.fields(config_class):
        dest = f"{prefix}.{field.name}" if prefix else field.name
        if hasattr(args, dest):
            values[field.name] = getattr(args, dest)
    values.update(overrides)
    return config_class(**values)
