"""Synthetic CT painted from an anatomy map: domain randomisation tuned for CT.

A synthetic scan is made in three steps, all in Hounsfield units on the model grid:

1. **paint**: each structure gets a mean HU drawn from its range in a randomly chosen contrast
   phase (portal-venous, arterial or unenhanced) and a texture (a smooth random field scaled by
   a drawn spread); the body outside the labelled structures becomes a mixture of fat, soft
   tissue (muscle, bowel wall), gas and, sometimes, oral contrast, with more fat under the skin
   and around the kidneys, muscle over the liver and spleen, and gas and contrast only in the
   bowel, beneath the body wall. Labelled bowel and stomach are painted as hollow organs: a wall
   around gas, fluid, faeces or oral contrast (``bowel.py``).
   With probability ``random_phase`` every soft-tissue structure instead gets any mean in
   ``RANDOM_SOFT_TISSUE_HU`` (SynthSeg-style randomisation, so that the network cannot rely on
   one organ's exact brightness);
2. **corrupt**: a smooth bias field (beam hardening, scatter), partial-volume blur, thicker
   slices, scanner noise (white or correlated);
3. the caller clips and scales the HU window exactly as the engine does.

The label maps are never touched: painting changes intensities only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .bowel import paint_bowel, paint_stomach
from .fields import smooth_field
from .structures import STRUCTURE_IDS

PHASES = ("portal_venous", "arterial", "unenhanced")
PHASE_PROBABILITIES = (0.45, 0.25, 0.3)
AIR_HU = -1000.0
RANDOM_SOFT_TISSUE_HU = (-20.0, 250.0)


@dataclass(frozen=True)
class Tissue:
    """mean_hu: {phase: (low, high)} of the structure's mean; spread_hu: (low, high) of its
    within-structure standard deviation (texture). ``soft`` tissues take part in the random phase."""

    mean_hu: dict[str, tuple[float, float]]
    spread_hu: tuple[float, float]
    soft: bool = True


def _same(low: float, high: float) -> dict[str, tuple[float, float]]:
    return {phase: (low, high) for phase in PHASES}


# Ranges from the radiology literature on abdominal CT, widened so that the measured means of
# real scans (liver 113-120, kidneys 169-206, spleen 116-119, portal vein 154-177, lung -858 to
# -887, bone 250-333 HU in portal-venous 3D-IRCADb scans) lie well inside them. Unenhanced
# kidneys reach down to 10 HU: on a 3 mm grid their parenchyma mixes with the sinus fat.
TISSUES: dict[int, Tissue] = {
    STRUCTURE_IDS["outside"]: Tissue(_same(-1010, -990), (0, 10), soft=False),
    STRUCTURE_IDS["liver"]: Tissue({"portal_venous": (90, 140), "arterial": (60, 100), "unenhanced": (35, 70)}, (6, 18)),
    STRUCTURE_IDS["right_kidney"]: Tissue({"portal_venous": (140, 230), "arterial": (130, 260), "unenhanced": (10, 45)}, (8, 30)),
    STRUCTURE_IDS["left_kidney"]: Tissue({"portal_venous": (140, 230), "arterial": (130, 260), "unenhanced": (10, 45)}, (8, 30)),
    STRUCTURE_IDS["spleen"]: Tissue({"portal_venous": (95, 140), "arterial": (80, 150), "unenhanced": (30, 60)}, (6, 25)),
    STRUCTURE_IDS["bone"]: Tissue(_same(180, 550), (60, 160), soft=False),
    STRUCTURE_IDS["lung"]: Tissue(_same(-900, -750), (20, 60), soft=False),
    STRUCTURE_IDS["artery"]: Tissue({"portal_venous": (140, 220), "arterial": (250, 450), "unenhanced": (30, 50)}, (5, 20)),
    STRUCTURE_IDS["vein"]: Tissue({"portal_venous": (120, 190), "arterial": (60, 130), "unenhanced": (30, 50)}, (5, 20)),
    STRUCTURE_IDS["portal_vein"]: Tissue({"portal_venous": (150, 210), "arterial": (80, 160), "unenhanced": (30, 50)}, (5, 20)),
    STRUCTURE_IDS["gallbladder"]: Tissue(_same(-5, 30), (3, 10)),
    STRUCTURE_IDS["stomach"]: Tissue(_same(-20, 50), (10, 30)),  # its contents; wall and gas cap: bowel.py
    STRUCTURE_IDS["pancreas"]: Tissue({"portal_venous": (80, 130), "arterial": (90, 150), "unenhanced": (30, 50)}, (8, 20)),
    STRUCTURE_IDS["adrenal_gland"]: Tissue(_same(20, 70), (5, 15)),
    STRUCTURE_IDS["liver_tumour"]: Tissue({"portal_venous": (30, 100), "arterial": (40, 160), "unenhanced": (20, 50)}, (8, 25)),
    STRUCTURE_IDS["liver_cyst"]: Tissue(_same(-5, 25), (3, 10)),
    STRUCTURE_IDS["other_tumour"]: Tissue(_same(20, 80), (8, 25)),
    STRUCTURE_IDS["biliary_system"]: Tissue(_same(0, 40), (5, 15)),
    STRUCTURE_IDS["stones"]: Tissue(_same(200, 800), (30, 100), soft=False),
    STRUCTURE_IDS["metal"]: Tissue(_same(1000, 3000), (100, 400), soft=False),
    STRUCTURE_IDS["resection_site"]: Tissue(_same(-40, 50), (10, 30)),
    # Blood pool and myocardium; arterial-phase left-heart blood reaches the aorta's brightness.
    STRUCTURE_IDS["heart"]: Tissue({"portal_venous": (100, 200), "arterial": (130, 400), "unenhanced": (30, 55)}, (10, 30)),
    # Labelled only by other sets' maps. Bowel: its enhancing wall; the contents (gas, fluid, faeces,
    # oral contrast) are painted by bowel.py. Skeletal muscle: 40-60 HU unenhanced,
    # lower in fatty (older) muscle, +5-15 HU after contrast. Urine and simple cysts: water, 0-20 HU.
    STRUCTURE_IDS["bowel"]: Tissue({"portal_venous": (60, 120), "arterial": (50, 110), "unenhanced": (25, 50)}, (5, 15)),
    STRUCTURE_IDS["muscle"]: Tissue({"portal_venous": (35, 75), "arterial": (35, 70), "unenhanced": (30, 60)}, (6, 18)),
    STRUCTURE_IDS["urinary_bladder"]: Tissue(_same(0, 20), (3, 10)),
    STRUCTURE_IDS["kidney_cyst"]: Tissue(_same(-5, 20), (3, 10)),
    # A simple cyst outside the organs (a distractor): water with a sharp wall, little texture.
    STRUCTURE_IDS["cyst"]: Tissue(_same(0, 25), (1, 5)),
    STRUCTURE_IDS["renal_pelvis"]: Tissue(_same(0, 20), (2, 8)),  # urine in the kidney's sinus (``renal_sinus.py``)
}

# The unlabelled body: (low, high) of each component's mean HU and its texture spread.
FAT_HU, FAT_SPREAD = (-130.0, -70.0), (8.0, 20.0)
SOFT_HU, SOFT_SPREAD = (15.0, 65.0), (8.0, 20.0)
GAS_HU = (-1000.0, -500.0)
ORAL_CONTRAST_HU = (150.0, 450.0)
BODY, BOWEL, STOMACH = STRUCTURE_IDS["body_other"], STRUCTURE_IDS["bowel"], STRUCTURE_IDS["stomach"]


def choose_phase(rng: np.random.Generator) -> str:
    return PHASES[rng.choice(len(PHASES), p=PHASE_PROBABILITIES)]


def paint(structures: np.ndarray, depth_mm: np.ndarray, rng: np.random.Generator, phase: str | None = None,
          random_phase: float = 0.2) -> np.ndarray:
    """(X, Y, Z) structure ids and depth below the skin (mm) -> (X, Y, Z) float32 HU.

    ``phase``: one of ``PHASES``, or None to draw one (probabilities ``PHASE_PROBABILITIES``).
    """
    phase = phase or choose_phase(rng)
    randomise = rng.random() < random_phase
    texture = smooth_field(structures.shape, rng.uniform(0.6, 1.5), rng)
    hu = np.empty(structures.shape, dtype=np.float32)
    hu.fill(AIR_HU)
    for label in np.unique(structures):
        inside = structures == label
        if label == BODY:
            hu[inside] = _body_mixture(inside, depth_mm, _perirenal(structures, inside, rng),
                                       _organ_cover(structures, depth_mm, inside, rng), texture, rng)
            continue
        tissue = TISSUES[int(label)]
        low, high = RANDOM_SOFT_TISSUE_HU if randomise and tissue.soft else tissue.mean_hu[phase]
        if label == BOWEL:
            hu[inside] = paint_bowel(inside, (low, high), texture, rng)
        elif label == STOMACH:
            hu[inside] = paint_stomach(inside, TISSUES[BOWEL].mean_hu[phase], (low, high), texture, rng)
        else:
            hu[inside] = rng.uniform(low, high) + rng.uniform(*tissue.spread_hu) * texture[inside]
    return hu


def _perirenal(structures: np.ndarray, inside: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(X, Y, Z) bool: body voxels within 1-4 voxels of a kidney (the perirenal fat), in 80 % of scans."""
    kidneys = (structures == STRUCTURE_IDS["right_kidney"]) | (structures == STRUCTURE_IDS["left_kidney"])
    if rng.random() >= 0.8 or not kidneys.any():
        return np.zeros(structures.shape, dtype=bool)
    return ndimage.binary_dilation(kidneys, iterations=int(rng.integers(1, 5))) & inside


