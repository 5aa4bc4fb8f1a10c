"""Make the README's picture (``docs/images/demo.png``) from the files an ``assd demo`` run wrote.

    .venv/bin/assd demo --out runs/demo && .venv/bin/python scripts/readme_picture.py runs/demo

One row: the detections on the first validation image, then the attention weights of the query
position (the centre of its best detection) on three prediction maps. Colours are reduced to a
256-entry palette so the PNG stays small (144 KB for the committed one) in the repository.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import cv2
from PIL import Image

from assd.evaluation.visualize import image_grid
from assd.utils import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "images" / "demo.png"
ATTENTION_MAPS = (1, 2, 3)
TILE_WIDTH = 300


def _rgb(path: Path):
    picture = cv2.imread(str(path))
    if picture is None:
        sys.exit(f"error: {path}: missing or unreadable: run 'assd demo --out DIR' first, then pass DIR")
    return cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)


def main(demo_out: Path) -> None:
    report_file = demo_out / "report.json"
    if not report_file.is_file():
        sys.exit(f"error: {report_file}: not found: run 'assd demo --out {demo_out}' first")
    report = json.loads(report_file.read_text())
    draw = report["steps"]["draw"]["result"]
    prediction = demo_out / draw["predictions"][0]
    attention_dir = (demo_out / draw["attention"][0]).parent
    info = json.loads((attention_dir / "attention.json").read_text())
    tiles = [_rgb(prediction)]
    titles = [f"assd-mini detections (mAP {100 * report['artifacts'][0]['mAP']:.1f}%)"]
    for index in ATTENTION_MAPS:
        size = info["maps"][index]["size"]
        tiles.append(_rgb(attention_dir / f"attention_map{index}.png"))
        titles.append(f"attention of the dot, map {index} ({size[0]}x{size[1]})")
    grid = image_grid(tiles, titles, columns=len(tiles), tile_width=TILE_WIDTH)
    buffer = io.BytesIO()
    Image.fromarray(grid).quantize(colors=256).save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(OUTPUT, buffer.getvalue())
    print(f"wrote {OUTPUT.relative_to(REPO)} ({len(buffer.getvalue()) / 1e3:.0f} KB, {grid.shape[1]}x{grid.shape[0]})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/readme_picture.py DEMO_OUT_DIR")
    try:
        main(Path(sys.argv[1]))
    except (KeyError, IndexError, ValueError) as exc:  # a report.json from another tool or an unfinished run
        sys.exit(f"error: {sys.argv[1]}/report.json: not a finished assd demo report ({exc!r}): run 'assd demo' again")
