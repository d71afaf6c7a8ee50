"""Placeholder until this subcommand lands (being written now)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # noqa: D103
    return None
