"""Regenerate the example scenes shipped in src/ovss/data/assets/examples/ (used by the README's first command).

    python scripts/make_examples.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ovss.data.synthetic import CLASSES, make_scene

# Seeds >= 2_000_000 lie outside both the train (< 1_000_000) and val (1_000_000 + i) seed ranges.
EXAMPLES = {"scene_a": 2_000_040, "scene_b": 2_000_021}
SIZE = 192
OUT = Path(__file__).resolve().parents[1] / "src" / "ovss" / "data" / "assets" / "examples"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, seed in EXAMPLES.items():
        scene = make_scene(seed, SIZE)
        Image.fromarray(scene.image).save(OUT / f"{name}.png")
        (OUT / f"{name}.txt").write_text("\n".join(CLASSES) + "\n")
        print(f"{name}.png  seed={seed}  present={scene.present}  caption={scene.caption!r}")


if __name__ == "__main__":
    main()
