"""Compiled engines: target profiles (`profile`), builds with manifests, parity
gates and a cache (`build`), and runtimes that implement the generation stage
ports and the Predictor backend (`runtime`).

    rv2.engines.load("engines/demo").stages()     # a StageSet for generate_dataset
"""
from __future__ import annotations


def __getattr__(name):  # lazy: importing rv2.engines loads no torch
    if name == "load":
        from rv2.engines.runtime import load

        return load
    raise AttributeError(name)


__all__ = ["load"]
