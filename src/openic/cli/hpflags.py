"""Command-line flags generated from ``HyperParameters`` fields, so a new hyperparameter needs no CLI edit.

Each field becomes ``--NAME VALUE`` spelled exactly as SageMaker's name (``--num_layers 18 --image_shape 3,28,28``).
Values stay strings and are parsed by ``HyperParameters.from_strings``, so the CLI, JSON files and SageMaker's
``hyperparameters.json`` share one parser and one set of error messages. Every flag defaults to ``None``, so only
the flags given on the command line override values from a file.
"""

from __future__ import annotations

import argparse

from openic.hyperparams import HyperParameters, HyperParameterSpec

_METAVARS = {"int": "N", "float": "X", "bool": "{True,False}", "C,H,W": "C,H,W", "int list": "E1,E2,..."}


def _metavar(spec: HyperParameterSpec) -> str:
    if spec.choices:
        return "{" + ",".join(spec.choices) + "}"
    return _METAVARS.get(spec.kind, "TEXT")


def _help(spec: HyperParameterSpec) -> str:
    text = f"{spec.help} Valid: {spec.expects}. Default: {spec.default_text}."
    return text.replace("%", "%%")  # argparse formats help with %-style placeholders


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--NAME VALUE`` flag per hyperparameter, in a "hyperparameters" group."""
    group = parser.add_argument_group(
        "hyperparameters", "SageMaker's names and string forms; flags override values from a hyperparameters file."
    )
    for spec in HyperParameters.specs():
        group.add_argument(f"--{spec.name}", dest=spec.name, default=None, metavar=_metavar(spec), help=_help(spec))


def from_cli_namespace(ns: argparse.Namespace) -> dict[str, str]:
    """The hyperparameter flags that were given, as SageMaker's string map (ready for ``from_strings``)."""
    return {s.name: getattr(ns, s.name) for s in HyperParameters.specs() if getattr(ns, s.name, None) is not None}


def markdown_table() -> str:
    """The README's hyperparameter table, generated from the schema (``python -m openic.cli.hpflags``)."""
    rows = ["| name | default | valid values | meaning |", "| --- | --- | --- | --- |"]
    for spec in HyperParameters.specs():
        cells = (f"`{spec.name}`", spec.default_text, spec.expects, spec.help)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
