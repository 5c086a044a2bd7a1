"""Seconds per CT: AbdoSeg next to the peer users pick today, on the 512x512x200 CT of pipeline_speed.py.

    .venv/bin/python benchmarks/peer_speed.py [--model BUNDLE] [--threads 2] [--repeat 3] [--tile-steps 0.5 0.8]

Needs the bench extra (nnunetv2); ``make bench`` installs it. Every pipeline runs in this one process on
the CPU, with torch, OpenMP and ITK held to ``--threads``, from the CT file to a labels file on the input
grid: one warm-up run on the bundled sample CT (imports, first allocations), then the median wall and CPU
seconds of ``--repeat`` runs on pipeline_speed.py's CT (512x512x200 voxels of 0.8 x 0.8 x 1.5 mm).

- AbdoSeg: ``abdoseg segment CT -o OUT --model M --progress none --device cpu``, as pipeline_speed.py
  runs it (it also writes segmentation.seg.nrrd and the organ measurements).
- nnU-Net v2 running TotalSegmentator's fast network: nnU-Net's own ``nnUNetPredictor``, given in each run
  the plans below and the network they describe with random weights (seed 0; time does not depend on the
  weights). The CT is read with nnU-Net's ``SimpleITKIO``, resampled to 3 mm with the plan's data
  resampling (nnU-Net's ``resample_data_or_seg_to_shape``, order 3), then ``predict_single_npy_array``
  (nnU-Net's preprocessing: crop to non-zero, CT normalisation; Gaussian-weighted sliding window, no
  mirroring); the labels go back to the input grid with nnU-Net's segmentation resampling at order 0 and
  are written with ``SimpleITKIO``. That is how TotalSegmentator runs ``--fast`` (its ``nnunet.py``:
  resample to 3 mm first, nnU-Net at 3 mm, labels back at order 0), in memory instead of through
  temporary NIfTI files and worker processes. Handed the CT at 0.8 x 0.8 x 1.5 mm, nnU-Net would instead
  resample its 118 logit channels back to the input grid: 118 x 512 x 512 x 200 half floats, 12 GiB.
  Tile steps: 0.5 is nnU-Net's default, 0.8 what TotalSegmentator's ``nnunet.py`` uses for its ``total``
  tasks, fast included; steps that place the same windows on this grid are timed once, in one row.
- MONAI VNet: pipeline_speed.py's ``monai_pipeline`` (3 mm, roi 128^3, overlap 0.25, untrained VNet).

Where the nnU-Net network comes from: TotalSegmentator's ``--fast`` is task 297, trainer
``nnUNetTrainer_4000epochs_NoMirroring``, configuration ``3d_fullres``, resample 3.0
(wasserth/TotalSegmentator ``totalsegmentator/map_tasks_config.py``, commit 0e65a44, 2026-08-13; tile step
0.8 and TTA off in ``totalsegmentator/nnunet.py``). Its plans.json ships only with the released weights,
which are not downloaded here; the architecture below is the one exported from that plans.json by
aluminumio/shoulder_segmenter (``script/golden/nnunet_architecture.yaml`` at commit 9e7fa7f, written by its
``script/export_totalsegmentator.py`` from ``Dataset297_TotalSegmentator_total_3mm_1559subj/
nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres``): PlainConvUNet, 5 stages of 32, 64, 128,
256, 320 features, 3^3 kernels, strides 1, 2, 2, 2, 2, two convolutions per stage in encoder and decoder,
instance norm, leaky ReLU, 118 outputs, patch 112 x 112 x 128, spacing 3 mm, CT normalisation clip -1004 to
1588 HU, mean -50.39, std 503.39. The same patch size is in ClinicalDataScience/tucker-cnn
``scripts/01_model_benchmark.py``, which loads that model folder.
Assumed (not in that export): transpose_forward [0, 1, 2] (nnU-Net's planner puts the largest-spacing axis
first; all three are 3 mm) and nnU-Net's default resampling settings of the planner (data order 3,
segmentations order 1, probabilities order 1).

Times are only as steady as the machine: run on an idle one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from pipeline_speed import (
    CACHE,
    GRID,
    MONAI_OVERLAP,
    MONAI_ROI,
    SPACING_MM,
    BenchError,
    build_test_ct,
    check_model,
    cpu_model,
    monai_pipeline,
    monai_weights,
    thread_env,
)
from timing import median_time

TS_FAST_TRAINER = "nnUNetTrainer_4000epochs_NoMirroring"
TS_FAST_CLASSES = 118  # background + the 117 structures of TotalSegmentator's "total" task
TS_FAST_STAGES = 5
TS_FAST_SPACING_MM = [3.0, 3.0, 3.0]
TS_FAST_PATCH = [112, 112, 128]
TS_FAST_CT_INTENSITIES = {"percentile_00_5": -1004.0, "percentile_99_5": 1588.0, "mean": -50.38697721419439, "std": 503.39235619144}
TILE_STEPS = (0.5, 0.8)


def ts_fast_plans() -> dict:
    """nnU-Net v2 plans (the plans.json schema) of TotalSegmentator's fast 3 mm model; see the module docstring."""
    architecture = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": TS_FAST_STAGES,
            "features_per_stage": [32, 64, 128, 256, 320],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * TS_FAST_STAGES,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (TS_FAST_STAGES - 1),
            "n_conv_per_stage": [2] * TS_FAST_STAGES,
            "n_conv_per_stage_decoder": [2] * (TS_FAST_STAGES - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }

    def resampling(is_seg: bool, order: int) -> dict:
        return {"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": None}

    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": TS_FAST_PATCH,
        "spacing": TS_FAST_SPACING_MM,
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling(False, 3),
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": resampling(True, 1),
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": resampling(False, 1),
        "architecture": architecture,
        "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset297_TotalSegmentator_total_3mm_1559subj",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": TS_FAST_SPACING_MM,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": TS_FAST_CT_INTENSITIES},
    }


