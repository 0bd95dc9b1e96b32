"""Draw hemascan's icon (a pale cell with a purple blast nucleus) into resources/icons:
hemascan.svg (scalable), hemascan.png (256 px, Linux menus), hemascan.ico (Windows).

    .venv/bin/python packaging/make_icon.py
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent.parent / "resources" / "icons"
SVG = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256" viewBox="0 0 256 256">
  <rect x="8" y="8" width="240" height="240" rx="48" fill="#f3dde4"/>
  <circle cx="78" cy="188" r="34" fill="#d9919d"/>
  <circle cx="78" cy="188" r="12" fill="#e6b8c1"/>
  <circle cx="196" cy="70" r="28" fill="#d9919d"/>
  <circle cx="196" cy="70" r="10" fill="#e6b8c1"/>
  <ellipse cx="132" cy="124" rx="86" ry="78" fill="#bea9d8"/>
  <ellipse cx="132" cy="124" rx="58" ry="50" fill="#5f2f88"/>
  <circle cx="112" cy="110" r="9" fill="#9a6fbf"/>
  <circle cx="152" cy="138" r="7" fill="#9a6fbf"/>
</svg>
"""


def draw(size: int = 1024) -> Image.Image:
    s = size / 256
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)

    def ell(cx, cy, rx, ry, fill):
        d.ellipse([(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s], fill=fill)

    d.rounded_rectangle([8 * s, 8 * s, 248 * s, 248 * s], radius=48 * s, fill="#f3dde4")
    ell(78, 188, 34, 34, "#d9919d"), ell(78, 188, 12, 12, "#e6b8c1")
    ell(196, 70, 28, 28, "#d9919d"), ell(196, 70, 10, 10, "#e6b8c1")
    ell(132, 124, 86, 78, "#bea9d8"), ell(132, 124, 58, 50, "#5f2f88")
    ell(112, 110, 9, 9, "#9a6fbf"), ell(152, 138, 7, 7, "#9a6fbf")
    return img


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "hemascan.svg").write_text(SVG)
    big = draw()
    big.resize((256, 256), Image.LANCZOS).save(OUT / "hemascan.png", optimize=True)
    big.resize((256, 256), Image.LANCZOS).save(OUT / "hemascan.ico",
                                               sizes=[(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)])
    print("wrote", *sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    main()
