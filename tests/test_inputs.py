"""pipeline.inputs: formats, validation of every bad-row kind, dedup, stable asset ids."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.inputs import InputError, asset_id_for, read_prompts, slugify


@pytest.fixture(scope="module")
def cfg():
    return load_config("toy.yaml")


def _words(prompt: str) -> int:
    return len(prompt.split())


def test_txt_bad_rows_rejected_rest_kept(tmp_path, cfg):
    lines = [b"a red cube", b"", b"   ", b"x" * 10_000, b"bad \x07 bell", b"caf\xc3 broken utf8",
             b"../../etc/passwd", b"/etc/shadow", b"a red cube", b"a  red   cube ",
             b"one two three four five six seven eight nine ten eleven"]
    p = tmp_path / "p.txt"
    p.write_bytes(b"\n".join(lines) + b"\n")
    b = read_prompts(str(p), cfg, count_tokens=_words, max_tokens=10)
    assert [r.prompt for r in b.requests] == ["a red cube", "../../etc/passwd", "/etc/shadow"]
    assert b.duplicates == 2  # exact duplicate + whitespace-normalised duplicate
    reasons = {r.line: r.reason for r in b.rejected}
    assert set(reasons) == {2, 3, 5, 6, 11} | {4}
    assert "empty" in reasons[2] and "empty" in reasons[3]
    assert "10000 characters" in reasons[4]
    assert "U+0007" in reasons[5]
    assert "invalid UTF-8" in reasons[6]
    assert "11 tokens" in reasons[11] and "limit of 10" in reasons[11]
    ids = {r.asset_id for r in b.requests} | {r.asset_id for r in b.rejected}
    assert len(ids) == len(b.requests) + len(b.rejected)
    assert all("/" not in i and "." not in i for i in ids)


def test_jsonl_seed_config_tags(tmp_path, cfg):
    rows = [{"prompt": "a blue ball", "seed": 3, "tags": ["t1"]},
            {"prompt": "a blue ball", "seed": 4},
            {"prompt": "a blue ball", "seed": 3, "tags": ["other"]},          # duplicate
            {"prompt": "a blue ball", "seed": 3, "config": {"generate.iterations": 7}},
            {"prompt": "a blue ball", "config": {"generate": {"iterations": -1}}},
            {"prompt": "x", "config": {"generate.nonsense": 1}},
            {"prompt": "x", "seed": -1}, {"prompt": "x", "seed": "1"}, {"prompt": 5},
            {"prompt": "x", "colour": "red"}, ["not", "an", "object"]]
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n\n")
    b = read_prompts(str(p), cfg)
    assert [(r.seed, r.tags) for r in b.requests] == [(3, ["t1"]), (4, []), (3, [])]
    assert b.requests[2].config_hash != b.requests[0].config_hash
    assert b.requests[2].overrides == {"generate.iterations": 7}
    assert b.duplicates == 1
    reasons = [r.reason for r in b.rejected]
    assert len(reasons) == 8, reasons
    assert any("below the minimum" in r for r in reasons)
    assert any("unknown key 'generate.nonsense'" in r for r in reasons)
    assert sum("'seed' must be" in r for r in reasons) == 2
    assert any("'prompt' must be a string" in r for r in reasons)
    assert any("unknown keys ['colour']" in r for r in reasons)
    assert any("expected an object" in r for r in reasons)
    assert any("malformed JSON" in r for r in reasons)


def test_parquet_and_stable_ids(tmp_path, cfg):
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a green cone", "", "a green cone"], "seed": [1, 2, 1]}), p)
    b = read_prompts(str(p), cfg)
    assert len(b.requests) == 1 and len(b.rejected) == 1 and b.duplicates == 1
    assert b.requests[0].asset_id == asset_id_for("  a green   cone", 1, b.requests[0].generation_hash)
    assert b.requests[0].asset_id != asset_id_for("a green cone", 2, b.requests[0].generation_hash)
    assert slugify("A Green Cone!! ../etc") == "a-green-cone-etc"
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="no 'prompt' column"):
        read_prompts(str(tmp_path / "bad.parquet"), cfg)


def test_file_level_errors(tmp_path, cfg):
    with pytest.raises(InputError, match="not found"):
        read_prompts(str(tmp_path / "missing.txt"), cfg)
    (tmp_path / "p.csv").write_text("x")
    with pytest.raises(InputError, match="cannot tell the format"):
        read_prompts(str(tmp_path / "p.csv"), cfg)
