"""A whole toy run through the installed CLI against a local S3 server (moto), configured only the
documented ways (issue 14, item 18): credentials from AWS_* variables, the endpoint from
`--storage-option endpoint_url=...` (nothing in fsspec's config, no AWS_ENDPOINT_URL). Real
generation (3 iterations), evaluation render, toy metrics, manifest and report all on the bucket;
then `report --history` on the first night, and one-line errors for an unreachable endpoint and
missing credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from s3_server import free_port, running_moto  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def endpoint():
    with running_moto() as url:
        yield url


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
               AWS_EC2_METADATA_DISABLED="true",  # no instance-metadata probing for credentials
               AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    env.pop("PYTEST_CURRENT_TEST", None)
    env.update(extra)
    return env


def sctd3d(*argv: str, env: dict, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_whole_toy_run_on_s3_with_storage_option(tmp_path, endpoint):
    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=endpoint, key="testing", secret="testing",
                           skip_instance_cache=True)
    fs.mkdir("nightly")
    fs.pipe("nightly/prompts.txt", b"a red cube\n")
    opt = ["--storage-option", f"endpoint_url={endpoint}"]
    run = "s3://nightly/2026-12-01"
    r = sctd3d("run", "s3://nightly/prompts.txt", "--out", run, "--config", "ablations/toy_short.yaml",
               "--executor", "local", "--set", "generate.iterations=3", "--set", "metrics.fid=false",
               *opt, env=_env(**CREDS))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 done, 0 failed, 0 rejected" in r.stdout

    fs.invalidate_cache()
    info = json.loads(fs.cat(f"{run}/run.json"))
    assert info["status"] == "finished" and info["out"] == run
    show = sctd3d("manifest", "show", run, *opt, env=_env(**CREDS), timeout=120)
    assert show.returncode == 0 and "done 1" in show.stdout, show.stderr[-2000:]
    from common import manifest
    from common.storage import set_storage_options

    set_storage_options(run, {"endpoint_url": endpoint, "key": "testing", "secret": "testing"})
    try:
        [row] = manifest.read(run).to_pylist()
    finally:
        fsspec.config.conf.pop("s3", None)
    assert row["status"] == "done" and row["toy_psnr"] is not None
    adir = f"{run}/assets/{row['asset_id'][:2]}/{row['asset_id']}"
    assert fs.cat(f"{adir}/asset.ply").startswith(b"ply")
    assert fs.exists(f"{adir}/sheet.png") and fs.ls(f"{adir}/frames")
    assert fs.exists(f"{run}/report/report.html") and fs.exists(f"{run}/report/summary.json")
    assert not fs.exists(f"{run}/run.lock")

    # the nightly's first report: nothing earlier under --history -> exit 0, "no baseline yet"
    rep = sctd3d("report", run, "--history", "s3://nightly", "--out", f"{run}/report/nightly.html",
                 *opt, env=_env(**CREDS), timeout=120)
    assert rep.returncode == 0 and "no baseline yet" in rep.stdout, rep.stderr[-2000:]


def test_unreachable_endpoint_and_missing_credentials_are_one_line(tmp_path, endpoint):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    cases = [({**CREDS}, dead, "EndpointConnectionError"),
             ({"AWS_DEFAULT_REGION": "us-east-1"}, endpoint, "NoCredentialsError")]
    for creds, url, kind in cases:
        t0 = time.monotonic()
        r = sctd3d("run", str(prompts), "--out", "s3://nightly/x", "--storage-option",
                   f"endpoint_url={url}", env=_env(**creds), timeout=180)
        lines = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith("sctd3d run: error: cannot use the output "
                                                       "store s3://nightly/x: " + kind), lines
        assert "AWS_ENDPOINT_URL" in lines[0] and "--storage-option" in lines[0]
        assert time.monotonic() - t0 < 170
