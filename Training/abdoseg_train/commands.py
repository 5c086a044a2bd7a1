"""The commands of ``abdoseg-train`` (usage in ``cli.py``): the parser and one ``run_*(args)`` per command.

This module imports torch, SimpleITK and nibabel; ``cli.main`` imports it inside the command line's handler.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.io.atomic import atomic_path, sigterm_as_interrupt
from AbdoSegLib.io.labelmaps import PRESETS, parse_mapping
from AbdoSegLib.model.bundle import load_bundle
from AbdoSegLib.model.bundle_schema import CONFIG_RANGES, MAX_CROP_MARGIN_MM, SPACING_RANGE_MM
from AbdoSegLib.model.preprocessing import Preprocessing
from AbdoSegLib.model.vnet import VNet
from AbdoSegLib.organs import ORGAN_NAMES

from .anatomy import discover_anatomy, load_anatomy
from .cases import discover_cases
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .evaluation import evaluate, organ_table
from .fit import NO_VALIDATION_NOTE, export, fit
from .synthetic import PHASES, choose_phase
from .synthetic_cases import AnatomyVariation, write_synthetic_case

FINE_SPACING_MM = 1.5  # the second stage's default voxel size (issue 18)


def _triple(text: str) -> tuple[int, int, int]:
    values = [int(v) for v in text.split(",")]
    return tuple(values * 3 if len(values) == 1 else values)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="abdoseg-train", description="Train the AbdoSeg V-Net and export a model bundle.")
    commands = parser.add_subparsers(dest="command", required=True)
    fit_parser = commands.add_parser("fit", help="train on labelled CT and export the best model")
    fit_parser.add_argument("--train", type=Path, nargs="+", default=[], help="case folders or folders of cases")
    fit_parser.add_argument("--synthetic", type=Path, nargs="+", default=[],
                            help="anatomy maps (*_anatomy.nii.gz, or folders of them) to paint synthetic CT from")
    fit_parser.add_argument("--synthetic-fraction", type=float, default=defaults.synthetic_fraction,
                            help="share of synthetic patches when there are real cases too")
    fit_parser.add_argument("--flip-probability", type=float, default=defaults.flip_probability,
                            help="of a left-right mirror with kidney labels swapped")
    fit_parser.add_argument("--field-of-view-probability", type=float, default=defaults.field_of_view_probability,
                            help="of a patch in which the scan ends (an axial plane or a reconstruction circle)")
    fit_parser.add_argument("--negative-fraction", type=float, default=None,
                            help=f"share of patches centred far (> 60 mm) from every organ, from any case (default {defaults.negative_fraction:g}; "
                                 f"0 with --stage fine, whose crops at inference always hold an organ)")
    _add_variation_options(fit_parser, defaults, "synthetic patch")
    fit_parser.add_argument("--validate", type=Path, nargs="*", default=[], help="held-out case folders")
    fit_parser.add_argument("--map", dest="mapping", default=None,
                            help=f"label ids of the data -> AbdoSeg's: a preset ({', '.join(PRESETS)}) or 'theirs:ours,...'")
    fit_parser.add_argument("-o", "--output", type=Path, required=True, help="model bundle to write (.safetensors)")
    fit_parser.add_argument("--epochs", type=int, default=defaults.epochs)
    fit_parser.add_argument("--iterations-per-epoch", type=int, default=defaults.iterations_per_epoch)
    fit_parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    fit_parser.add_argument("--patch", type=_triple, default=defaults.patch, help="training patch, e.g. 80 or 96,96,64")
    fit_parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="Adam learning rate")
    fit_parser.add_argument("--width", type=int, default=defaults.width, help="channels of the first V-Net stage")
    fit_parser.add_argument("--spacing", type=float, default=None,
                            help=f"model voxel size in mm (isotropic; default {defaults.spacing_mm[0]:g}, {FINE_SPACING_MM:g} for --stage fine)")
    fit_parser.add_argument("--stage", choices=("coarse", "fine"), default=defaults.stage,
                            help="coarse: a single-stage model; fine: a second stage that refines each organ of --coarse in a crop around it")
    fit_parser.add_argument("--coarse", type=Path, default=None,
                            help="with --stage fine: the bundle whose first stage to refine (a two-stage bundle's second stage is replaced); "
                                 "the output holds both stages")
    fit_parser.add_argument("--crop-margin", type=float, default=defaults.crop_margin_mm,
                            help="with --stage fine: mm around the first stage's organ in the crop (drawn from 0.5x to 1.5x in training)")
    fit_parser.add_argument("--fine-organs", nargs="+", choices=ORGAN_NAMES, default=None,
                            help="with --stage fine: the organs it refines (default: all four); its crops surround only them")
    fit_parser.add_argument("--localisation-error", type=float, default=defaults.localisation_error_mm,
                            help="with --stage fine: SD in mm of the first stage's error at each face of an organ's box")
    fit_parser.add_argument("--coarse-channel", action="store_true",
                            help="with --stage fine: the network also reads the first stage's probability of the organ "
                                 "(simulated from the reference in training; no --validate)")
    fit_parser.add_argument("--prior-sinus-probability", type=float, default=defaults.prior_sinus_probability,
                            help="with --coarse-channel: of a kidney's simulated first-stage probability covering its renal "
                                 "sinus, as a first stage draws it, for the network to take out where the CT shows no kidney")
    fit_parser.add_argument("--validate-every", type=int, default=defaults.validate_every, help="epochs between validations")
    fit_parser.add_argument("--keep", choices=("best", "last"), default=defaults.keep,
                            help="export the epoch best on validation, or the last one (validated, not selected)")
    fit_parser.add_argument("--seed", type=int, default=defaults.seed)
    fit_parser.add_argument("--device", default=defaults.device)
    fit_parser.add_argument("--workers", type=int, default=defaults.workers,
                            help="processes that prepare cases and paint and augment patches while the network trains "
                                 "(0: the training process; on a GPU, about the number of CPU cores)")
    fit_parser.add_argument("--name", default=defaults.name, help="model name recorded in the bundle")
    fit_parser.add_argument("--cache", type=Path, default=None, help="folder for preprocessed cases")
    fit_parser.add_argument("--workdir", type=Path, default=Path("runs") / "latest", help="checkpoint and logs (log.csv, tensorboard/)")
    fit_parser.add_argument("--resume", type=Path, default=None, help="continue from a checkpoint of the same settings")
    fit_parser.add_argument("--init", type=Path, default=None, help="start from this model bundle's weights (fine-tuning)")
    fit_parser.add_argument("--force", action="store_true", help="replace an existing output file")
    fit_parser.set_defaults(run=run_fit)

    evaluate_parser = commands.add_parser("evaluate", help="segment labelled cases with a bundle and print per-organ metrics")
    evaluate_parser.add_argument("model", type=Path, help="model bundle")
    evaluate_parser.add_argument("cases", type=Path, nargs="+", help="case folders or folders of cases")
    evaluate_parser.add_argument("--device", default="auto")
    evaluate_parser.add_argument("--map", dest="mapping", default=None, help="label ids of the data -> AbdoSeg's (as for fit)")
    evaluate_parser.add_argument("--json", type=Path, default=None, help="write per-case metrics here")
    evaluate_parser.add_argument("--force", action="store_true", help="replace an existing --json file")
    evaluate_parser.set_defaults(run=run_evaluate)

    export_parser = commands.add_parser("export", help="turn a training checkpoint's best network into a model bundle")
    export_parser.add_argument("checkpoint", type=Path)
    export_parser.add_argument("-o", "--output", type=Path, required=True, help="model bundle to write (.safetensors)")
    export_parser.add_argument("--last", action="store_true",
                               help="the last epoch's network instead of the best one (a run without validation cases always exports its last)")
    export_parser.add_argument("--fine-organs", nargs="+", choices=ORGAN_NAMES, default=None,
                               help="a second stage's checkpoint: the organs the exported stage refines, among those it was "
                                    "trained for (the others keep the first stage's labels)")
    export_parser.add_argument("--crop-margin", type=float, default=None,
                               help="a second stage's checkpoint: the crop margin around the first stage's organ at inference "
                                    "(mm; default: the run's); the training record keeps the run's")
    export_parser.add_argument("--half", action="store_true",
                               help="store the weights as float16: half the file; they still run in float32")
    export_parser.add_argument("--name", default=None, help="model name recorded in the bundle (default: the run's)")
    export_parser.add_argument("--force", action="store_true", help="replace an existing output file")
    export_parser.set_defaults(run=run_export)

    synth_parser = commands.add_parser("synth", help="paint synthetic CT case folders from anatomy maps (to look at or train on)")
    synth_parser.add_argument("anatomy", type=Path, nargs="+", help="anatomy maps (*_anatomy.nii.gz) or folders of them")
    synth_parser.add_argument("-o", "--output", type=Path, required=True, help="folder to write the case folders into")
    synth_parser.add_argument("--phase", choices=PHASES, default=None, help="contrast phase (default: drawn per case)")
    synth_parser.add_argument("--count", type=int, default=1, help="synthetic scans per anatomy map")
    synth_parser.add_argument("--spacing", type=float, default=defaults.spacing_mm[0], help="voxel size in mm (isotropic)")
    synth_parser.add_argument("--seed", type=int, default=0)
    _add_variation_options(synth_parser, defaults, "synthetic scan")
    synth_parser.add_argument("--force", action="store_true", help="replace existing case folders")
    synth_parser.set_defaults(run=run_synth)
    return parser


def run_fit(args: argparse.Namespace) -> None:
    _check_output(args.output, args.force, [args.init, args.coarse, *args.train, *args.validate, *args.synthetic])
    _check_stage(args)
    mapping = parse_mapping(args.mapping) if args.mapping else None
    train = [case for root in args.train for case in discover_cases(root, mapping)]
    validation = [case for root in args.validate for case in discover_cases(root, mapping)]
    synthetic = [source for path in args.synthetic for source in discover_anatomy(path)]
    if not train and not synthetic:
        raise AbdoSegError("no training cases were given (--train, or --synthetic anatomy maps).")
    if args.workers < 0:
        raise AbdoSegError(f"--workers must be 0 or more, not {args.workers}.")
    spacing = args.spacing if args.spacing is not None else FINE_SPACING_MM if args.stage == "fine" else TrainConfig().spacing_mm[0]
    if args.negative_fraction is None:
        args.negative_fraction = 0.0 if args.stage == "fine" else TrainConfig().negative_fraction
    _check_spacing(spacing)
    low, high = CONFIG_RANGES["width"]
    if not low <= args.width <= high:  # checked now, not when the bundle is written after the training
        raise AbdoSegError(f"--width must lie between {low} and {high}, not {args.width}.")
    _check_shares(args, ("synthetic_fraction", "flip_probability", "field_of_view_probability", "negative_fraction", *VARIATION_OPTIONS))
    config = TrainConfig(
        spacing_mm=(spacing,) * 3, width=args.width, patch=args.patch, batch_size=args.batch_size,
        epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch, learning_rate=args.lr,
        validate_every=args.validate_every, seed=args.seed, device=args.device, name=args.name,
        synthetic_fraction=args.synthetic_fraction, flip_probability=args.flip_probability, keep=args.keep,
        workers=args.workers, field_of_view_probability=args.field_of_view_probability,
        negative_fraction=args.negative_fraction, distractor_probability=args.distractor_probability,
        lesion_probability=args.lesion_probability, organ_scaling_probability=args.organ_scaling_probability,
        colon_probability=args.colon_probability, renal_pelvis_probability=args.renal_pelvis_probability,
        stage=args.stage, coarse_bundle=str(args.coarse or ""), crop_margin_mm=args.crop_margin, localisation_error_mm=args.localisation_error,
        fine_organs=tuple(name for name in ORGAN_NAMES if name in (args.fine_organs or ORGAN_NAMES)), coarse_channel=args.coarse_channel,
        prior_sinus_probability=args.prior_sinus_probability,
    )
    best = fit(train, validation, config, args.output, args.workdir, args.cache, args.resume, args.init, synthetic)
    print(json.dumps({"model": str(args.output), "validation": {k: v for k, v in best.items() if k != "per_case"}}, indent=2))


def run_evaluate(args: argparse.Namespace) -> None:
    if args.json:
        _check_output(args.json, args.force, [args.model, *args.cases])
    bundle = load_bundle(args.model)
    mapping = parse_mapping(args.mapping) if args.mapping else None
    cases = [case for root in args.cases for case in discover_cases(root, mapping)]
    results = evaluate(bundle, cases, args.device)
    print(organ_table(results))
    if args.json:
        with atomic_path(args.json) as temporary:
            temporary.write_text(json.dumps(results, indent=2) + "\n")


def run_export(args: argparse.Namespace) -> None:
    _check_output(args.output, args.force, [args.checkpoint])
    state = load_checkpoint(args.checkpoint)
    config = TrainConfig(**state["config"])
    for option, given in (("--fine-organs", args.fine_organs), ("--crop-margin", args.crop_margin)):
        if given is not None and config.stage != "fine":
            raise AbdoSegError(f"{args.checkpoint} is a first stage's run; {option} goes only with a second stage's.")
    if args.crop_margin is not None:
        _check_crop_margin(args.crop_margin)
    if args.fine_organs:
        unknown = [name for name in args.fine_organs if name not in config.fine_organs]
        if unknown:
            raise AbdoSegError(f"the second stage of {args.checkpoint} was not trained for {', '.join(unknown)} "
                               f"(only {', '.join(config.fine_organs)}).")
        config.fine_organs = tuple(name for name in config.fine_organs if name in args.fine_organs)
    config.name = args.name or config.name
    network = VNet(config.network_config)
    # A run without validation cases chose no epoch: fit exported its last one, and so does this.
    last = args.last or not config.validation_cases
    network.load_state_dict(state["network" if last else "best_state"])
    if not config.validation_cases:
        validation = {"epoch": state["epoch"], "note": NO_VALIDATION_NOTE}
    elif args.last:
        validation = {"epoch": state["epoch"], "note": "last epoch, exported with --last"}
    else:
        validation = state["best"]
    sha256 = export(network, config, validation, args.output, state["log"], seconds=state["log"][-1]["seconds"] if state["log"] else 0.0,
                    device="cpu", half=args.half, crop_margin_mm=args.crop_margin)
    print(f"wrote {args.output} (sha256 {sha256})")


def run_synth(args: argparse.Namespace) -> None:
    if args.count < 1:
        raise AbdoSegError(f"--count must be at least 1, not {args.count}.")
    _check_spacing(args.spacing)
    _check_shares(args, VARIATION_OPTIONS)
    sources = [source for path in args.anatomy for source in discover_anatomy(path)]
    spec = Preprocessing((args.spacing,) * 3, TrainConfig().hu_window)
    rng = np.random.default_rng(args.seed)
    variation = AnatomyVariation(**{name: getattr(args, name) for name in VARIATION_OPTIONS})
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AbdoSegError(f"cannot create the output folder {args.output} ({error.strerror}).") from None
    with sigterm_as_interrupt():  # each case folder is written atomically: a SIGTERM leaves the finished ones and no partial one
        for source in sources:
            anatomy = load_anatomy(source, spec)
            inputs = [path for path in (source.target, source.detail, source.info) if path is not None]
            for index in range(1, args.count + 1):
                folder = args.output / f"{source.name}_synthetic_{index}"
                phase = args.phase or choose_phase(rng)
                write_synthetic_case(anatomy, folder, phase, rng, overwrite=args.force, keep=inputs, variation=variation)
                print(f"wrote {folder} ({phase})")


def _check_output(output: Path, force: bool, inputs: list[Path | None]) -> None:
    """Refuse an ``output`` file that is one of the ``inputs`` (or inside one), a folder, or that exists without ``force``."""
    for given in inputs:
        if given is not None and output.resolve().is_relative_to(Path(given).resolve()):
            raise AbdoSegError(f"{output} is the input {given} or inside it; write the output elsewhere.")
    if output.is_dir():
        raise AbdoSegError(f"{output} is a folder; name a file to write.")
    if output.exists() and not force:
        raise AbdoSegError(f"{output} already exists; choose another name or pass --force.")


VARIATION_OPTIONS = tuple(field.name for field in fields(AnatomyVariation))  # each an option of fit and synth


def _check_shares(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Each option ``names`` (argparse destinations) is a probability or fraction: between 0 and 1."""
    for name in names:
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise AbdoSegError(f"--{name.replace('_', '-')} must lie between 0 and 1, not {value}.")


