"""Train on a machine that has neither ITK nor the raw data (a lent GPU): pack here, fit there.

    python Training/scripts/device_pack.py pack PACK.npz --train CASES... --synthetic MAPS... [--spacing 3]
    python Training/scripts/device_pack.py fit PACK.npz FIT-OPTIONS...

``pack`` prepares the real cases and loads the anatomy maps on the model grid exactly as
``abdoseg-train fit`` would (``prepare``, ``load_anatomy``), and stores their arrays in one
compressed ``.npz`` (a few MB, where the maps and CT are tens of MB and need SimpleITK to read).

``fit`` runs ``abdoseg-train fit`` with every case and map taken from the pack: FIT-OPTIONS are
the command's own (``-o``, ``--epochs``, ``--init``, ...) without ``--train``, ``--synthetic`` or
``--validate`` (validation needs the CT on its own grid: evaluate the result afterwards with
``abdoseg-train evaluate``). Nothing is read from image files there, so SimpleITK, which the
engine's file readers import, is replaced by an empty stand-in for that run only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
from pathlib import Path

import numpy as np


def pack(out: Path, train: list[Path], synthetic: list[Path], spacing: float) -> None:
    """Write the prepared cases and anatomy maps of ``train`` and ``synthetic`` to ``out``."""
    from abdoseg_train.anatomy import discover_anatomy, load_anatomy
    from abdoseg_train.cases import discover_cases
    from abdoseg_train.config import TrainConfig
    from abdoseg_train.prepared import prepare

    spec = dataclasses.replace(TrainConfig(), spacing_mm=(spacing,) * 3).preprocessing
    arrays, index = {}, {"spacing_mm": spacing, "real": [], "synthetic": []}
    for kind, items, load in (("real", [c for root in train for c in discover_cases(root)], prepare),
                              ("synthetic", [s for root in synthetic for s in discover_anatomy(root)], load_anatomy)):
        for item in items:
            loaded = load(item, spec)
            fields = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded)}
            index[kind].append({"name": loaded.name, "labelled": list(loaded.labelled)})
            for key, value in fields.items():
                if key not in ("name", "labelled"):
                    arrays[f"{kind}/{loaded.name}/{key}"] = np.asarray(value)
            print(f"packed {kind} {loaded.name}", flush=True)
    np.savez_compressed(out, index=np.array(json.dumps(index)), **arrays)


def fit(pack_file: Path, options: list[str]) -> int:
    """``abdoseg-train fit`` on the pack's cases and maps; returns its exit code."""
    sys.modules.setdefault("SimpleITK", _itk_stand_in())
    import torch

    from abdoseg_train import cli, commands
    from abdoseg_train import fit as fit_module
    from abdoseg_train.anatomy import AnatomyCase, AnatomySource
    from abdoseg_train.cases import Case
    from abdoseg_train.prepared import PreparedCase

    stored = np.load(pack_file)
    index = json.loads(str(stored["index"]))

    def fields(kind: str, entry: dict) -> dict:
        prefix = f"{kind}/{entry['name']}/"
        return {key[len(prefix):]: stored[key] for key in stored.files if key.startswith(prefix)}

    real = _PACKED["real"] = {e["name"]: PreparedCase(e["name"], **_tensors(fields("real", e), torch), labelled=tuple(e["labelled"]))
                              for e in index["real"]}
    maps = _PACKED["synthetic"] = {e["name"]: AnatomyCase(e["name"], labelled=tuple(e["labelled"]), **fields("synthetic", e))
                                   for e in index["synthetic"]}
    nowhere = Path("packed")
    commands.discover_cases = lambda root, mapping=None: [Case(name, nowhere, case.labelled) for name, case in real.items()]
    commands.discover_anatomy = lambda path: [AnatomySource(name, nowhere, nowhere, nowhere) for name in maps]
    fit_module.prepare = _packed_case
    fit_module.load_anatomy = _packed_map
    given = ["--train", str(pack_file)] if real else []
    given += ["--synthetic", str(pack_file)] if maps else []
    return cli.main(["fit", *given, "--spacing", str(index["spacing_mm"]), *options])


_PACKED: dict[str, dict] = {}
"""The pack's prepared cases and maps by name; module-level so that forked loader processes find them."""


def _packed_case(case, spec, cache_dir=None):
    """Stands for ``prepared.prepare``."""
    return _PACKED["real"][case.name]


def _packed_map(source, spec, cache_dir=None):
    """Stands for ``anatomy.load_anatomy``."""
    return _PACKED["synthetic"][source.name]


def _tensors(values: dict, torch) -> dict:
    return {key: torch.from_numpy(value) if key in ("image", "labels") else value for key, value in values.items()}


def _itk_stand_in() -> types.ModuleType:
    """An empty SimpleITK: the engine's file readers import it and silence its warnings at import time."""
    stand_in = types.ModuleType("SimpleITK")
    stand_in.ProcessObject = types.SimpleNamespace(SetGlobalWarningDisplay=lambda on: None)
    return stand_in


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packer = commands.add_parser("pack")
    packer.add_argument("out", type=Path)
    packer.add_argument("--train", type=Path, nargs="*", default=[])
    packer.add_argument("--synthetic", type=Path, nargs="*", default=[])
    packer.add_argument("--spacing", type=float, default=3.0)
    fitter = commands.add_parser("fit")
    fitter.add_argument("pack", type=Path)
    args, rest = parser.parse_known_args()
    if args.command == "pack":
        pack(args.out, args.train, args.synthetic, args.spacing)
        return 0
    return fit(args.pack, rest)


if __name__ == "__main__":
    sys.exit(main())
