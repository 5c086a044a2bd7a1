"""The ``abdoseg-train`` command line.

    abdoseg-train fit [--train CASES...] [--synthetic ANATOMY...] [--validate CASES...] -o MODEL.safetensors [--workdir RUN] [--resume RUN/checkpoint.pt]
    abdoseg-train fit --stage fine --coarse MODEL.safetensors [--spacing 1.5] [--crop-margin MM] ... -o TWO_STAGE.safetensors
    abdoseg-train evaluate MODEL CASES... [--json OUT.json [--force]]
    abdoseg-train export RUN/checkpoint.pt -o MODEL.safetensors
    abdoseg-train synth ANATOMY... -o FOLDER [--phase arterial] [--count N]

CASES are case folders (case.json + CT + label map) or folders of them. ``fit`` under
``torchrun --nproc_per_node=N`` trains with DistributedDataParallel.

The commands (``commands.py``) import torch, MONAI and VTK, which takes seconds; ``main`` imports them inside
AbdoSeg's handler (``AbdoSegLib.cli.run_guarded``), so that a Ctrl-C meanwhile ends as quietly (one line, exit
130) as a Ctrl-C during the work, and every problem a user can provoke is one sentence with exit code 1.
"""

from __future__ import annotations

import sys

from AbdoSegLib.cli import run_guarded


def main(argv: list[str] | None = None) -> int:
    def run() -> None:
        from .commands import build_parser

        args = build_parser().parse_args(argv)
        args.run(args)

    return run_guarded("abdoseg-train", run)


if __name__ == "__main__":
    sys.exit(main())
