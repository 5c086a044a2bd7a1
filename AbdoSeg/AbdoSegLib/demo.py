"""``make demo``: segment the bundled sample CT with the bundled model, compare with the reference.

    python -m AbdoSegLib.demo [OUTDIR]     (default: ./out/demo, replaced on each run)
"""

from __future__ import annotations

import sys
from pathlib import Path

from .analysis.metrics import dice_per_organ
from .cli import main as abdoseg
from .io.image_files import read_image
from .model.bundle import read_metadata
from .outputs import LABELS_FILE
from .resources import DEFAULT_BUNDLE, SAMPLE_CASE_ID, SAMPLE_CT, SAMPLE_REFERENCE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    output = Path(argv[0]) if argv else Path("out") / "demo"
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"Segmenting {SAMPLE_CT.name} with {DEFAULT_BUNDLE.name} ...")
    code = abdoseg(["segment", str(SAMPLE_CT), "-o", str(output), "--force"])
    if code:
        return code
    predicted = read_image(output / LABELS_FILE).array
    reference = read_image(SAMPLE_REFERENCE).array
    print(f"\n{'organ':<14}{'Dice vs reference':>18}")
    for organ, value in dice_per_organ(predicted, reference).items():
        print(f"{organ:<14}{'-' if value is None else f'{value:.3f}':>18}")
    trained_on = read_metadata(DEFAULT_BUNDLE).get("training", {}).get("train_cases", [])
    if SAMPLE_CASE_ID in trained_on:
        print(f"\nNote: the sample ({SAMPLE_CASE_ID}) is one of this model's training cases; these figures show "
              "the pipeline works, not how the model does on unseen CT (see the model card).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
