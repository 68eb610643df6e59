"""The pipeline on the S3 protocol: moto's server on 127.0.0.1 (started here), s3fs client.
Run, interrupt, resume (from the checkpoint uploaded by the interrupted attempt), compact."""

import json

import pyarrow.parquet as pq
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

import fakes  # noqa: E402
from common import manifest  # noqa: E402
from common.config import load_config  # noqa: E402
from common.storage import open_storage  # noqa: E402
from s3_server import running_moto  # noqa: E402
from test_pipeline_run import FakeGenerate, FakeInterrupt, calls  # noqa: E402


@pytest.fixture(scope="module")
def s3():
    import fsspec

    mp = pytest.MonkeyPatch()
    with running_moto() as endpoint:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
            mp.setenv(k, v)
        mp.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint, "key": "testing",
                                               "secret": "testing"})
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("sctd3d-test")
        try:
            yield fs
        finally:
            mp.undo()


def test_s3_run_interrupt_resume_compact(tmp_path, s3):
    cfg = load_config("toy.yaml", ["pipeline.render=false", "pipeline.score=false",
                                   "pipeline.report=false", "metrics.fid=false",
                                   "pipeline.checkpoint_sync_s=0"])
    s3.pipe("sctd3d-test/prompts.txt", b"a red cube\na blue sphere\na green cone\n\n")
    out = "s3://sctd3d-test/run1"
    fake = FakeGenerate(tmp_path / "calls", interrupt={"a blue sphere"})
    with pytest.raises(FakeInterrupt):
        fakes.run_batch(fake, "s3://sctd3d-test/prompts.txt", cfg, out, progress=False)
    st = open_storage(out)
    assert manifest.counts(manifest.read(st)) == {"done": 1, "failed": 0, "rejected": 1}
    assert not st.exists("run.lock")
    # the interrupted asset's checkpoint reached the bucket, so the re-run resumes from it
    assert any(p.endswith("checkpoints/ckpt.json") for p in st.walk_files("assets"))

    s = fakes.run_batch(fake, "s3://sctd3d-test/prompts.txt", cfg, out, progress=False)
    assert (s.skipped, s.done, s.failed, s.rejected) == (1, 2, 0, 1)
    assert calls(tmp_path / "calls") == 4
    rows = {r["prompt"]: r for r in manifest.read(st).to_pylist() if r["status"] == "done"}
    assert rows["a blue sphere"]["resumed_from_iter"] == 5
    for r in rows.values():
        assert r["asset_uri"].startswith(f"{out}/assets/{r['asset_id'][:2]}/{r['asset_id']}/")
        assert s3.cat(r["asset_uri"]).startswith(b"ply")
    assert json.loads(st.read_text("run.json"))["status"] == "finished"

    again = fakes.run_batch(fake, "s3://sctd3d-test/prompts.txt", cfg, out, progress=False)
    assert (again.skipped, again.done) == (3, 0) and calls(tmp_path / "calls") == 4

    uri = manifest.compact(out)
    assert uri == f"{out}/manifest/manifest.parquet" and st.ls("manifest/parts") == []
    with s3.open(uri, "rb") as f:
        assert pq.read_table(f).num_rows == 4
    assert "4 assets (done 3, failed 0, rejected 1)" in manifest.show(out)
