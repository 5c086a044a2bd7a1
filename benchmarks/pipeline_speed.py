"""Speed and memory of the AbdoSeg pipeline next to MONAI's VNet, on a 512x512x200 CT.

    .venv/bin/python benchmarks/pipeline_speed.py [--model BUNDLE] [--threads 2] [--device cpu|cuda]

Builds a test CT with the geometry of a typical abdominal protocol, 512x512x200 voxels of
0.8 x 0.8 x 1.5 mm (a 410 mm field of view): the bundled sample resampled onto it, centred on
the sample, air outside the sample's own field of view. Then runs each pipeline once, one after the other, in a fresh child process of
its own, and prints a markdown table: seconds per stage, the child's whole wall time and its
peak resident memory. What each column runs:

- AbdoSeg: the real command line, ``abdoseg segment CT -o OUT --model M --progress none
  --device D``; its stage times are the ``timings_s`` of the summary.json it writes.
- MONAI VNet: LoadImage (nibabel) -> Orientation RAS, Spacing 3 mm (bilinear),
  ScaleIntensityRange -> sliding_window_inference with ``monai.networks.nets.VNet`` (untrained
  weights: it is timed, not judged), roi 128^3, overlap 0.25, gaussian blending -> argmax ->
  SpatialResample back onto the input grid (nearest) -> labels .nii.gz (nibabel).

Numbers are one run each and only as steady as the machine: run it on an idle one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = (512, 512, 200)
SPACING_MM = (0.8, 0.8, 1.5)  # a typical abdominal CT protocol: 410 mm field of view, 1.5 mm slices
MONAI_SPACING_MM = (3.0, 3.0, 3.0)
MONAI_ROI = (128, 128, 128)
MONAI_OVERLAP = 0.25
MONAI_HU_WINDOW = (-200.0, 400.0)
NUM_CLASSES = 5
CACHE = Path(tempfile.gettempdir()) / "abdoseg-bench"

STAGES = [
    ("read", "read"),
    ("load_model", "load model"),
    ("preprocess", "preprocess / resample to model grid"),
    ("inference", "inference (sliding window)"),
    ("postprocess", "postprocess / back to input grid"),
    ("fine", "second stage (crops around organs)"),
    ("mirror_check", "left-right mirror check"),
    ("write", "write"),
]


class BenchError(Exception):
    """A problem the user can act on; printed as one sentence."""


def check_model(model: Path) -> None:
    """BenchError unless the model bundle ``model`` exists."""
    if not model.is_file():
        raise BenchError(f"model bundle {model} does not exist; train one or pass --model BUNDLE.")


def check_device(device: str) -> None:
    """BenchError when ``device`` is "cuda" and PyTorch finds no CUDA GPU."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for, but PyTorch finds no CUDA GPU here.")


# --------------------------------------------------------------------------- test CT


def build_test_ct(sample: Path, grid: tuple[int, int, int] = GRID) -> Path:
    """The sample CT resampled (linear) onto ``grid`` voxels of SPACING_MM, centred on the sample.

    Written once as int16 .nii.gz under the temporary folder and reused while it is newer
    than the sample (a rebuild takes a few seconds).
    """
    import numpy as np
    import SimpleITK as sitk

    target = CACHE / f"ct-{'x'.join(map(str, grid))}-{'x'.join(f'{v:g}' for v in SPACING_MM)}mm.nii.gz"
    if target.is_file() and target.stat().st_mtime >= sample.stat().st_mtime:
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    source = sitk.ReadImage(str(sample))
    size = np.array(source.GetSize(), dtype=float)
    spacing = np.array(source.GetSpacing())
    new_spacing = np.array(SPACING_MM)
    direction = np.array(source.GetDirection()).reshape(3, 3)
    # Centred on the sample: both grids share the centre of their fields of view.
    centre = np.array(source.GetOrigin()) + direction @ (0.5 * (size - 1) * spacing)
    origin = centre - direction @ (0.5 * (np.array(grid) - 1) * new_spacing)
    resampled = sitk.Resample(
        source, [int(n) for n in grid], sitk.Transform(), sitk.sitkLinear, origin.tolist(),
        new_spacing.tolist(), source.GetDirection(), -1024.0, sitk.sitkInt16,
    )
    temporary = target.with_name(f".{target.name}.{os.getpid()}.nii.gz")
    sitk.WriteImage(resampled, str(temporary), useCompression=True)
    os.replace(temporary, target)
    return target