def ts_fast_predictor(tile_step: float):
    """nnU-Net's own ``nnUNetPredictor`` holding TotalSegmentator's fast network with random weights (seed 0), CPU, no mirroring.

    Set up with ``manual_initialization`` from the plans above: ``initialize_from_trained_model_folder`` would
    search every nnU-Net trainer module for the trainer's name, and some import timm and torchvision.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(ts_fast_plans())
    configuration = plans.get_configuration("3d_fullres")
    torch.manual_seed(0)
    network = get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                     configuration.network_arch_init_kwargs_req_import, input_channels=1, output_channels=TS_FAST_CLASSES,
                                     allow_init=True, deep_supervision=False)
    labels = {"background": 0, **{f"structure_{i}": i for i in range(1, TS_FAST_CLASSES)}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    predictor = nnUNetPredictor(tile_step_size=tile_step, use_gaussian=True, use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(network, plans, configuration, [network.state_dict()], dataset, TS_FAST_TRAINER, None)
    return predictor


def nnunet_pipeline(ct: Path, out: Path, tile_step: float) -> None:
    """TotalSegmentator's fast path through nnU-Net's own classes (see the module docstring): ``ct`` to ``out``/labels.nii.gz."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

    predictor = ts_fast_predictor(tile_step)
    configuration = predictor.configuration_manager
    io = SimpleITKIO()
    image, properties = io.read_images([str(ct)])  # (1, z, y, x) and the spacing in that order
    spacing, input_shape = properties["spacing"], image.shape[1:]
    model_shape = compute_new_shape(input_shape, spacing, configuration.spacing)
    image = configuration.resampling_fn_data(image, model_shape, spacing, configuration.spacing)
    labels = predictor.predict_single_npy_array(image, {"spacing": configuration.spacing})
    labels = resample_data_or_seg_to_shape(labels[None], input_shape, configuration.spacing, spacing, is_seg=True, order=0)[0]
    out.mkdir(parents=True, exist_ok=True)
    io.write_seg(labels, str(out / "labels.nii.gz"), properties)


