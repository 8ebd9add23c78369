"""Measure fastwrap against the stdlib's ways of sending files, on this machine."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("bench is being written")
