"""The cell finder (core/cells/finder.py) on synthetic fields with white cells at known places,
on bad input, and (where ../shared is present) on a few real fields of another lab."""
from __future__ import annotations

import glob
import os
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from core.cells import synthetic
from core.cells.finder import (CELL_FLAGS, DEFAULT_UM_PER_PX, FieldCells, cut_out, decode_for_cells,
                               find_cells)
from core.errors import ImageError

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


def best(found: FieldCells, box) -> tuple[float, object]:
    pairs = [(iou(c.box, box), c) for c in found.cells]
    return max(pairs, key=lambda p: p[0]) if pairs else (0.0, None)


@pytest.fixture(scope="module")
def field():
    return synthetic.standard_field()


@pytest.mark.parametrize("um_per_px", [0.1, 0.25])
def test_synthetic_field_gives_each_white_cell_and_nothing_else(field, um_per_px):
    img = synthetic.draw(field, um_per_px)
    size = (img.shape[1], img.shape[0])
    found = find_cells(img)
    truth = [synthetic.box_px(c, um_per_px, size) for c in field.white_cells]
    for box in truth:
        assert best(found, box)[0] >= 0.5, (box, [c.box for c in found.cells])
    # the touching pair (cells 2 and 3) is split in two, the speck is no cell: exactly 5 cells
    assert len(found.cells) == len(field.white_cells)
    speck_x, speck_y = (v / um_per_px for v in field.specks[0])
    assert not any(c.box[0] <= speck_x < c.box[2] and c.box[1] <= speck_y < c.box[3] for c in found.cells)
    # the scale comes from the red cells, within 10%
    assert found.scale_source == "red_cells" and found.n_red_cells >= 3
    assert abs(found.um_per_px - um_per_px) / um_per_px < 0.10
    assert not found.single_cell_crop


def test_flags_border_and_touching_cells(field):
    img = synthetic.draw(field, 0.1)
    found = find_cells(img)
    size = (img.shape[1], img.shape[0])
    flags = [best(found, synthetic.box_px(c, 0.1, size))[1].flags for c in field.white_cells]
    assert flags[4] == {"border"}
    assert "touching" in flags[2] and "touching" in flags[3]
    assert flags[0] == flags[1] == frozenset()
    assert all(set(c.flags) <= set(CELL_FLAGS) for c in found.cells)


def test_cells_come_in_reading_order(field):
    img = synthetic.draw(field, 0.2)
    found = find_cells(img)
    size = (img.shape[1], img.shape[0])
    which = [max(range(5), key=lambda i: iou(c.box, synthetic.box_px(field.white_cells[i], 0.2, size)))
             for c in found.cells]
    # the top row (y 20-22 um: the right cell is higher) left to right, then the row at y 50-55 um
    assert which == [0, 1, 4, 2, 3]


def test_outlines_and_areas_are_in_the_image_grid(field):
    img = synthetic.draw(field, 0.1)
    c = best(find_cells(img), synthetic.box_px(field.white_cells[0], 0.1))[1]
    assert c.contour.dtype == np.int32 and c.contour.shape[1] == 2
    assert c.nucleus_contour is not None and c.nucleus_contour.shape[1] == 2
    true_area = np.pi * (field.white_cells[0].cell_um / 2 / 0.1) ** 2
    assert 0.5 * true_area < c.area_px < 1.5 * true_area
    nx0, ny0 = c.nucleus_contour.min(axis=0)
    nx1, ny1 = c.nucleus_contour.max(axis=0)
    assert c.box[0] <= nx0 and c.box[1] <= ny0 and nx1 < c.box[2] and ny1 < c.box[3]


def test_a_field_of_red_cells_only_has_no_white_cells(field):
    reds_only = synthetic.Field(red_cells=field.red_cells)
    found = find_cells(synthetic.draw(reds_only, 0.15))
    assert found.cells == ()
    assert found.scale_source == "red_cells"