def _add_variation_options(parser: argparse.ArgumentParser, defaults: TrainConfig, unit: str) -> None:
    """The probabilities of distractors, lesions, a scaled organ, a colon and urine in the renal pelvis in each ``unit``
    ("synthetic patch"/"synthetic scan")."""
    parser.add_argument("--distractor-probability", type=float, default=defaults.distractor_probability,
                        help=f"of a {unit} with cysts and masses (labelled background) beside its organs")
    parser.add_argument("--lesion-probability", type=float, default=defaults.lesion_probability,
                        help=f"of a {unit} with lesions (labelled as the organ) inside its organs")
    parser.add_argument("--organ-scaling-probability", type=float, default=defaults.organ_scaling_probability,
                        help=f"of a {unit} with one organ grown (liver, spleen up to 1.5x) or shrunk (kidneys to 0.6x)")
    parser.add_argument("--colon-probability", type=float, default=defaults.colon_probability,
                        help=f"of a {unit} that holds a kidney, with a colon (labelled background) beside each kidney "
                             "whose map has no bowel of its own near it")
    parser.add_argument("--renal-pelvis-probability", type=float, default=defaults.renal_pelvis_probability,
                        help=f"of each kidney in a {unit}, with urine (labelled background) in its sinus, where maps "
                             "leave the renal pelvis unlabelled")