def _organ_cover(structures: np.ndarray, depth_mm: np.ndarray, inside: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(X, Y, Z) bool: body voxels within 1-3 voxels of the liver or spleen on the skin side.

    The diaphragm and the muscles of the body wall always lie between these organs and the
    subcutaneous fat; a voxel is on the skin side when it is shallower than its nearest organ voxel.
    """
    organs = (structures == STRUCTURE_IDS["liver"]) | (structures == STRUCTURE_IDS["spleen"])
    if not organs.any():
        return np.zeros(structures.shape, dtype=bool)
    distance, nearest = ndimage.distance_transform_edt(~organs, return_indices=True)
    shallower = depth_mm < depth_mm[tuple(nearest)]
    return inside & shallower & (distance <= int(rng.integers(1, 4)))


def _ranks(values: np.ndarray) -> np.ndarray:
    """(N,) float32 rank of each value in [0, 1): 0 for the smallest."""
    ranks = np.empty(len(values), dtype=np.float32)
    ranks[np.argsort(values)] = np.arange(len(values), dtype=np.float32) / max(len(values), 1)
    return ranks


def _body_mixture(inside: np.ndarray, depth_mm: np.ndarray, perirenal: np.ndarray, cover: np.ndarray,
                  texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HU of the unlabelled body voxels (``inside``): fat, soft tissue, gas, oral contrast.

    A coarse random field decides which component a voxel is; fat is more likely within a
    subcutaneous band of random thickness and around the kidneys (``perirenal``), soft tissue
    in the muscle layer beneath the fat and over the liver and spleen (``cover``), and the skin
    itself (the first 2 mm) is soft tissue. Gas and oral contrast lie in the bowel, so only
    beneath the body wall.
    """
    components = smooth_field(inside.shape, rng.uniform(1.0, 2.5), rng)[inside]
    depth = depth_mm[inside].astype(np.float32)
    # Body wall: subcutaneous fat, then a layer of muscle, then the mixture of the abdomen.
    subcutaneous = rng.uniform(5, 35)
    muscle = subcutaneous + rng.uniform(5, 15)
    components += np.where((depth > 2) & (depth < subcutaneous), rng.uniform(2.0, 4.0), 0).astype(np.float32)
    components -= np.where((depth >= subcutaneous) & (depth < muscle), rng.uniform(1.0, 3.0), 0).astype(np.float32)
    components += np.where(perirenal[inside], rng.uniform(2.0, 4.0), 0).astype(np.float32)
    components -= np.where(cover[inside], rng.uniform(3.0, 5.0), 0).astype(np.float32)
    fat_fraction, gas_fraction = rng.uniform(0.25, 0.55), rng.uniform(0.0, 0.06)
    contrast_fraction = rng.uniform(0.0, 0.05) if rng.random() < 0.25 else 0.0
    ranks = _ranks(components)  # low field = soft tissue side, high field = fat side
    bowel = (depth >= muscle) & ~cover[inside]
    bowel_ranks = np.ones_like(ranks)
    bowel_ranks[bowel] = _ranks(components[bowel])
    body_texture = texture[inside]
    values = rng.uniform(*SOFT_HU) + rng.uniform(*SOFT_SPREAD) * body_texture
    fat = ranks >= 1 - fat_fraction
    values[fat] = rng.uniform(*FAT_HU) + rng.uniform(*FAT_SPREAD) * body_texture[fat]
    gas = bowel_ranks < gas_fraction
    values[gas] = rng.uniform(*GAS_HU)
    contrast = (bowel_ranks >= gas_fraction) & (bowel_ranks < gas_fraction + contrast_fraction)
    values[contrast] = rng.uniform(*ORAL_CONTRAST_HU)
    values[depth <= 2] = rng.uniform(*SOFT_HU)
    return values


def corrupt(hu: np.ndarray, spacing_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Scanner effects on a painted (X, Y, Z) HU volume of isotropic ``spacing_mm``; returns float32.

    Bias field up to +-20 HU varying over ~30 mm; partial-volume blur of sigma 0.3-0.8 voxel
    in-plane and 0.3-1.2 voxel along S (slices up to ~3 voxels thick); noise of 0-25 HU,
    correlated half the time.
    """
    hu = hu + rng.uniform(0, 20) * smooth_field(hu.shape, 30.0 / spacing_mm, rng)
    in_plane = rng.uniform(0.3, 0.8)
    hu = ndimage.gaussian_filter(hu, (in_plane, in_plane, rng.uniform(0.3, 1.2)))
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    if rng.random() < 0.5:
        noise = ndimage.gaussian_filter(noise, rng.uniform(0.5, 1.0))
        noise /= max(float(noise.std()), 1e-6)
    return (hu + rng.uniform(0, 25) * noise).astype(np.float32)


def synthesise(structures: np.ndarray, depth_mm: np.ndarray, spacing_mm: float, rng: np.random.Generator,
               phase: str | None = None, random_phase: float = 0.2) -> np.ndarray:
    """Paint then corrupt: (X, Y, Z) structure ids -> (X, Y, Z) float32 synthetic CT in HU."""
    return corrupt(paint(structures, depth_mm, rng, phase, random_phase), spacing_mm, rng)
