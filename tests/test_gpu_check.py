"""benchmarks/gpu_check.sh: its CPU-runnable steps (the environment step, the sd21 benchmark and
two prompts through `sctd3d generate`) run here in --cpu-smoke mode on the tiny diffusers SD, in the
project's venv (transformers 5); a broken step fails the script; the budget cuts a step short.
scripts/gpu_check_env.py (step 0) picks from carried wheels only what the machine lacks, the
newest version the machine's packages satisfy, and installs it with pip into a private folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # ~1 min on 2 cores; still part of `make test`


def _check(model: str, out: Path, py: str = sys.executable, **env_extra) -> subprocess.CompletedProcess:
    wheels = out.parent / "no_wheels"  # everything is installed here: step 0 installs nothing
    wheels.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PY=py, GPU_CHECK_OUT=str(out), GPU_CHECK_WHEELS=str(wheels), **env_extra)
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", model],
                          capture_output=True, text=True, env=env, timeout=1800)


def test_cpu_smoke_runs_the_benchmark_and_two_prompts(tiny_sd_dir, tmp_path):
    r = _check(str(tiny_sd_dir), tmp_path / "check")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    recs = [x for x in lines if "config" in x]
    assert [x["config"] for x in recs] == ["sd21/sds", "sd21/sctd"]
    # steps 6-7 (bench_components.py, CPU mode): FLOPs counted, not hard-coded; no gsplat, no CUDA syncs
    comps = {x["component"]: x for x in lines if "component" in x}
    assert sorted(comps) == ["host_syncs_per_iteration", "unet_forward", "vae_encode_fwd_bwd"], comps
    for k in ("unet_forward", "vae_encode_fwd_bwd"):
        c = comps[k]
        assert c["ms"] > 0 and c["flops"] > 1e6  # the tiny SD's UNet: ~4e7 FLOPs per forward
        assert c["tflops_achieved"] == pytest.approx(c["flops"] / (c["ms"] / 1e3) / 1e12, rel=1e-3)
    assert comps["unet_forward"]["latent"] == [4, 8, 8]
    assert comps["host_syncs_per_iteration"]["median"] == "n/a" and "ran 2 iterations" in comps["host_syncs_per_iteration"]["reason"]
    assert "# gsplat_fwd_bwd skipped: gsplat's rasteriser needs CUDA" in r.stdout
    for x in recs:
        assert {"s_per_it", "peak_memory_mb", "projected_min_per_5000_it", "meets_6_min_goal"} <= set(x)
        assert x["projected_min_per_5000_it"] == round(x["s_per_it"] * 5000 / 60, 2)
    assert [x["unet_calls_per_it"] for x in recs][0] == 1.0  # SDS: the guided call only
    summary = r.stdout[r.stdout.index("=== summary"):]
    assert "0 environment: machine packages + wheels     ok" in summary
    assert "3 bench_generate sd21 (sds, sctd)            ok" in summary
    assert '5.1 sctd3d generate "a red cube"             ok' in summary
    assert '5.2 sctd3d generate "a blue sphere"          ok' in summary
    assert "6 component timings (UNet, VAE, gsplat)      ok" in summary
    assert "7 host syncs per iteration (sync debug)      ok" in summary
    assert "skipped (needs CUDA)" in summary
    assert "installed from wheels: nothing (all present)" in r.stderr
    import transformers

    assert f"transformers {transformers.__version__}" in r.stderr
    metas = sorted((tmp_path / "check" / "gen").glob("*/meta.json"))
    assert len(metas) == 2
    for m in metas:
        assert (m.parent / "asset.ply").is_file()
        meta = json.loads(m.read_text())
        assert meta["status"] == "done" and meta["iterations"] == 2 and meta["prompt"] in ("a red cube", "a blue sphere"), meta


def _fake_python(tmp_path: Path, body: str, env_step: str = f'exec {sys.executable} "$@"') -> str:
    """A PY for the check: the real environment step (or `env_step`), `body` for every other step."""
    p = tmp_path / "py"
    p.write_text(f'#!/usr/bin/env bash\nif [[ "$1" == scripts/gpu_check_env.py ]]; then {env_step}; fi\n'
                 f"{body}\n")
    p.chmod(0o755)
    return str(p)


def test_a_failing_step_fails_the_check(tmp_path):
    r = _check(str(tmp_path / "model"), tmp_path / "check", py=_fake_python(tmp_path, "exit 3"))
    assert r.returncode == 1
    summary = r.stdout[r.stdout.index("=== summary"):]
    assert summary.count("FAILED (exit 3)") == 5 and summary.count("skipped") == 4
    assert "0 environment: machine packages + wheels     ok" in summary


def test_an_incomplete_environment_stops_the_check(tmp_path):
    r = _check(str(tmp_path / "model"), tmp_path / "check", py="false")
    assert r.returncode == 1
    assert "the environment is incomplete, nothing else ran" in r.stdout
    assert r.stdout[r.stdout.index("=== summary"):].count("FAILED (exit 1)") == 1


def test_the_budget_cuts_a_step_short(tmp_path):
    """A step that would run past GPU_CHECK_BUDGET_S is stopped (exit 124) and the check goes on to
    its summary instead of running past the machine's time (step 0 faked here: it imports torch)."""
    r = _check(str(tmp_path / "model"), tmp_path / "check",
               py=_fake_python(tmp_path, "exec sleep 600", env_step="exit 0"),
               GPU_CHECK_BUDGET_S="5")
    assert r.returncode == 1
    summary = r.stdout[r.stdout.index("=== summary"):]
    assert summary.count("FAILED (exit 124)") == 5, summary


