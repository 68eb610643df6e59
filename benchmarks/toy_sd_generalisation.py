"""Does the toy SD generalise (issue 3)? Colour / shape accuracy on novel prompts, and novelty.

Usage: .venv/bin/python benchmarks/toy_sd_generalisation.py [--model DIR] [--per-prompt 8]

Novel prompts combine trained words in pairs the catalogue never shows ("a white cube": white only
appears on the cylinder, the striped cube and the mushroom). Per prompt: `--per-prompt` samples
(suffix ", front view", CFG 5, 20 DDIM steps, generator seed 0) from the toy SD; for a few
catalogue prompts also from the exact prior (a lookup table of the training views: the reference
for novelty ~0) and held-out renders (new cameras: what a truly fresh view scores, and the
classifiers' ceiling). Prints a markdown table. Classifiers: stages/toyworld/generalisation.py.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NOVEL = ["a white cube", "a white sphere", "a white cone", "a white torus", "a red cylinder", "a blue cylinder"]
CATALOGUE = ["a red cube", "a blue sphere", "a green cone", "a yellow torus", "a white cylinder"]


def main() -> None:
    from common.config import PriorConfig
    from stages.priors.registry import load_prior
    from stages.priors.sampling import sample
    from stages.priors.stable_diffusion import TOY_SD_DIR
    from stages.priors.toy_exact import ToyExactPrior
    from stages.toyworld import generalisation as gen
    from stages.toyworld.catalogue import load_catalogue
    from stages.toyworld.views import ViewParams, catalogue_views

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="toy SD directory (default: the shipped one)")
    ap.add_argument("--per-prompt", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model_dir = Path(a.model) if a.model else TOY_SD_DIR
    info_path = model_dir / "train_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    tp = info.get("params", {})
    vp = ViewParams(num_views=int(tp.get("num_views", 256)), resolution=int(tp.get("resolution", 32)))

    cat = load_catalogue()
    colours = gen.catalogue_colours(cat)
    views = catalogue_views(vp, cat)  # the toy SD's training views (and the exact prior's)
    train = gen.training_set(views)
    sil = gen.shape_silhouettes(views, cat)

    def score(imgs: torch.Tensor, prompt: str) -> dict:
        want_c, want_s = gen.prompt_attributes(prompt, colours)
        c, _ = gen.dominant_colour(imgs, colours)
        s, _ = gen.nearest_shape(imgs, sil)
        nov, owner = gen.novelty(imgs, train)
        near = Counter(train.names[int(o)] for o in owner).most_common(1)[0]
        return {"colour": sum(x == want_c for x in c) / len(c), "shape": sum(x == want_s for x in s) / len(s),
                "nov": nov, "near": f"{near[0]} ({near[1]}/{len(owner)})",
                "got_c": Counter(c).most_common(2), "got_s": Counter(s).most_common(2)}

    n = a.per_prompt
    toy = load_prior(PriorConfig(name="toy_sd", model=str(model_dir), image_size=vp.resolution,
                                 device="cpu", dtype="fp32"))
    t0 = time.perf_counter()
    toy_imgs = sample(toy, [p + ", front view" for p in NOVEL + CATALOGUE for _ in range(n)], steps=a.steps,
                      guidance_scale=a.cfg, generator=torch.Generator().manual_seed(0)).clamp(0, 1)
    t_toy = time.perf_counter() - t0
    exact = ToyExactPrior(cat, vp)
    ex_imgs = sample(exact, [p + ", front view" for p in CATALOGUE for _ in range(n)], steps=a.steps,
                     guidance_scale=a.cfg, generator=torch.Generator().manual_seed(0))
    held_out = catalogue_views(ViewParams(num_views=n, resolution=vp.resolution, seed=1), cat, names=CATALOGUE)

    rows = []
    for i, p in enumerate(NOVEL + CATALOGUE):
        rows.append(("toy SD", p, "novel" if p in NOVEL else "catalogue", score(toy_imgs[i * n:(i + 1) * n], p)))
    for i, p in enumerate(CATALOGUE):
        rows.append(("exact prior", p, "catalogue", score(ex_imgs[i * n:(i + 1) * n], p)))
    for p, v in zip(CATALOGUE, held_out):
        rows.append(("held-out renders", p, "catalogue", score(v.chw(), p)))

    print(f"toy SD: {model_dir} ({info.get('steps', '?')} training steps); {n} samples per prompt, "
          f"{a.steps} DDIM steps, CFG {a.cfg}, seed 0; training views {vp.num_views}/object at {vp.resolution}px\n")
    print("| source | prompt | kind | colour acc | shape acc | novelty median [min, max] | "
          "colours seen | shapes seen | most common nearest training object |")
    print("|---|---|---|---|---|---|---|---|---|")
    for src, p, kind, r in rows:
        nv = r["nov"]
        print(f"| {src} | {p} | {kind} | {r['colour']:.2f} | {r['shape']:.2f} | {float(nv.median()):.2f} "
              f"[{float(nv.min()):.2f}, {float(nv.max()):.2f}] | "
              f"{', '.join(f'{k} {v}' for k, v in r['got_c'])} | {', '.join(f'{k} {v}' for k, v in r['got_s'])} | "
              f"{r['near']} |")
    for src, kind in (("toy SD", "novel"), ("toy SD", "catalogue"), ("exact prior", "catalogue"),
                      ("held-out renders", "catalogue")):
        sel = [r for s, _, k, r in rows if s == src and k == kind]
        nov = torch.cat([r["nov"] for r in sel])
        print(f"\n{src}, {kind} prompts: colour {sum(r['colour'] for r in sel) / len(sel):.3f}, "
              f"shape {sum(r['shape'] for r in sel) / len(sel):.3f}, novelty median {float(nov.median()):.2f}",
              end="")
    print(f"\n\ntoy SD sampling {len(toy_imgs)} images: {t_toy:.1f} s ({torch.get_num_threads()} thread(s))")


if __name__ == "__main__":
    main()