def monai_weights(path: Path) -> int:
    """Save untrained MONAI VNet weights (seed 0) to ``path`` once; returns the parameter count."""
    import torch
    from monai.networks.nets import VNet
    from safetensors.torch import save_file

    torch.manual_seed(0)
    network = VNet(spatial_dims=3, in_channels=1, out_channels=NUM_CLASSES)
    if not path.is_file():
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(temporary))
        os.replace(temporary, path)
    return sum(p.numel() for p in network.parameters())


# --------------------------------------------------------------------------- children


def thread_env(threads: int) -> dict[str, str]:
    """Environment of a child: every thread pool it may use is held to ``threads``."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        env[name] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_child(argv: list[str], threads: int, log: Path) -> dict:
    """Run ``argv`` as a child, wait for it, return its wall time (s) and peak RSS (MB).

    Peak RSS: os.wait4 returns the rusage of that one child (and of any descendants it
    waited for) -- unlike getrusage(RUSAGE_CHILDREN), which is the maximum over every child
    this process has ever waited for, so the second pipeline would inherit the first one's
    peak. ru_maxrss is the high-water mark of the child's resident set, in KiB on Linux;
    it includes the interpreter and its imports (torch, MONAI), as a user's process would.
    """
    with open(log, "wb") as output:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=thread_env(threads))
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if child.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise BenchError(f"{argv[2] if len(argv) > 2 else argv[0]} child failed (exit {child.returncode}):\n  " + "\n  ".join(tail))
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def worker_main(argv: list[str]) -> int:
    """Entry point of a child: ``_worker abdoseg|monai ...``; writes a JSON report."""
    parser = argparse.ArgumentParser(prog="pipeline_speed.py _worker")
    parser.add_argument("pipeline", choices=["abdoseg", "monai"])
    parser.add_argument("--ct", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.pipeline == "abdoseg":
        from AbdoSegLib.cli import main

        code = main(["segment", str(args.ct), "-o", str(args.out), "--model", str(args.model),
                     "--progress", "none", "--device", args.device])
        if code != 0:
            return code
        summary = json.loads((args.out / "summary.json").read_text())
        report = {"timings_s": summary["timings_s"], "organs": summary["organs"]}
    else:
        report = monai_pipeline(args.ct, args.out, args.model, torch.device(args.device))
    report["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        report["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    args.report.write_text(json.dumps(report))
    return 0


def monai_pipeline(ct: Path, out: Path, weights: Path, device) -> dict:
    """MONAI's VNet pipeline on one CT, stage by stage; returns timings_s and grid sizes."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import VNet
    from monai.transforms import Compose, LoadImage, Orientation, ScaleIntensityRange, Spacing, SpatialResample
    from safetensors.torch import load_file

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    timings: dict[str, float] = {}
    start = time.perf_counter()
    image = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(str(ct))
    timings["read"] = time.perf_counter() - start

    start = time.perf_counter()
    network = VNet(spatial_dims=3, in_channels=1, out_channels=NUM_CLASSES)
    network.load_state_dict(load_file(str(weights)), strict=True)
    network.eval()
    timings["load_model"] = time.perf_counter() - start
    # Outside every stage, as in AbdoSeg's predict.segment (its .to(device) is untimed too):
    # on CUDA this is where the context starts; it still counts in the child's total wall.
    network.to(device)
    sync()

    start = time.perf_counter()
    preprocess = Compose([
        Orientation(axcodes="RAS"),
        Spacing(pixdim=MONAI_SPACING_MM, mode="bilinear"),
        ScaleIntensityRange(a_min=MONAI_HU_WINDOW[0], a_max=MONAI_HU_WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
    ])
    volume = preprocess(image)  # MetaTensor (1, X, Y, Z) on the 3 mm grid
    model_affine, model_shape = volume.affine.clone(), tuple(volume.shape[1:])
    timings["preprocess"] = time.perf_counter() - start

    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
        logits = sliding_window_inference(
            volume.as_tensor()[None].to(device), MONAI_ROI, sw_batch_size=1, predictor=network,
            overlap=MONAI_OVERLAP, mode="gaussian",
        )
    sync()
    timings["inference"] = time.perf_counter() - start

    start = time.perf_counter()
    labels = logits[0].argmax(dim=0, keepdim=True).to(torch.float32).cpu()
    back = SpatialResample(mode="nearest", padding_mode="zeros")(
        MetaTensor(labels, affine=model_affine), dst_affine=image.affine, spatial_size=tuple(image.shape[1:]),
    )
    labels_input = np.asarray(back.as_tensor()[0].numpy(), dtype=np.uint8)
    timings["postprocess"] = time.perf_counter() - start

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels_input, image.affine.numpy()), str(out / "labels.nii.gz"))
    timings["write"] = time.perf_counter() - start
    timings["total"] = sum(timings.values())
    return {"timings_s": timings, "model_grid": list(model_shape), "input_grid": list(image.shape[1:])}


