"""On-screen text: the share of the frame that persistent text covers (``text_area``).

Reads: frames (the clip's sampled JPEGs), status. Adds: text_area (float64, 0..1; null for rows
not kept or without frames), text_model (the detector that measured it).
Resources: CPU. PP-OCRv4 text detection (DB, Liao et al., AAAI 2020) through ONNX Runtime, from
the rapidocr-onnxruntime package, whose wheel ships the weights: nothing is downloaded.

Only text that persists across the sampled frames counts. Subtitles, captions, watermarks and
channel logos stay put; a sign glimpsed in one frame does not. Cosmos-Curate's overlay-text
filter asks the same of PP-OCRv4 boxes (detected on every 3rd frame, a track must last 10
frames, 3 detections, at IoU >= 0.9; cosmos_curate/models/paddle_ocr.py). vidcurate sees only
a few frames spread over the clip, so tracking by IoU becomes coverage: a box counts when text
covers at least ``min_cover`` of it in at least ``min_persist`` sampled frames (its own
included). Coverage, not IoU, because successive subtitle lines sit in one place with different
lengths. Text fixed in the picture of a static shot (a shop sign) persists too and is counted,
as in Cosmos-Curate.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa

from schemas.scores import BY_NAME
from stages.base import ModelStage, decode_jpegs, subsample

# Columns read and added. The score and its reason (text_overlay, above scores.max_text_area)
# are declared in schemas.scores, with the report's scale.
READS = {"frames": pa.list_(pa.binary()), "status": pa.string()}
COLUMNS = {"text_area": BY_NAME["text_area"].type, "text_model": pa.string()}
PACKAGE = "rapidocr-onnxruntime"
# Areas are counted at cell centres on a grid with this many cells along the frame's long side:
# about 1.5 px a cell on the 224-px frames analysis keeps, so a box edge moves the area by at
# most half a cell's width.
GRID = 256


def polygon_cells(polygon, scale: float, shape: tuple[int, int]) -> tuple[int, int, np.ndarray]:
    """(row, col, mask): the grid cells whose centres lie inside ``polygon`` (pixel [x, y] points,
    any simple polygon; even-odd rule), as a boolean mask over its bounding cells at (row, col)."""
    p = np.asarray(polygon, np.float64).reshape(-1, 2) * scale
    h, w = shape
    c0, r0 = (max(0, min(n, int(np.floor(v)))) for n, v in ((w, p[:, 0].min()), (h, p[:, 1].min())))
    c1, r1 = (max(0, min(n, int(np.ceil(v)))) for n, v in ((w, p[:, 0].max()), (h, p[:, 1].max())))
    y = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5
    x = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5
    inside = np.zeros((r1 - r0, c1 - c0), bool)
    for (xa, ya), (xb, yb) in zip(p, np.roll(p, -1, axis=0)):
        if ya != yb:  # a horizontal edge crosses no row of centres
            inside ^= ((ya > y) != (yb > y)) & (x < xa + (y - ya) * (xb - xa) / (yb - ya))
    return r0, c0, inside


def persistent_mask(frame_boxes: list, width: int, height: int, *, min_persist: int = 2,
                    min_cover: float = 0.5, grid: int = GRID) -> np.ndarray:
    """Grid cells covered by persistent boxes. ``frame_boxes``: one list of polygons per sampled
    frame. A box persists when text covers at least ``min_cover`` of its cells in at least
    ``min_persist`` frames, its own included; with fewer frames than that, in every frame."""
    scale = grid / max(width, height)
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    out = np.zeros(shape, bool)
    cells = [[polygon_cells(b, scale, shape) for b in frame] for frame in frame_boxes]
    text = [np.zeros(shape, bool) for _ in cells]  # each frame's text, all its boxes
    for mask, frame in zip(text, cells):
        for r, c, m in frame:
            mask[r:r + m.shape[0], c:c + m.shape[1]] |= m
    need = min(min_persist, len(cells))
    for f, frame in enumerate(cells):
        for r, c, m in frame:
            box = (slice(r, r + m.shape[0]), slice(c, c + m.shape[1]))
            others = sum(1 for g, mask in enumerate(text) if g != f and (mask[box] & m).sum() >= min_cover * m.sum())
            if m.any() and 1 + others >= need:
                out[box] |= m
    return out


def text_area(frame_boxes: list, width: int, height: int, **persistence) -> float:
    """Union area of the persistent boxes over the frame area, in [0, 1] (0.0 without frames or
    boxes). Keywords as persistent_mask."""
    return float(persistent_mask(frame_boxes, width, height, **persistence).mean())


def detector_id() -> str:
    """The package and its detection weights, e.g. ``rapidocr-onnxruntime 1.4.4
    ch_PP-OCRv4_det_infer``, read from the installed package without loading it."""
    import importlib.util
    from importlib.metadata import version
    from pathlib import Path

    import yaml

    root = Path(importlib.util.find_spec("rapidocr_onnxruntime").submodule_search_locations[0])
    weights = Path(yaml.safe_load((root / "config.yaml").read_text())["Det"]["model_path"]).stem
    return f"{PACKAGE} {version(PACKAGE)} {weights}"


class TextAreaStage(ModelStage):
    """Measures ``text_area`` on the kept clips' sampled frames; decides nothing.

    ``frames``: sampled frames of a clip given to the detector (evenly spread). ``min_persist``:
    sampled frames a box must be covered in. 2 is the least that tells text that stays from text
    that passes: analysis keeps 4 frames spread over clips of at least 1 s, so two of them lie
    at least a quarter of the clip apart (0.25 s, near Cosmos-Curate's 10 frames at 30 fps), while
    demanding 3 of 4 would miss subtitles shown in the gaps between lines. ``min_cover``: share
    of a box that another frame's text must cover (half: a shorter line under a longer one still
    counts). ``det_side``: short side the detector sees; the 224-px frames scaled up 2x show it
    text down to 1/40 of the frame height (at 320, 1/24, for a third of the time).
    ``box_thresh``: the detector's mean box score (PaddleOCR's det_db_box_thresh default, 0.6;
    0.5 let car lights through here). ``threads``: ONNX Runtime threads.
    """

    def __init__(self, *, frames: int = 4, min_persist: int = 2, min_cover: float = 0.5,
                 det_side: int = 448, box_thresh: float = 0.6, threads: int = 1):
        if not 1 <= min_persist <= frames:
            raise ValueError(f"need 1 <= min_persist <= frames, got {min_persist} and {frames}")
        if not 0 < min_cover <= 1 or not 0 < box_thresh < 1:
            raise ValueError("min_cover must be in (0, 1] and box_thresh in (0, 1)")
        if det_side < 32 or threads < 1:
            raise ValueError("det_side must be >= 32 and threads >= 1")
        super().__init__(model=None, settings=SimpleNamespace(
            frames=frames, min_persist=min_persist, min_cover=min_cover, det_side=det_side,
            box_thresh=box_thresh, threads=threads))

    @property
    def model_id(self) -> str:
        """Provenance recorded beside the score (text_model)."""
        return detector_id()

    def setup(self) -> None:
        from rapidocr_onnxruntime import RapidOCR

        s = self.settings
        # settings go to the constructor: keywords given to a call would reset box_thresh
        self._engine = RapidOCR(det_limit_side_len=s.det_side, det_limit_type="min", det_box_thresh=s.box_thresh,
                                intra_op_num_threads=s.threads, inter_op_num_threads=1)

    def detect(self, frames: list[bytes]) -> tuple[list[list], int, int]:
        """(boxes per sampled frame, width, height): each box four [x, y] points in pixels."""
        self.ensure_ready()
        images = decode_jpegs(subsample(frames, self.settings.frames))
        boxes = []
        for image in images:
            bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
            found, _ = self._engine(bgr, use_det=True, use_cls=False, use_rec=False)
            boxes.append(found or [])
        return boxes, images[0].width, images[0].height

    def score(self, frames: list[bytes] | None) -> float | None:
        if not frames:
            return None
        boxes, width, height = self.detect(frames)
        return text_area(boxes, width, height, min_persist=self.settings.min_persist,
                         min_cover=self.settings.min_cover)

    def process(self, batch: pa.Table) -> pa.Table:
        areas = [self.score(frames) if status == "kept" else None
                 for status, frames in zip(batch.column("status").to_pylist(), batch.column("frames").to_pylist())]
        model_id = self.model_id
        models = [None if a is None else model_id for a in areas]
        for name, values in (("text_area", areas), ("text_model", models)):
            column = pa.array(values, COLUMNS[name])
            i = batch.schema.get_field_index(name)
            batch = (batch.set_column(i, pa.field(name, COLUMNS[name]), column) if i >= 0
                     else batch.append_column(pa.field(name, COLUMNS[name]), column))
        return batch