def _check_stage(args: argparse.Namespace) -> None:
    """--coarse goes with --stage fine (and only there), with a margin and an error the bundle and the crops can have;
    --coarse-channel and --prior-sinus-probability go with it too."""
    if (args.stage == "fine") != (args.coarse is not None):
        raise AbdoSegError("--stage fine needs --coarse BUNDLE (the first stage), and --coarse goes only with --stage fine.")
    for option, given in (("--fine-organs", args.fine_organs), ("--coarse-channel", args.coarse_channel)):
        if given and args.stage != "fine":
            raise AbdoSegError(f"{option} goes only with --stage fine.")
    if args.prior_sinus_probability and not args.coarse_channel:
        raise AbdoSegError("--prior-sinus-probability goes only with --coarse-channel (it shapes that channel).")
    _check_shares(args, ("prior_sinus_probability",))
    _check_crop_margin(args.crop_margin)
    if args.localisation_error < 0:
        raise AbdoSegError(f"--localisation-error must be 0 or more, not {args.localisation_error:g}.")


def _check_crop_margin(margin_mm: float) -> None:
    """The second stage's crop margin a model bundle may have (``bundle_schema``), in mm."""
    if not 0 <= margin_mm <= MAX_CROP_MARGIN_MM:
        raise AbdoSegError(f"--crop-margin must lie between 0 and {MAX_CROP_MARGIN_MM:g} mm, not {margin_mm:g}.")


def _check_spacing(spacing: float) -> None:
    """The spacing a model bundle may have (``bundle_schema``): refused before any work rather than at the export."""
    low, high = SPACING_RANGE_MM
    if not low <= spacing <= high:
        raise AbdoSegError(f"--spacing must lie between {low:g} and {high:g} mm, not {spacing:g}.")