# --------------------------------------------------------------------------- report


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(results: dict[str, dict], params: dict[str, int], gpu: bool) -> str:
    names = list(results)
    rows = [f"| stage | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]

    def row(label: str, values: list[str]) -> None:
        rows.append(f"| {label} | {' | '.join(values)} |")

    for key, label in STAGES:
        row(f"{label} (s)", [f"{results[n]['timings_s'][key]:.2f}" if key in results[n]["timings_s"] else "-" for n in names])
    sums = [sum(results[n]["timings_s"].get(key, 0.0) for key, _ in STAGES) for n in names]
    row("sum of stages (s)", [f"{s:.2f}" for s in sums])
    row("process start + imports + other (s)", [f"{results[n]['wall_s'] - s:.2f}" for n, s in zip(names, sums)])
    row("**total wall, whole child (s)**", [f"**{results[n]['wall_s']:.2f}**" for n in names])
    row("peak RSS (MB)", [f"{results[n]['peak_rss_mb']:.0f}" for n in names])
    if gpu:
        row("peak GPU memory, torch (MB)", [f"{results[n].get('peak_gpu_mb', float('nan')):.0f}" for n in names])
    row("network parameters", [f"{params[n]:,}" for n in names])
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])

    from AbdoSegLib.resources import DEFAULT_BUNDLE, SAMPLE_CT

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE, help=f"AbdoSeg model bundle (default: {DEFAULT_BUNDLE})")
    parser.add_argument("--threads", type=int, default=2, help="torch (and ITK/OpenMP) threads in each pipeline (default: 2)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the networks run (default: cpu)")
    args = parser.parse_args(argv)
    try:
        return benchmark(args, SAMPLE_CT)
    except BenchError as error:
        print(f"pipeline_speed: {error}", file=sys.stderr)
        return 1


