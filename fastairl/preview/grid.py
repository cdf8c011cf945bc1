"""The PNG grid: per pair, the source image with each view's crop box, then each view, captioned.

Why exact pixels: the grid is for judging views by eye, so a view is shown at an integer
upscale (nearest neighbour) and a person sees the very pixels the model gets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastairl.data.recipes import ViewRecipe
from fastairl.preview.ops import CAPTION_LINES, view_caption
from fastairl.preview.result import PreviewError, PreviewResult, denormalize, to_uint8_hwc

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: Grid layout (pixels): gap between cells and around the grid.
PAD = 6
#: Display colours of the views' crop boxes and caption headings (RGB), view 1 first.
VIEW_COLOURS = ((215, 40, 40), (35, 95, 230), (30, 150, 60), (200, 130, 0))
_BACKGROUND = (255, 255, 255)
_LETTERBOX = (200, 200, 200)
_TEXT = (20, 20, 20)


@dataclass(frozen=True)
class GridGeometry:
    """Where everything sits in the PNG (pixels)."""

    rows: int
    cols: int
    cell: int
    font_size: int
    line_h: int
    title_h: int
    caption_h: int

    @property
    def width(self) -> int:
        return self.cols * self.cell + (self.cols + 1) * PAD

    @property
    def row_h(self) -> int:
        return self.cell + self.caption_h + PAD

    @property
    def height(self) -> int:
        return self.title_h + self.rows * self.row_h + PAD

    def cell_origin(self, row: int, col: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel of the image in cell (row, col)."""
        return PAD + col * (self.cell + PAD), self.title_h + PAD + row * self.row_h