def nnunet_windows(ct: Path, tile_step: float) -> tuple[tuple[int, ...], list[list[int]]]:
    """nnU-Net's model grid (z, y, x voxels) for ``ct`` and its sliding-window start voxels along each axis at ``tile_step``."""
    import SimpleITK as sitk
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(ct))
    reader.ReadImageInformation()
    shape = tuple(int(n) for n in compute_new_shape(reader.GetSize()[::-1], reader.GetSpacing()[::-1], TS_FAST_SPACING_MM))
    padded = [max(n, p) for n, p in zip(shape, TS_FAST_PATCH)]  # nnU-Net pads a grid smaller than the patch
    return shape, compute_steps_for_sliding_window(padded, TS_FAST_PATCH, tile_step)


def abdoseg_pipeline(ct: Path, out: Path, model: Path) -> None:
    """``abdoseg segment`` on ``ct`` into the new folder ``out``, as pipeline_speed.py runs it."""
    from AbdoSegLib.cli import main

    code = main(["segment", str(ct), "-o", str(out), "--model", str(model), "--progress", "none", "--device", "cpu"])
    if code != 0:
        raise BenchError(f"abdoseg segment failed on {ct} (exit {code}).")


def seconds(run, ct: Path, warm_up_ct: Path, repeat: int) -> tuple[float, float, object]:
    """``run(warm_up_ct)`` once, then the median wall and CPU seconds of ``repeat`` calls of ``run(ct)``, and the last result.

    CPU seconds are this process's, all threads together: a busy machine inflates them less than the wall time.
    nnU-Net and the command line print to stdout; that goes to stderr here so that stdout holds only the table.
    """
    cpu = []

    def timed():
        start = time.process_time()
        result = run(ct)
        cpu.append(time.process_time() - start)
        return result

    with contextlib.redirect_stdout(sys.stderr):
        run(warm_up_ct)
        wall, result = median_time(timed, repeat)
    return wall, statistics.median(cpu), result