# ---- step 0: scripts/gpu_check_env.py --------------------------------------------------------

def _wheel(folder: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    """A minimal valid wheel (one module `<name>_mod` saying its version)."""
    import zipfile

    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name.replace('-', '_')}_mod.py", f"VERSION = {version!r}\n")
        z.writestr(f"{dist}.dist-info/METADATA", meta)
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                              "Tag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def test_env_step_installs_only_what_is_missing_newest_that_fits(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check_env as ge
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "fakediff", "2.0", ["huggingface-hub>=999", "fakedep"])  # needs a hub nobody has
    _wheel(wheels, "fakediff", "1.5", ["huggingface-hub>=0.1", "fakedep>=1; extra == 'never'"])
    _wheel(wheels, "fakediff", "1.0", [])
    _wheel(wheels, "fakeply", "1.0", ["numpy>=99"])  # its only version needs a numpy nobody has
    _wheel(wheels, "transformers", "99.0", [])  # the machine's own: never installed from wheels
    _wheel(wheels, "pytest", "0.1", [])  # installed already: never reinstalled
    todo, unmet = ge.plan(["fakediff>=1.0", "pytest", "transformers"], [ge.Wheel(p) for p in sorted(wheels.glob("*.whl"))])
    assert [(w.name, str(w.version)) for w in todo] == [("fakediff", "1.5")] and unmet == []

    _, unmet = ge.plan(["fakeply", "transformers>=99"], [ge.Wheel(p) for p in sorted(wheels.glob("*.whl"))])
    assert len(unmet) == 2 and unmet[0].startswith("fakeply: not installed") and "transformers>=99" in unmet[1]

    # the real command: installs with pip into the target, prints the lines that use it
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check_env.py"), "--wheels", str(wheels),
                        "--target", str(target), "--need", "fakediff>=1.0", "--need", "pytest",
                        "--need", "transformers"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "installed from wheels: fakediff 1.5" in r.stderr
    assert (target / "fakediff_mod.py").read_text() == "VERSION = '1.5'\n"
    assert not (target / "pytest_mod.py").exists() and not (target / "transformers_mod.py").exists()
    assert f"export PYTHONPATH={target.resolve()}" in r.stdout

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check_env.py"), "--wheels", str(wheels),
                        "--target", str(tmp_path / "site2"), "--need", "fakeply"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "UNMET fakeply: not installed" in r.stderr and r.stdout == ""


# What the GPU machine lacks (nothing of these is carried): generation must not import them.
NOT_CARRIED = ("pyarrow", "pandas", "ray", "duckdb", "open_clip", "cleanfid", "timm", "datasets", "webdataset",
               "scipy", "matplotlib", "s3fs")


def test_generate_needs_nothing_the_gpu_check_does_not_carry(tiny_sd_dir, tmp_path):
    """`sctd3d generate` with the SD prior runs with every package above unimportable (the GPU
    check's machine has only its torch + transformers and the carried wheels); `sctd3d report`
    then says in one line what it lacks."""
    # None in sys.modules: `import x` raises ImportError and importlib.util.find_spec('x') is None,
    # as when x is not installed
    block = (f"import sys\nsys.modules.update(dict.fromkeys({list(NOT_CARRIED)!r}))\n"
             f"from pipeline.cli import main\nmain(sys.argv[1:])\n")
    args = ["generate", "a red cube", "--out", str(tmp_path / "a"), "--quiet", "--config", "sd21.yaml",
            "--set", f"prior.model={tiny_sd_dir}", "--set", "init.method=ball", "--set", "generate.iterations=2",
            "--set", "generate.save_ply_at=[]", "--set", "prior.allow_cpu=true", "--set", "prior.image_size=16",
            "--set", "generate.batch_views=1", "--set", "init.ball_num_gaussians=256"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", block, *args], capture_output=True, text=True, env=env,
                       timeout=1200, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["status"] == "done"
    r = subprocess.run([sys.executable, "-c", block, "report", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().startswith("sctd3d report: error: `sctd3d report` needs "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_knn_without_scipy_equals_the_kd_tree():
    """Ball / Point-E init's scale (3DGS distCUDA2) on a machine without scipy: the chunked brute
    force gives the KD-tree's numbers (chunks smaller than N, k >= N - 1 included)."""
    import torch

    from stages.init import knn_mean_sq_dist, knn_mean_sq_dist_chunked

    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 4, 700):
        p = torch.randn(n, 3, generator=g)
        assert torch.equal(knn_mean_sq_dist_chunked(p, rows=64), knn_mean_sq_dist(p)), n