def grid_geometry(rows: int, cols: int, cell: int) -> GridGeometry:
    """Layout of a grid of ``rows`` x ``cols`` square cells of ``cell`` pixels with captions.

    Width ``cols * cell + (cols + 1) * PAD``; height ``title + rows * (cell + caption + PAD)
    + PAD``, where the title is one text line and a caption :data:`CAPTION_LINES` lines,
    the font scaling with the cell so a caption line fits under its cell.
    """
    font_size = max(9, min(16, cell // 19))
    line_h = font_size + 3
    return GridGeometry(rows=rows, cols=cols, cell=cell, font_size=font_size, line_h=line_h,
                        title_h=line_h + PAD, caption_h=CAPTION_LINES * line_h + 2)


def default_cell(image_size: int) -> int:
    """Display cell: the view size times the smallest integer that makes it >= 224 px.

    Integer factors keep the nearest-neighbour upscale an exact pixel replication, so
    small views stay readable and unblurred and the grid shows the true pixels.
    """
    return image_size * max(1, math.ceil(224 / image_size))


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_grid(res: PreviewResult, rows: int | None = None, cell: int | None = None) -> "PILImage":
    """The PNG grid as a PIL image: per pair, the source image and each view, captioned.

    Source images are letterboxed into the cell with each view's crop box drawn in the
    view's colour (where the loader reported it); views are denormalised and shown at
    ``cell`` pixels (nearest-neighbour, so an integer upscale shows the exact pixels).
    """
    from PIL import Image, ImageDraw

    n_views = len(res.views)
    rows = min(rows if rows is not None else len(res.sources), len(res.sources), res.views[0].shape[0])
    if rows < 1:
        raise PreviewError("nothing to draw: no pairs were kept for the grid")
    size = res.views[0].shape[-1]
    cell = cell if cell is not None else default_cell(size)
    geo = grid_geometry(rows, 1 + n_views, cell)
    font = _font(geo.font_size)
    canvas = Image.new("RGB", (geo.width, geo.height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    m = res.meta
    title = (f"fastairl preview  exp {m.get('exp') or '-'}  recipe {m['recipe']}  loader {m['loader']}  "
             f"seed {m['seed']}  {m['image_size']}px  {res.num_pairs} pairs")
    draw.text((PAD, PAD // 2), title, fill=_TEXT, font=font)
    recipe = [ViewRecipe(**{k: (tuple(x) if isinstance(x, list) else x) for k, x in d.items()})
              for d in m["recipe_views"]]
    for r in range(rows):
        x0, y0 = geo.cell_origin(r, 0)
        canvas.paste(_source_cell(res, r, cell), (x0, y0))
        _caption(canvas, _source_caption(res, r), x0, y0 + cell, geo, font, heading=None)
        for v in range(n_views):
            x, y = geo.cell_origin(r, 1 + v)
            img = Image.fromarray(to_uint8_hwc(denormalize(res.views[v][r:r + 1])[0]))
            if img.size != (cell, cell):
                img = img.resize((cell, cell), Image.NEAREST if cell >= size else Image.BILINEAR)
            canvas.paste(img, (x, y))
            _caption(canvas, view_caption(res.params[v], r, v, recipe[v], m), x, y + cell, geo, font,
                     heading=VIEW_COLOURS[v % len(VIEW_COLOURS)])
    return canvas


def _source_caption(res: PreviewResult, r: int) -> list[str]:
    idx, label = int(res.indices[r]), int(res.labels[r])
    classes = res.meta.get("classes") or []
    cname = classes[label] if 0 <= label < len(classes) else ""
    hw = res.params[0]["src_hw"][r]
    src = res.sources[r] if r < len(res.sources) else None
    if int(hw[0]) < 0 and src is not None:
        hw = src.shape[:2]
    lines = [f"#{idx}  label {label}" if idx >= 0 else f"index not reported  label {label}", cname[:40],
             f"{int(hw[0])}x{int(hw[1])} px  epoch {int(res.epochs[r])}" if int(hw[0]) > 0 else
             f"epoch {int(res.epochs[r])}"]
    boxes = [f"view {v + 1}" for v in range(len(res.params)) if int(res.params[v]["box"][r][0]) >= 0]
    if boxes:
        lines.append("boxes: " + ", ".join(f"{b} {c}" for b, c in zip(boxes, ("red", "blue", "green", "orange"))))
    return lines


def _source_cell(res: PreviewResult, r: int, cell: int) -> "PILImage":
    from PIL import Image, ImageDraw

    out = Image.new("RGB", (cell, cell), _LETTERBOX)
    src = res.sources[r]
    if src is None:
        ImageDraw.Draw(out).text((4, cell // 2 - 6), f"source not reported\nby {res.meta['loader']}", fill=_TEXT)
        return out
    h, w = src.shape[:2]
    f = cell / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    ox, oy = (cell - nw) // 2, (cell - nh) // 2
    out.paste(Image.fromarray(src).resize((nw, nh), Image.BILINEAR), (ox, oy))
    d = ImageDraw.Draw(out)
    for v, p in enumerate(res.params):
        t, l, bh, bw = (int(b) for b in p["box"][r])
        if t < 0:
            continue
        colour = VIEW_COLOURS[v % len(VIEW_COLOURS)]
        rect = (ox + l * f, oy + t * f, ox + (l + bw) * f - 1, oy + (t + bh) * f - 1)
        d.rectangle(rect, outline=colour, width=2)
        d.text((rect[0] + 3, rect[1] + 1), str(v + 1), fill=colour)
    return out


def _caption(canvas, lines: list[str], x: int, y: int, geo: GridGeometry, font, heading) -> None:
    """Caption text under a cell, clipped to the cell's width (drawn on its own tile)."""
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (geo.cell, geo.caption_h), _BACKGROUND)
    d = ImageDraw.Draw(tile)
    for k, line in enumerate(lines[:CAPTION_LINES]):
        colour = heading if (heading is not None and k == 0) else _TEXT
        d.text((1, 1 + k * geo.line_h), line, fill=colour, font=font)
    canvas.paste(tile, (x, y))