def main(argv: list[str] | None = None) -> int:
    from AbdoSegLib.resources import DEFAULT_BUNDLE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE, help=f"AbdoSeg model bundle (default: {DEFAULT_BUNDLE})")
    parser.add_argument("--threads", type=int, default=2, help="torch, OpenMP and ITK threads of every pipeline (default: 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each pipeline after one warm-up run (default: 3)")
    parser.add_argument("--tile-steps", type=float, nargs="+", default=list(TILE_STEPS), metavar="STEP",
                        help="nnU-Net sliding-window steps; steps placing the same windows share a row (default: 0.5, nnU-Net's, and 0.8, TotalSegmentator's)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeat < 1 or not all(0 < step <= 1 for step in args.tile_steps):
        parser.error("--threads and --repeat must be at least 1 and every tile step in (0, 1].")
    # Before torch, SimpleITK and nnU-Net are imported: each reads its thread count once.
    os.environ.update(thread_env(args.threads))
    os.environ["nnUNet_def_n_proc"] = str(args.threads)  # nnU-Net's own torch.set_num_threads in its export
    try:
        return benchmark(args)
    except BenchError as error:
        print(f"peer_speed: {error}", file=sys.stderr)
        return 1


def benchmark(args: argparse.Namespace) -> int:
    check_model(args.model)
    if importlib.util.find_spec("nnunetv2") is None:
        raise BenchError("nnunetv2 is not installed; `make bench` installs the bench extra (pip install -e '.[bench]').")
    import monai
    import torch

    from AbdoSegLib.inference.predict import count_windows, window_size
    from AbdoSegLib.io.image_files import read_image
    from AbdoSegLib.model.bundle import load_bundle
    from AbdoSegLib.model.preprocessing import model_grid
    from AbdoSegLib.resources import SAMPLE_CT

    load_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model)
    ct = build_test_ct(SAMPLE_CT)
    grid = model_grid(read_image(ct), bundle.preprocessing.spacing_mm).shape
    roi = window_size(grid, bundle.patch_size, bundle.network.config.divisor)
    CACHE.mkdir(parents=True, exist_ok=True)
    monai_weights_file = CACHE / "monai-vnet-untrained.safetensors"

    rows = []  # (pipeline, network, parameters, model grid, windows, wall s, CPU s)
    with tempfile.TemporaryDirectory(prefix="abdoseg-peer-") as folder:
        folder = Path(folder)
        runs = itertools.count()

        def fresh(name: str) -> Path:
            return folder / f"{name}-{next(runs)}"

        print("AbdoSeg ...", file=sys.stderr, flush=True)
        times = seconds(lambda image: abdoseg_pipeline(image, fresh("abdoseg"), args.model), ct, SAMPLE_CT, args.repeat)
        rows.append(("AbdoSeg, `abdoseg segment`", f"AbdoSeg V-Net ({bundle.model_id})", sum(p.numel() for p in bundle.network.parameters()),
                     grid, count_windows(grid, roi, bundle.overlap), *times[:2]))

        with contextlib.redirect_stdout(sys.stderr):  # nnU-Net says at import which nnUNet_* folders are not set
            nnunet_parameters = sum(p.numel() for p in ts_fast_predictor(TILE_STEPS[0]).network.parameters())
        # Steps that place the same windows run the same computation: timed once, one row.
        by_windows: dict[tuple[tuple[int, ...], ...], list[float]] = {}
        for step in args.tile_steps:
            nnunet_grid, starts = nnunet_windows(ct, step)
            by_windows.setdefault(tuple(map(tuple, starts)), []).append(step)
        for starts, steps in by_windows.items():
            print(f"nnU-Net v2, tile step {steps[0]:g} ...", file=sys.stderr, flush=True)
            times = seconds(lambda image: nnunet_pipeline(image, fresh("nnunet"), steps[0]), ct, SAMPLE_CT, args.repeat)
            rows.append((f"nnU-Net v2 predictor, tile step {' = '.join(f'{s:g}' for s in steps)}",
                         "TotalSegmentator fast (task 297): PlainConvUNet, 118 outputs", nnunet_parameters, nnunet_grid,
                         math.prod(len(axis) for axis in starts), *times[:2]))

        print("MONAI VNet ...", file=sys.stderr, flush=True)
        parameters = monai_weights(monai_weights_file)
        wall, cpu, report = seconds(lambda image: monai_pipeline(image, fresh("monai"), monai_weights_file, torch.device("cpu")),
                                    ct, SAMPLE_CT, args.repeat)
        monai_grid = tuple(report["model_grid"])
        rows.append(("MONAI VNet pipeline (pipeline_speed.py)", "monai.networks.nets.VNet, 5 outputs", parameters, monai_grid,
                     count_windows(monai_grid, MONAI_ROI, MONAI_OVERLAP), wall, cpu))

    abdoseg_wall, abdoseg_cpu = rows[0][-2:]
    print(f"## AbdoSeg and its peers: {'x'.join(map(str, GRID))} CT ({' x '.join(f'{s:g}' for s in SPACING_MM)} mm), CPU, {args.threads} threads\n")
    print(f"| pipeline | network | parameters | model grid | windows | wall s, CT file to labels file (median of {args.repeat}) | CPU s "
          "| ratio to AbdoSeg, wall | ratio, CPU |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for name, network, parameters, shape, windows, wall, cpu in rows:
        print(f"| {name} | {network} | {parameters:,} | {'x'.join(map(str, shape))} | {windows} | {wall:.1f} | {cpu:.1f} "
              f"| {wall / abdoseg_wall:.1f}x | {cpu / abdoseg_cpu:.1f}x |")
    print()
    print("- each pipeline ran in this process: one warm-up run on the bundled sample CT, then the timed runs; "
          "nnU-Net's model grid is in its (z, y, x) order, the others' in (i, j, k)")
    print("- AbdoSeg also writes segmentation.seg.nrrd and the organ measurements; nnU-Net and MONAI write labels.nii.gz only")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, load average (1 min) {load_start:.1f} at the start and "
          f"{os.getloadavg()[0]:.1f} at the end; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"nnunetv2 {version('nnunetv2')}, MONAI {monai.__version__}, Python {platform.python_version()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