@pytest.mark.parametrize("make", [
    lambda: np.full((480, 640, 3), 255, np.uint8),                      # blank white
    lambda: np.zeros((480, 640, 3), np.uint8),                          # black
    lambda: np.full((20, 20, 3), 200, np.uint8),                        # smaller than a cell
    lambda: np.full((3, 5, 3), 200, np.uint8),
    lambda: cv2.cvtColor(cv2.cvtColor(synthetic.draw(synthetic.standard_field(), 0.2), cv2.COLOR_RGB2GRAY),
                         cv2.COLOR_GRAY2RGB),                           # grayscale expanded to RGB
    lambda: (synthetic.draw(synthetic.standard_field(), 0.2).astype(np.uint16) * 257 >> 8).astype(np.uint8),
    lambda: np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8),  # noise
], ids=["blank", "black", "20x20", "3x5", "grayscale", "16-bit", "noise"])
def test_odd_images_give_a_result_not_an_exception(make):
    found = find_cells(make())
    assert isinstance(found, FieldCells)
    assert found.um_per_px > 0 and found.scale_source in ("red_cells", "default")
    assert all(len(c.box) == 4 for c in found.cells)


def test_blank_and_tiny_images_have_no_cells():
    assert find_cells(np.full((480, 640, 3), 255, np.uint8)).cells == ()
    assert find_cells(np.full((20, 20, 3), 200, np.uint8)).cells == ()


def test_sixteen_bit_field_finds_the_same_cells(field):
    img = synthetic.draw(field, 0.2)
    as16 = img.astype(np.uint16) * 257
    assert len(find_cells(as16).cells) == len(find_cells(img).cells) == 5


def test_reduced_decode_gives_boxes_in_the_original_grid(field):
    img = synthetic.draw(field, 0.1)
    h, w = img.shape[:2]
    half = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    found = find_cells(half, reduced_by=2)
    for c in field.white_cells:
        assert best(found, synthetic.box_px(c, 0.1, (w, h)))[0] >= 0.5
    assert abs(found.um_per_px - 0.1) / 0.1 < 0.10
    assert max(c.box[2] for c in found.cells) > w // 2  # not in the half grid


def packed_field(seed: int) -> tuple[synthetic.Field, synthetic.WhiteCell]:
    """180 red cells at random places on 100 x 75 um (most touch or overlap: few isolated round
    ones, so the scale comes from the distance transform's maxima) around one white cell."""
    rng = np.random.default_rng(seed)
    white = synthetic.WhiteCell(50, 37)
    reds = [(float(x), float(y)) for x, y in rng.uniform([0, 0], [100, 75], (180, 2))
            if (x - 50) ** 2 + (y - 37) ** 2 > 10 ** 2]
    return synthetic.Field(red_cells=reds, white_cells=[white]), white


@pytest.mark.parametrize("um_per_px", [0.1, 0.15])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_packed_red_cells_give_the_scale(seed, um_per_px):
    # stain-v4 took every 7 px maximum of the distance transform for a red cell's centre: on
    # the ragged outlines of touching cells it measured them too small on 4 of these 8
    # fields (0.51-0.71 x the true um per pixel); a centre must now be the farthest point
    # from the edge within 0.8 of its own radius
    field, white = packed_field(seed)
    img = synthetic.draw(field, um_per_px, seed)
    found = find_cells(img)
    assert found.scale_source == "red_cells"
    assert abs(found.um_per_px - um_per_px) / um_per_px < 0.25, found.um_per_px
    assert best(found, synthetic.box_px(white, um_per_px))[0] >= 0.5


def test_a_cell_on_black_is_one_single_cell_crop():
    img = np.zeros((450, 450, 3), np.uint8)
    cv2.circle(img, (225, 225), 120, synthetic.CYTOPLASM, -1)
    cv2.circle(img, (235, 215), 80, synthetic.NUCLEUS, -1)
    found = find_cells(img)
    assert found.single_cell_crop and len(found.cells) == 1
    assert found.scale_source == "default" and found.um_per_px == DEFAULT_UM_PER_PX
    assert iou(found.cells[0].box, (105, 105, 346, 346)) > 0.8


