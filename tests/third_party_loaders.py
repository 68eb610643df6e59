"""The dataset loaders of the tools the export targets, reduced to what reads our files and
written from their sources (read with the project's source search; no code copied):

- nerfstudio 1.1.5 `nerfstudio/data/dataparsers/nerfstudio_dataparser.py` (`Nerfstudio.
  _generate_dataparser_outputs`) and `nerfstudio/data/utils/data_utils.py`
  (`get_depth_image_from_path`). nerfstudio itself does not install here without its heavy
  dependencies (the parser imports open3d at module level). Kept: intrinsics are taken from the
  top level when the key is there (`fx_fixed = "fl_x" in meta`), per frame otherwise; frames are
  sorted by file name; `{split}_filenames` lists choose the split; depth files come from
  `depth_file_path` and are read with `cv2.IMREAD_ANYDEPTH` times the PARSER option
  `depth_unit_scale_factor` (default 1e-3; a key in transforms.json is not read). Left out: the
  pose re-orientation and scaling (a similarity transform of poses and points alike, so it does
  not change whether depths back-project onto the geometry).
- instant-ngp `src/testbed_nerf.cu` / `nerf_loader.cu`: per-frame `file_path`, `depth_path`,
  `transform_matrix`; depth = uint16 value x top-level `integer_depth_scale`.
- gsplat `examples/datasets/blender.py` (`Dataset`): reads `transforms_{split}.json`, appends
  `.png` to `file_path` (after stripping "./"), flips the OpenGL c2w to OpenCV (columns 1, 2
  negated), one pinhole K from `camera_angle_x` with the principal point at the image centre.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np


def nerfstudio_parse(data_dir: Path, split: str = "train",
                     depth_unit_scale_factor: float = 1e-3) -> dict:
    meta = json.loads((data_dir / "transforms.json").read_text())
    fixed = {k: k in meta for k in ("fl_x", "fl_y", "cx", "cy", "h", "w")}
    frames = [meta["frames"][i] for i in np.argsort([str(data_dir / f["file_path"])
                                                     for f in meta["frames"]])]
    per: dict[str, list] = {k: [] for k in fixed}
    names, poses, depths = [], [], []
    for fr in frames:
        for k in fixed:
            if not fixed[k]:
                assert k in fr, f"{k} not specified in frame"
                per[k].append(float(fr[k]))
        names.append(str(data_dir / fr["file_path"]))
        poses.append(np.array(fr["transform_matrix"], dtype=np.float64))
        if "depth_file_path" in fr:
            depths.append(str(data_dir / fr["depth_file_path"]))
    assert not depths or len(depths) == len(names)
    if f"{split}_filenames" in meta:
        wanted = {str(data_dir / x) for x in meta[f"{split}_filenames"]}
        assert wanted <= set(names), "some split filenames were not found"
        idx = [i for i, n in enumerate(names) if n in wanted]
    elif any(f"{s}_filenames" in meta for s in ("train", "val", "test")):
        raise RuntimeError(f"The dataset's list of filenames for split {split} is missing.")
    else:  # eval_mode "fraction" 0.9
        n_train = int(np.ceil(len(names) * 0.9))
        idx = list(range(n_train)) if split == "train" else list(range(n_train, len(names)))
    out = {"image_filenames": [names[i] for i in idx], "poses": [poses[i] for i in idx],
           "depth_filenames": [depths[i] for i in idx] if depths else None,
           "depth_unit_scale_factor": depth_unit_scale_factor}
    for k in fixed:
        out[k] = [float(meta[k])] * len(idx) if fixed[k] else [per[k][i] for i in idx]
    return out


def nerfstudio_depth(path: str, scale_factor: float) -> np.ndarray:
    """nerfstudio's get_depth_image_from_path for a .png (no resize: same size)."""
    return cv2.imread(path, cv2.IMREAD_ANYDEPTH).astype(np.float64) * scale_factor


def instant_ngp_frames(data_dir: Path, name: str = "transforms.json") -> list[dict]:
    meta = json.loads((data_dir / name).read_text())
    scale = float(meta["integer_depth_scale"])
    out = []
    for fr in meta["frames"]:
        d = None
        if "depth_path" in fr:
            d = np.asarray(imageio.imread(data_dir / fr["depth_path"])).astype(np.float64) * scale
        fx = fr.get("fl_x", meta.get("fl_x"))
        out.append({"image": data_dir / fr["file_path"], "depth": d,
                    "c2w": np.array(fr["transform_matrix"], dtype=np.float64), "fl_x": fx,
                    "fl_y": fr.get("fl_y", meta.get("fl_y")), "cx": fr.get("cx", meta.get("cx")),
                    "cy": fr.get("cy", meta.get("cy"))})
    return out


def gsplat_blender(data_dir: Path, split: str) -> dict:
    t = json.loads((data_dir / f"transforms_{split}.json").read_text())
    ids, c2ws, images = [], [], []
    for fr in t["frames"]:
        image_id = fr["file_path"].replace("./", "")
        ids.append(image_id)
        images.append(imageio.imread(data_dir / f"{image_id}.png"))
        c2w = np.array(fr["transform_matrix"], dtype=np.float64)
        c2w[0:3, 1:3] *= -1  # OpenGL -> OpenCV
        c2ws.append(c2w)
    h, w = images[0].shape[:2] if images else (0, 0)
    fl = 0.5 * w / np.tan(0.5 * t["camera_angle_x"]) if images else 0.0
    K = np.array([[fl, 0, w / 2.0], [0, fl, h / 2.0], [0, 0, 1]])
    return {"image_ids": ids, "camtoworlds": c2ws, "images": images, "K": K}
