"""Overview PNG of a study's result: for each explained class, three orthogonal slices through the map's peak
(in the scan where the map peaks), the map overlaid in a jet colour map where it is >= 0.25, labelled."""
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image, ImageDraw

TILE = 192
THRESHOLD, ALPHA = 0.25, 0.35


def jet(values: np.ndarray) -> np.ndarray:
    """[..] in 0..1 -> [.., 3] uint8, the classic jet colour map."""
    v = np.clip(values, 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).astype(np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0, 1)
    return (np.clip((image - lo) / (hi - lo + 1e-6), 0, 1) * 255).astype(np.uint8)


def _tile(image: np.ndarray, heat: np.ndarray, spacing_rc) -> Image.Image:
    rgb = np.repeat(_grey(image)[..., None], 3, axis=-1).astype(np.float32)
    mask = heat >= THRESHOLD
    rgb[mask] = (1 - ALPHA) * rgb[mask] + ALPHA * jet(heat)[mask]
    tile = Image.fromarray(rgb.astype(np.uint8))
    rows, cols = image.shape
    height = max(1, int(round(rows * spacing_rc[0] / spacing_rc[1])))  # physical aspect ratio
    scale = min(TILE / cols, TILE / height)  # fill the tile, up or down, keeping the physical aspect ratio
    tile = tile.resize((max(1, int(cols * scale)), max(1, int(height * scale))), Image.BILINEAR)
    canvas = Image.new("RGB", (TILE, TILE))
    canvas.paste(tile, ((TILE - tile.width) // 2, (TILE - tile.height) // 2))
    return canvas


def orthogonal_tiles(array: np.ndarray, heat: np.ndarray, spacing_ijk) -> List[Image.Image]:
    """Slices through the peak of `heat` along each voxel axis of a (K, J, I) volume (flipped so up is up)."""
    k, j, i = np.unravel_index(int(np.argmax(heat)), heat.shape)
    si, sj, sk = spacing_ijk
    return [_tile(array[k], heat[k], (sj, si)),
            _tile(array[:, j, :][::-1], heat[:, j, :][::-1], (sk, si)),
            _tile(array[:, :, i][::-1], heat[:, :, i][::-1], (sk, sj))]


def write_overview(path: Path, scans, maps: Dict[tuple, list], scores: dict) -> Path:
    rows = []
    for (task, cls), volumes in maps.items():
        best = int(np.argmax([v.max() for v in volumes]))
        scan = scans[best]
        prob = scores.get(task, {}).get(cls)
        label = f"{task}: {cls}" + (f"  p={prob:.2f}" if prob is not None else "") + \
                f"  | scan {best}: {scan.description[:40]}"
        rows.append((label, orthogonal_tiles(np.asarray(scan.array, np.float32), volumes[best], scan.spacing)))
    header = 18
    sheet = Image.new("RGB", (3 * TILE, max(1, len(rows)) * (TILE + header)), "black")
    draw = ImageDraw.Draw(sheet)
    for r, (label, tiles) in enumerate(rows):
        y = r * (TILE + header)
        draw.text((4, y + 3), label, fill="white")
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (c * TILE, y + header))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}")
    sheet.save(tmp, format="PNG")
    tmp.replace(path)
    return path