def test_a_narrow_crop_around_one_cell_is_a_single_cell_crop(field):
    img = synthetic.draw(field, 0.1)
    crop = img[220 - 150:220 + 150, 250 - 150:250 + 150]  # 30 um around the cell at (25, 22) um
    found = find_cells(crop)
    assert found.single_cell_crop and len(found.cells) == 1
    x0, y0, x1, y1 = found.cells[0].box
    assert x0 <= 150 < x1 and y0 <= 150 < y1


def test_cut_out_has_the_same_physical_content_at_two_camera_scales(field):
    cells = []
    for u in (0.1, 0.2):
        img = synthetic.draw(field, u)
        found = find_cells(img)
        c = best(found, synthetic.box_px(field.white_cells[0], u))[1]
        cells.append(cut_out(img, c, found.um_per_px, side_um=24, out_px=64).astype(np.float32))
    assert cells[0].shape == cells[1].shape == (64, 64, 3)
    same = np.abs(cells[0] - cells[1]).mean()
    # the same cell cut at a wrong scale (twice the side) is clearly different: the check can fail
    img = synthetic.draw(field, 0.2)
    found = find_cells(img)
    c = best(found, synthetic.box_px(field.white_cells[0], 0.2))[1]
    wrong = cut_out(img, c, found.um_per_px * 2, side_um=24, out_px=64).astype(np.float32)
    assert same < 8.0
    assert np.abs(cells[0] - wrong).mean() > 2 * same


def test_cut_out_from_a_reduced_decode_matches_the_full_one(field):
    img = synthetic.draw(field, 0.1)
    found = find_cells(img)
    c = found.cells[0]
    full = cut_out(img, c, found.um_per_px, side_um=20, out_px=48).astype(np.float32)
    half = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
    reduced = cut_out(half, c, found.um_per_px, side_um=20, out_px=48, reduced_by=2).astype(np.float32)
    assert np.abs(full - reduced).mean() < 6.0


def test_cut_out_pads_where_the_square_leaves_the_image(field):
    img = synthetic.draw(field, 0.1)
    found = find_cells(img)
    border = next(c for c in found.cells if "border" in c.flags)
    out = cut_out(img, border, found.um_per_px, side_um=30, out_px=80)
    assert out.shape == (80, 80, 3) and out.dtype == np.uint8
    # mirrored, not black: the left columns look like the image, not like zeros
    assert out[:, :5].mean() > 100
    with pytest.raises(ValueError):
        cut_out(img, border, found.um_per_px, side_um=0, out_px=80)


def test_decode_for_cells_reduces_a_large_jpeg(field):
    img = synthetic.draw(field, 0.1)
    big = cv2.resize(img, (3200, 2400), interpolation=cv2.INTER_LINEAR)
    data = cv2.imencode(".jpg", cv2.cvtColor(big, cv2.COLOR_RGB2BGR))[1].tobytes()
    rgb, reduced_by = decode_for_cells(data)
    assert reduced_by in (2, 4, 8)
    assert rgb.shape == (2400 // reduced_by, 3200 // reduced_by, 3)
    found = find_cells(rgb, reduced_by=reduced_by)
    # the original grid: 3200 px over 100 um
    assert abs(found.um_per_px - 100 / 3200) / (100 / 3200) < 0.10
    assert len(found.cells) == 5


def test_decode_for_cells_keeps_a_small_image_whole(field):
    data = cv2.imencode(".png", synthetic.draw(field, 0.2))[1].tobytes()
    rgb, reduced_by = decode_for_cells(data)
    assert reduced_by == 1 and rgb.shape == (375, 500, 3)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\0" * 50])
def test_decode_for_cells_refuses_garbage_with_one_sentence(data):
    with pytest.raises(ImageError) as err:
        decode_for_cells(data)
    assert "\n" not in str(err.value)


def test_decode_for_cells_keeps_the_pixel_limit(field):
    data = cv2.imencode(".png", synthetic.draw(field, 0.2))[1].tobytes()
    with pytest.raises(ImageError, match="too large"):
        decode_for_cells(data, max_pixels=1000)


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "bccd-boxes")),
                    reason="needs ../shared/datasets/bccd-boxes (real fields of another lab)")