def benchmark(args: argparse.Namespace, sample: Path) -> int:
    check_model(args.model)
    if args.threads < 1:
        raise BenchError(f"--threads must be at least 1, got {args.threads}.")

    import monai
    import torch

    from AbdoSegLib.errors import AbdoSegError
    from AbdoSegLib.inference.predict import count_windows, window_size
    from AbdoSegLib.io.image_files import read_image
    from AbdoSegLib.model.bundle import load_bundle
    from AbdoSegLib.model.preprocessing import model_grid

    check_device(args.device)
    try:
        bundle = load_bundle(args.model)
    except AbdoSegError as error:
        raise BenchError(str(error)) from None

    start = time.perf_counter()
    ct = build_test_ct(sample)
    build_s = time.perf_counter() - start
    CACHE.mkdir(parents=True, exist_ok=True)
    weights = CACHE / "monai-vnet-untrained.safetensors"
    params = {
        "AbdoSeg": sum(p.numel() for p in bundle.network.parameters()),
        "MONAI VNet": monai_weights(weights),
    }
    ct_image = read_image(ct)
    grid = model_grid(ct_image, bundle.preprocessing.spacing_mm)
    roi = window_size(grid.shape, bundle.patch_size, bundle.network.config.divisor)
    abdoseg_windows = count_windows(grid.shape, roi, bundle.overlap)
    del ct_image

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="abdoseg-bench-") as folder:
        folder = Path(folder)
        for name, pipeline in (("AbdoSeg", "abdoseg"), ("MONAI VNet", "monai")):
            report = folder / f"{pipeline}.json"
            child = [sys.executable, str(Path(__file__).resolve()), "_worker", pipeline, "--ct", str(ct),
                     "--out", str(folder / f"{pipeline}-out"), "--device", args.device, "--threads", str(args.threads),
                     "--report", str(report), "--model", str(args.model if pipeline == "abdoseg" else weights)]
            print(f"running {name} ...", file=sys.stderr, flush=True)
            measured = run_child(child, args.threads, folder / f"{pipeline}.log")
            results[name] = {**json.loads(report.read_text()), **measured}

    monai_grid = results["MONAI VNet"]["model_grid"]
    monai_windows = count_windows(tuple(monai_grid), MONAI_ROI, MONAI_OVERLAP)
    spacing = ", ".join(f"{s:.3f}" for s in ct_image_spacing(ct))
    device = "cpu" if args.device == "cpu" else f"cuda ({torch.cuda.get_device_name(0)})"

    print(f"## Pipeline speed: {'x'.join(map(str, GRID))} CT ({spacing} mm), device {args.device}\n")
    print(table(results, params, args.device == "cuda"))
    print()
    abdoseg, vnet = results["AbdoSeg"]["wall_s"], results["MONAI VNet"]["wall_s"]
    print(f"speed-up (MONAI VNet total wall / AbdoSeg total wall): {vnet / abdoseg:.1f}x ({vnet:.1f} s / {abdoseg:.1f} s)")
    print()
    print(f"- AbdoSeg: bundle {bundle.model_id} ({args.model}), model grid {'x'.join(map(str, grid.shape))} at "
          f"{'x'.join(f'{s:g}' for s in bundle.preprocessing.spacing_mm)} mm, window {'x'.join(map(str, roi))}, "
          f"{abdoseg_windows} window(s); write = labels.nii.gz + segmentation.seg.nrrd + organ measurements")
    organs = results["AbdoSeg"]["organs"]
    print("- AbdoSeg found (mL): " + ", ".join(f"{name} {o['volume_ml']:.0f}" for name, o in organs.items())
          + "; postprocess time grows with the organs' bounding boxes (an untrained bundle labels most of the volume)")
    print(f"- MONAI VNet: untrained, model grid {'x'.join(map(str, monai_grid))} at 3 mm, window "
          f"{'x'.join(map(str, MONAI_ROI))}, {monai_windows} window(s); write = labels.nii.gz")
    print(f"- each pipeline ran once in its own child process; total wall includes interpreter start and imports; "
          f"test CT {ct} ready in {build_s:.1f} s (rebuilt only when missing or older than the sample)")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {results['AbdoSeg']['torch_threads']} torch threads, "
          f"torch {torch.__version__}, MONAI {monai.__version__}, Python {platform.python_version()}, device {device}")
    return 0


def ct_image_spacing(path: Path) -> list[float]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return list(reader.GetSpacing())


if __name__ == "__main__":
    sys.exit(main())
