"""Exit codes and one-line errors a nightly job depends on (issue 14, items 8, 9, 11, 12):
0 all done / no regression, 1 some failed or rejected (or a regression), 2 the command could not
do its job (one line `<prog>: error: ...` on stderr, no traceback) — for `run`, `report`,
`demo` and scripts/ray_entry.py alike. Generation is a test double in the generation seam pipeline.workers.GENERATOR."""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import json
from pathlib import Path

import pytest

import fakes
import pipeline.demo
import pipeline.run as prun
from common import manifest
from cli_capture import run_cli as cli
from test_pipeline_run import FakeGenerate, calls

REPO = Path(__file__).resolve().parent.parent
QUIET = ["--set", "pipeline.render=false", "--set", "pipeline.score=false",
         "--set", "pipeline.report=false", "--set", "metrics.fid=false"]


def ray_entry(*argv: str) -> tuple[int, str, str]:
    spec = importlib.util.spec_from_file_location("ray_entry", REPO / "scripts" / "ray_entry.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = mod.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def one_line_error(err: str, prog: str, *needles: str) -> str:
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    f = FakeGenerate(tmp_path / "calls", fail={"a green cone"})
    fakes.use_generate(monkeypatch, f)
    return f


def _prompts(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_run_exit_codes(tmp_path, fake):
    ok = _prompts(tmp_path, "ok.txt", "a red cube\na blue sphere\n")
    assert cli("run", ok, "--out", str(tmp_path / "o1"), *QUIET)[0] == 0
    some_rejected = _prompts(tmp_path, "rej.txt", "a red cube\n\x07bell\n")
    assert cli("run", some_rejected, "--out", str(tmp_path / "o2"), *QUIET)[0] == 1
    all_rejected = _prompts(tmp_path, "allrej.txt", "\x07bell\n\x1b esc\n")
    code, out, _ = cli("run", all_rejected, "--out", str(tmp_path / "o3"), *QUIET)
    assert code == 1 and "0 done, 0 failed, 2 rejected" in out
    failed = _prompts(tmp_path, "fail.txt", "a green cone\n")
    assert cli("run", failed, "--out", str(tmp_path / "o4"), *QUIET)[0] == 1
    empty = _prompts(tmp_path, "empty.txt", "\n")  # a blank line only: not one prompt row
    code, _, err = cli("run", _prompts(tmp_path, "e.txt", ""), "--out", str(tmp_path / "o5"), *QUIET)
    assert code == 2
    one_line_error(err, "sctd3d run", "no prompts in", "e.txt")
    assert not (tmp_path / "o5" / "run.json").exists()
    assert cli("run", empty, "--out", str(tmp_path / "o6"), *QUIET)[0] == 1  # one empty row: rejected
    code, _, err = cli("run", ok, "--out", str(tmp_path / "o7"), "--set", "prior.device=gpu")
    assert code == 2
    one_line_error(err, "sctd3d run", "prior.device", "'gpu'")


def test_ray_entry_exit_codes(tmp_path, fake):
    code, _, err = ray_entry(_prompts(tmp_path, "p.txt", "a red cube\n"), "--config", "toy.yaml",
                             "--out", str(tmp_path / "o"), "--set", "generate.seed=-1")
    assert code == 2
    one_line_error(err, "ray_entry.py", "generate.seed")
    code, _, err = ray_entry(_prompts(tmp_path, "e.txt", ""), "--config", "toy.yaml",
                             "--out", str(tmp_path / "o"))
    assert code == 2
    one_line_error(err, "ray_entry.py", "no prompts in")
    # every row rejected: no Ray needed (nothing to dispatch), exit 1
    code, out, err = ray_entry(_prompts(tmp_path, "r.txt", "\x07\n"), "--config", "toy.yaml",
                               "--out", str(tmp_path / "o2"), *QUIET)
    assert code == 1 and "1 rejected" in out, err[-2000:]


def test_report_first_night_and_errors(tmp_path, fake):
    nightly = tmp_path / "nightly"
    run = nightly / "2026-12-01"
    assert cli("run", _prompts(tmp_path, "p.txt", "a red cube\n"), "--out", str(run), *QUIET)[0] == 0
    html = run / "report" / "report.html"
    code, out, err = cli("report", str(run), "--history", str(nightly), "--out", str(html))
    assert code == 0, err[-2000:]
    assert "no baseline yet" in out and html.exists()
    (tmp_path / "afile").write_text("x")
    code, out, err = cli("report", str(run), "--out", str(tmp_path / "afile" / "r" / "report.html"))
    assert code == 2 and out == ""
    one_line_error(err, "sctd3d report", "afile")
    code, out, err = cli("report", str(tmp_path / "nosuch"), "--out", str(html))
    assert code == 2 and out == ""  # errors go to stderr, not stdout
    one_line_error(err, "sctd3d report", "nosuch")


def test_demo_and_generate_usage_errors(tmp_path):
    for argv, needle in [(("demo", "--prompts", "0", "--out", str(tmp_path / "d")), "--prompts 0"),
                         (("generate", "", "--out", str(tmp_path / "g")), "prompt is empty"),
                         (("generate", "a red cube", "--out", str(tmp_path / "f.txt")), "is a file")]:
        if "f.txt" in argv[-1]:
            (tmp_path / "f.txt").write_text("x")
        code, _, err = cli(*argv)
        assert code == 2
        one_line_error(err, f"sctd3d {argv[0]}", needle)
    assert not (tmp_path / "d").exists() and not (tmp_path / "g").exists()


def test_bad_paths_give_one_line_and_write_nothing(tmp_path, fake):
    (tmp_path / "adir").mkdir()
    (tmp_path / "bad.parquet").write_text("prompt\na red cube\n")
    (tmp_path / "afile").write_text("x")
    cases = [(("run", str(tmp_path / "adir"), "--out", str(tmp_path / "o1")), "is a directory"),
             (("run", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "o2")), "not a Parquet"),
             (("config", "--config", str(tmp_path / "adir")), "is a directory"),
             (("manifest", "show", str(tmp_path / "afile")), "is a file"),
             (("manifest", "show", str(tmp_path / "typo")), "no such run folder"),
             (("manifest", "compact", str(tmp_path / "typo2")), "no such run folder"),
             (("manifest", "show", str(tmp_path / "adir")), "not a run folder"),
             (("toy", "list", "--catalogue", str(tmp_path / "none.yaml")), "none.yaml"),
             (("toy", "list", "--catalogue", str(tmp_path / "afile")), "afile")]
    for argv, needle in cases:
        code, _, err = cli(*argv)
        assert code == 2, (argv, err[-2000:])
        one_line_error(err, f"sctd3d {argv[0]}", needle)
    # read-only commands and refused runs created nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "bad.parquet"]
    assert list((tmp_path / "adir").iterdir()) == []


def test_refused_rerun_leaves_run_json_as_it_was(tmp_path, fake):
    out = tmp_path / "o"
    p = _prompts(tmp_path, "p.txt", "a red cube\na blue sphere\n")
    assert cli("run", p, "--out", str(out), *QUIET)[0] == 0
    before = (out / "run.json").read_bytes()
    assert json.loads(before)["status"] == "finished"
    part = sorted((out / "manifest").rglob("*.parquet"))[0]  # a part, or the compacted manifest
    part.write_bytes(part.read_bytes()[:20])  # truncated: the re-run refuses
    code, _, err = cli("run", p, "--out", str(out), *QUIET)
    assert code == 2
    one_line_error(err, "sctd3d run")
    assert (out / "run.json").read_bytes() == before and not (out / "run.lock").exists()


def test_unwritable_cache_is_refused_before_any_work(tmp_path, fake, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("SCTD3D_CACHE", str(tmp_path / "afile" / "cache"))  # cannot be created
    p = _prompts(tmp_path, "p.txt", "a red cube\n")
    argv = ["--set", "pipeline.score=true", "--set", "metrics.metrics=[toy_psnr]"]
    code, _, err = cli("run", p, "--out", str(tmp_path / "o"), *QUIET, *argv)
    assert code == 2
    one_line_error(err, "sctd3d run", "$SCTD3D_CACHE", "not writable", str(tmp_path / "afile"))
    assert calls(tmp_path / "calls") == 0 and not (tmp_path / "o").exists()
    code, _, err = cli("generate", "a red cube", "--out", str(tmp_path / "g"), *argv)
    assert code == 2
    one_line_error(err, "sctd3d generate", "$SCTD3D_CACHE")


class FakeFullDisk(FakeGenerate):
    """Every asset fails writing its files with ENOSPC (a full disk during generation)."""

    def __call__(self, cfg, prompt, seed, asset_dir, progress=False):
        super().__call__(cfg, prompt, seed, asset_dir, progress)
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_generation_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fakes.use_generate(monkeypatch, FakeFullDisk(tmp_path / "calls"))
    out = tmp_path / "o"
    p = _prompts(tmp_path, "p.txt", "a red cube\na blue sphere\na green cone\na white cylinder\n")
    code, _, err = cli("run", p, "--out", str(out), *QUIET)
    assert code == 2
    one_line_error(err, "sctd3d run", "No space left on device", "the run stopped", "re-run")
    assert calls(tmp_path / "calls") == 1  # no failure storm: the first such failure stops it
    assert manifest.read(str(out)).num_rows == 0  # nothing recorded as the asset's own failure
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "No space left on device" in run["error"]
    assert not (out / "run.lock").exists()


def test_demo_exit_code_is_the_runs(tmp_path, monkeypatch):
    """`sctd3d demo` answers like `run`: its exit code is its RunSummary's (a real demo is a Ray run
    of ~80 s, too long for this file)."""
    def summary(**kw):
        base = dict(out=str(tmp_path), total=4, skipped=0, done=4, failed=0, rejected=0,
                    duplicates=0, wall_s=1.0)
        return prun.RunSummary(**{**base, **kw})

    for kw, want in [({}, 0), ({"done": 3, "failed": 1}, 1), ({"rejected": 1}, 1),
                     ({"report_exit_code": 1}, 1), ({"interrupted": "SIGINT"}, 130),
                     ({"interrupted": "SIGTERM"}, 143)]:
        monkeypatch.setattr(pipeline.demo, "demo", lambda *a, kw=kw, **k: summary(**kw))
        assert cli("demo", "--out", str(tmp_path / "d"))[0] == want, kw