def test_real_fields_of_another_lab():
    hits = total = 0
    for xml in sorted(glob.glob(os.path.join(SHARED, "bccd-boxes", "annotations", "*.xml")))[:12]:
        root = ET.parse(xml).getroot()
        truth = [tuple(int(float(o.find("bndbox").findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
                 for o in root.iter("object") if o.findtext("name") == "WBC"]
        with open(xml.replace("annotations", "images")[:-4] + ".jpg", "rb") as fh:
            rgb, r = decode_for_cells(fh.read())
        found = find_cells(rgb, reduced_by=r)
        assert found.scale_source == "red_cells" and 0.06 < found.um_per_px < 0.14
        total += len(truth)
        hits += sum(best(found, t)[0] >= 0.5 for t in truth)
    assert hits >= 0.8 * total


def test_a_cell_with_very_pale_cytoplasm_gets_a_box_covering_it(monkeypatch):
    # a neutrophil-like cell whose cytoplasm is barely darker than the background (BCCD, Raabin):
    # the box must cover the 18 um cell, not stop at its 7 um nucleus (stain-v1: IoU 0.24)
    monkeypatch.setattr(synthetic, "CYTOPLASM", (220, 212, 226))  # a third of a red cell's contrast
    cell = synthetic.WhiteCell(50, 37, 18, 7)
    reds = [(x, y) for x in range(8, 100, 11) for y in range(8, 75, 11) if (x - 50) ** 2 + (y - 37) ** 2 > 15 ** 2]
    f = synthetic.Field(white_cells=[cell], red_cells=reds)
    img = synthetic.draw(f, 0.1)
    found = find_cells(img)
    assert len(found.cells) == 1
    assert best(found, synthetic.box_px(cell, 0.1))[0] >= 0.7, found.cells[0].box


def test_a_nucleus_candidate_stained_like_the_red_cells_is_dropped():
    # Raabin's grey-violet red cells pass the nucleus threshold at their rims: a candidate no
    # more stained than the field's red cells is no nucleus, a clearly bluer one is kept
    from core.cells.finder import _drop_red_cell_nuclei, _Stain

    work = np.full((60, 90, 3), (230, 200, 190), np.uint8)  # background: blue - green = -10
    fg = np.zeros((60, 90), bool)
    work[5:55, 60:88] = (170, 120, 160)       # red cells: stain (160-120)+10 = 50
    fg[5:55, 60:88] = True
    markers = np.zeros((60, 90), np.int32)
    work[10:20, 10:20] = (120, 60, 160)        # a nucleus: stain 110
    markers[10:20, 10:20] = 1
    work[30:40, 10:20] = (170, 118, 162)       # a red cell's rim: stain 54
    markers[30:40, 10:20] = 2
    fg |= markers > 0
    stain = _Stain(np.array([230.0, 200.0, 190.0]), 45.0, 60.0)
    kept = _drop_red_cell_nuclei(markers, work, stain, fg, markers > 0)
    assert int(kept.max()) == 1 and kept[15, 15] == 1 and kept[35, 15] == 0


def test_a_crop_with_two_whole_red_cells_takes_its_scale_from_them():
    # a pre-cut crop (PBC): two whole red cells, the others cut by the border; the packed-cell
    # fallback measured the cut cells' ridges (0.31 um/px on a ~0.1 crop) and let platelets
    # pass as cells
    cell = synthetic.WhiteCell(18, 18, 11, 8)
    reds = [(6, 31), (31, 6), (-1, 8), (37, 30), (18, -2), (36, 15)]
    f = synthetic.Field(width_um=36, height_um=36, white_cells=[cell], red_cells=reds)
    found = find_cells(synthetic.draw(f, 0.1))
    assert found.scale_source == "red_cells" and found.n_red_cells == 2
    assert abs(found.um_per_px - 0.1) / 0.1 < 0.10


def test_two_lobes_of_one_nucleus_are_one_cell():
    # a band/segmented neutrophil: two 4.5 um lobes 2.5 um apart in one cytoplasm (lobes 3.5 um
    # apart still come out as two cells: docs/cells.md)
    cell = synthetic.WhiteCell(50, 37, 14, 0.5)
    reds = [(x, y) for x in range(8, 100, 11) for y in range(8, 75, 11) if (x - 50) ** 2 + (y - 37) ** 2 > 13 ** 2]
    img = synthetic.draw(synthetic.Field(white_cells=[cell], red_cells=reds), 0.1)
    for dx in (-3.5, 3.5):  # lobe centres: radius 2.25 + half the gap 1.25
        cv2.circle(img, (round((50 + dx) * 10), 370), 22, synthetic.NUCLEUS, -1, cv2.LINE_AA)
    found = find_cells(img)
    assert len(found.cells) == 1
    assert best(found, synthetic.box_px(cell, 0.1))[0] >= 0.6, found.cells[0].box


def test_red_cells_violet_rims_are_not_nucleus_stain():
    # some Raabin fields: red cells' violet rims pass the nucleus threshold and make up half the
    # foreground; the rims then formed one net of "nucleus" (dropped whole, or a field-sized cell)
    # and the scale came from the rims' pale centres (0.13 um/px on a 0.067 field)
    from core.cells.finder import _measure_stain, _stain_maps

    img = np.full((100, 100, 3), (230, 200, 190), np.uint8)  # background: blue - green = -10
    for cx in range(10, 100, 20):
        for cy in range(10, 100, 20):
            cv2.circle(img, (cx, cy), 9, (170, 115, 168), -1)  # rim: stain 63
            cv2.circle(img, (cx, cy), 4, (200, 150, 170), -1)  # centre: stain 30
    cv2.circle(img, (50, 50), 8, (120, 60, 170), -1)  # a nucleus: stain 120
    stain = _measure_stain(img)
    _, nucleus = _stain_maps(img, stain)
    assert nucleus[50, 50] and not nucleus[10, 18], stain.nucleus_threshold


@pytest.mark.parametrize("um_per_px", [0.067, 0.08, 0.13])
def test_a_white_cell_cut_by_the_border_has_a_box_reaching_the_edge(um_per_px):
    # cells cut by the right and bottom borders: returned, flagged, their boxes reach the edge
    # (stain-v2 left them a pixel or two short: the working grid's rounding)
    whites = [synthetic.WhiteCell(40, 30), synthetic.WhiteCell(78.5, 20), synthetic.WhiteCell(30, 58.5)]
    reds = [(x, y) for x in range(8, 80, 10) for y in range(6, 60, 10)
            if all((x - c.x_um) ** 2 + (y - c.y_um) ** 2 > 11 ** 2 for c in whites)]
    img = synthetic.draw(synthetic.Field(width_um=80, height_um=60, white_cells=whites, red_cells=reds), um_per_px)
    h, w = img.shape[:2]
    found = find_cells(img)
    right = best(found, synthetic.box_px(whites[1], um_per_px, (w, h)))
    bottom = best(found, synthetic.box_px(whites[2], um_per_px, (w, h)))
    assert right[0] >= 0.5 and "border" in right[1].flags and right[1].box[2] == w, right[1].box
    assert bottom[0] >= 0.5 and "border" in bottom[1].flags and bottom[1].box[3] == h, bottom[1].box


def test_a_crop_keeps_a_neighbour_cut_by_the_border_showing_a_whole_nucleus():
    # Raabin's fields are centred on a white cell like a pre-cut crop; a second white cell cut by
    # the border but showing ~120 um2 of nucleus is a cell to count, not a crop's sliver
    central = synthetic.WhiteCell(18, 18, 11, 8)
    cut = synthetic.WhiteCell(34, 18, 17, 15)
    reds = [(6, 31), (31, 4), (6, 5), (20, 33)]
    img = synthetic.draw(synthetic.Field(width_um=36, height_um=36, white_cells=[central, cut], red_cells=reds), 0.1)
    found = find_cells(img)
    assert not found.single_cell_crop and len(found.cells) == 2
    neighbour = best(found, synthetic.box_px(cut, 0.1, (img.shape[1], img.shape[0])))[1]
    assert "border" in neighbour.flags and neighbour.box[2] == img.shape[1]


def test_red_cells_too_small_for_the_fields_white_cell_give_no_scale():
    # wbc-masks dataset1: a 120 px crop filled by one white cell, whose "red cells" are slivers;
    # their scale (0.4-0.6 um/px) made the cell 30+ um and its rays, capped at 12 um, fell short
    cell = synthetic.WhiteCell(8, 8, 13, 10)
    reds = [(1.5, 1.5), (14.5, 1.5), (1.5, 14.5), (14.5, 14.5)]
    f = synthetic.Field(width_um=16, height_um=16, red_cell_um=2.5, white_cells=[cell], red_cells=reds)
    found = find_cells(synthetic.draw(f, 0.1))
    assert found.scale_source == "default" and found.um_per_px == DEFAULT_UM_PER_PX


def test_a_big_nucleus_off_the_centre_of_a_field_keeps_the_red_cells_scale():
    # Taleqani: a cluster of touching blasts off the centre is no crop's cell; the crop check of
    # the scale must not overrule the red cells there (it sent ~1% of the fields to 0.1 um/px)
    cluster = synthetic.WhiteCell(9, 9, 20, 18.5)  # nucleus ~270 um2, its box short of the centre
    reds = [(x, y) for x in range(5, 40, 9) for y in range(5, 40, 9) if (x - 9) ** 2 + (y - 9) ** 2 > 15 ** 2]
    found = find_cells(synthetic.draw(synthetic.Field(width_um=40, height_um=40, white_cells=[cluster], red_cells=reds), 0.2))
    assert found.scale_source == "red_cells" and abs(found.um_per_px - 0.2) / 0.2 < 0.15, found.um_per_px


def test_a_neutrophils_big_lobes_beyond_the_closing_are_one_cell():
    # Raabin train_110de9b7: a segmented neutrophil whose lobes (~30 and ~40 um^2) lie further
    # apart than the closing joins; a lobe under 25 um^2 only joined its neighbour, so the
    # cell came out as two (box IoU 0.49). A piece under 40 um^2 within 4 um now joins.
    cell = synthetic.WhiteCell(50, 37, 16, 0.5)
    reds = [(x, y) for x in range(8, 100, 11) for y in range(8, 75, 11) if (x - 50) ** 2 + (y - 37) ** 2 > 14 ** 2]
    img = synthetic.draw(synthetic.Field(white_cells=[cell], red_cells=reds), 0.1)
    # lobes of 6.2 um (30 um^2) and 7.6 um (45 um^2) across, 3.6 um apart edge to edge
    cv2.circle(img, (round((50 - 3.1 - 1.8) * 10), 370), 31, synthetic.NUCLEUS, -1, cv2.LINE_AA)
    cv2.circle(img, (round((50 + 1.8 + 3.8) * 10), 370), 38, synthetic.NUCLEUS, -1, cv2.LINE_AA)
    found = find_cells(img)
    assert len(found.cells) == 1, [c.box for c in found.cells]
    assert best(found, synthetic.box_px(cell, 0.1))[0] >= 0.6, found.cells[0].box


@pytest.mark.parametrize("um_per_px", [0.1, 0.45])
def test_packed_nuclei_come_out_as_separate_cells(um_per_px):
    # stain-v5 closed the touching nuclei of four packed blasts into one region and outlined
    # them as one cell (Taleqani's crowded fields: up to ~15 blasts as one)
    field, packed = synthetic.packed_field()
    img = synthetic.draw(field, um_per_px)
    size = (img.shape[1], img.shape[0])
    found = find_cells(img, image_kind="fields")
    assert len(found.cells) == len(field.white_cells), [c.box for c in found.cells]
    for c in packed:
        assert best(found, synthetic.box_px(c, um_per_px, size))[0] >= 0.5


@pytest.mark.parametrize("um_per_px", [0.125, 0.45])
def test_a_burnt_in_label_is_no_cell(field, um_per_px):
    # a scale label in a stain-like blue on a white box: stain-v5 found it as a sixth cell
    img, (x0, y0, x1, y1) = synthetic.burn_label(synthetic.draw(field, um_per_px))
    found = find_cells(img, image_kind="fields")
    assert not any(x0 <= c.centre[0] <= x1 and y0 <= c.centre[1] <= y1 for c in found.cells)
    assert len(found.cells) == len(field.white_cells)

