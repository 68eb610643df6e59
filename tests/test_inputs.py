"""pipeline.inputs: formats, validation of every bad-row kind, dedup, stable asset ids."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.config import load_config
from pipeline.inputs import InputError, asset_id_for, read_prompts, slugify


@pytest.fixture(scope="module")
def cfg():
    # scoring off: these prompts are not toy catalogue objects (see test_toy_metrics_need_...)
    return load_config("toy.yaml", ["pipeline.score=false"])


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


# ---------------------------------------------------------------- issue 14: hand-written inputs
@pytest.mark.parametrize("row_config,key", [
    ({"toy": {"cache_dir": "/tmp/elsewhere"}}, "toy.cache_dir"),
    ({"prior.model": "/etc"}, "prior.model"),
    ({"toy.catalogue": "/etc/passwd"}, "toy.catalogue"),
    ({"init": {"ball_num_gaussians": 10**9}}, "init.ball_num_gaussians"),
    ({"generate.densify.max_gaussians": 10**9}, "generate.densify.max_gaussians"),
    ({"pipeline.timeout_s": 1e9}, "pipeline.timeout_s"),
    ({"metrics": {"fid_cache_dir": "/tmp/x"}}, "metrics.fid_cache_dir"),
])
def test_row_overrides_limited_to_generation_settings(tmp_path, cfg, row_config, key):
    """A prompt file could point a row at any path or size (issue 14 item 4)."""
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"prompt": "a red cube", "config": row_config}) + "\n")
    b = read_prompts(str(p), cfg)
    assert b.requests == [] and len(b.rejected) == 1
    reason = b.rejected[0].reason
    assert f"config override {key!r} is not allowed in a prompt row" in reason, reason
    assert "generate.iterations (<= 20000)" in reason and "generate.sctd.*" in reason


def test_row_overrides_allowed_and_bounded(tmp_path, cfg):
    rows = [{"prompt": "a red cube", "config": {"generate": {"method": "sctd", "iterations": 20000,
                                                             "sctd": {"t_tau": 100}},
                                                "generate.optim.position_lr_init": 1e-4,
                                                "prior.guidance_scale": 12.0}},
            {"prompt": "a red cube", "config": {"generate.iterations": 20001}},
            {"prompt": "a red cube", "seed": 1, "config": {"generate": {"seed": 5}}}]
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    b = read_prompts(str(p), cfg)
    assert len(b.requests) == 1 and b.requests[0].line == 1
    reasons = {r.line: r.reason for r in b.rejected}
    assert "generate.iterations=20001 is over the per-row cap of 20000" in reasons[2]
    # one source of truth for the seed: the generate.seed override changed the id but was ignored
    assert "'generate.seed' is not allowed in a prompt row: set the row's 'seed' field" in reasons[3]


def test_bom_and_comment_lines(tmp_path, cfg):
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"a red cube\na blue sphere\n")
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf# my prompts\na red cube\n  # not a prompt either\na blue sphere\n")
    a, b = read_prompts(str(plain), cfg), read_prompts(str(bom), cfg)
    assert [r.asset_id for r in b.requests] == [r.asset_id for r in a.requests]
    assert b.rejected == [] and [r.line for r in b.requests] == [2, 4]
    jl = tmp_path / "bom.jsonl"
    jl.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "a red cube"}).encode() + b"\n")
    j = read_prompts(str(jl), cfg)
    assert j.rejected == [] and j.requests[0].asset_id == a.requests[0].asset_id


def test_parquet_integral_float_seeds(tmp_path, cfg):
    """pandas stores a seed column with gaps as float64 (1.0, NaN -> null)."""
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a red cube", "a blue sphere", "a green cone"],
                             "seed": pa.array([1.0, None, 2.5])}), p)
    b = read_prompts(str(p), cfg)
    assert [(r.prompt, r.seed) for r in b.requests] == [("a red cube", 1), ("a blue sphere", 0)]
    assert isinstance(b.requests[0].seed, int)
    assert len(b.rejected) == 1 and "'seed' must be a non-negative integer, got 2.5" in b.rejected[0].reason
    txt = tmp_path / "p.txt"
    txt.write_text("a red cube\n")
    assert b.requests[0].asset_id != read_prompts(str(txt), cfg).requests[0].asset_id  # seed 1 vs 0
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"prompt": "a red cube", "seed": 1}) + "\n")
    assert read_prompts(str(jl), cfg).requests[0].asset_id == b.requests[0].asset_id


def test_toy_metrics_need_catalogue_prompts_rejected_before_work(tmp_path):
    """toy.yaml scores toy_psnr/toy_rprec: a prompt outside the catalogue used to be generated and
    then fail on every re-run (issue 14 item 6); now it is rejected with the did-you-mean."""
    cfg = load_config("toy.yaml")
    p = tmp_path / "p.txt"
    p.write_text("a red cube\na red cubee\na purple elephant\n")
    b = read_prompts(str(p), cfg)
    assert [r.prompt for r in b.requests] == ["a red cube"]
    reasons = {r.line: r.reason for r in b.rejected}
    assert "is not in the catalogue" in reasons[2] and "did you mean ['a red cube'" in reasons[2]
    assert "toy_psnr" in reasons[3]
    off = load_config("toy.yaml", ["pipeline.score=false"])
    assert len(read_prompts(str(p), off).requests) == 3


# ---------------------------------------------------------------- issue 26: rows built to break us
def _nested(depth: int) -> dict:
    obj: dict = {"generate.iterations": 5}
    for _ in range(depth):
        obj = {"generate": obj}
    return obj


def test_deep_and_huge_jsonl_rows_are_rejected_and_the_rest_run(tmp_path, cfg):
    """One deeply nested or huge row used to kill the batch (RecursionError in json.loads or while
    applying overrides, issue 26 item 10); now it is one rejected row with its reason."""
    deep_json = b'{"prompt": "x", "config": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}"
    lines = [json.dumps({"prompt": "a red cube"}).encode(),
             deep_json,
             b"[" * 30_000 + b"]" * 30_000,
             json.dumps({"prompt": "a green cone", "config": _nested(40)}).encode(),   # json copes
             json.dumps({"prompt": "a brace { inside [ a string", "tags": ["[[[[{{{{"] * 10}).encode(),
             json.dumps({"prompt": "a blue sphere", "tags": ["t" * 1000] * 100}).encode(),  # 100 kB
             json.dumps({"prompt": "a yellow torus"}).encode()]
    p = tmp_path / "p.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    b = read_prompts(str(p), cfg)
    assert [r.prompt for r in b.requests] == ["a red cube", "a brace { inside [ a string",
                                              "a yellow torus"]
    reasons = {r.line: r.reason for r in b.rejected}
    assert set(reasons) == {2, 3, 4, 6}, reasons
    assert "nested 5001 levels deep, over the limit of 32" in reasons[2]
    assert "nested 30000 levels deep" in reasons[3]
    assert "nested 42 levels deep" in reasons[4]
    assert "over the limit of 65536 per row" in reasons[6]
    assert all(len(r.prompt) < 400 for r in b.rejected)  # the shown text is bounded too


def test_deep_parquet_row_is_rejected(tmp_path, cfg):
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a red cube", "a green cone"],
                             "config": pa.array([_nested(40), None])}), p)
    b = read_prompts(str(p), cfg)
    assert [r.prompt for r in b.requests] == ["a green cone"]
    assert len(b.rejected) == 1 and "levels deep, over the limit of 32" in b.rejected[0].reason


def test_duplicate_jsonl_keys_reject_the_row(tmp_path, cfg):
    """`{"prompt": "a", "prompt": "b"}` used to run "b" silently (issue 26 item 14)."""
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a red cube", "prompt": "a blue sphere"}\n'
                 '{"prompt": "a green cone", "config": {"generate.iterations": 5, '
                 '"generate.iterations": 20000}}\n'
                 '{"prompt": "a yellow torus", "seed": 1}\n')
    b = read_prompts(str(p), cfg)
    assert [r.prompt for r in b.requests] == ["a yellow torus"]
    reasons = {r.line: r.reason for r in b.rejected}
    assert "gives the key 'prompt' more than once" in reasons[1]
    assert "gives the key 'generate.iterations' more than once" in reasons[2]


def test_tab_inside_a_prompt_is_whitespace(tmp_path, cfg):
    """A tab (a pasted spreadsheet cell) is collapsed like a space, not rejected as a control
    character (issue 26 item 14); other control characters are still rejected."""
    txt = tmp_path / "p.txt"
    txt.write_bytes(b"a red\tcube\na\tblue sphere\t\nbad \x07 bell\n")
    b = read_prompts(str(txt), cfg)
    assert [r.prompt for r in b.requests] == ["a red cube", "a blue sphere"]
    assert len(b.rejected) == 1 and "U+0007" in b.rejected[0].reason
    plain = tmp_path / "plain.txt"
    plain.write_text("a red cube\n")
    assert b.requests[0].asset_id == read_prompts(str(plain), cfg).requests[0].asset_id
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"prompt": "a red\t\tcube\n"}) + "\n" + json.dumps({"prompt": "\t"}) + "\n")
    j = read_prompts(str(jl), cfg)
    assert [r.prompt for r in j.requests] == ["a red cube"]
    assert "empty or whitespace-only" in j.rejected[0].reason


def test_refused_connection_is_not_called_not_found(tmp_path, cfg):
    """fsspec's HTTP client reports a refused connection as FileNotFoundError; the message now
    says the server could not be reached (issue 26 item 14). A real 404 still says not found."""
    import functools
    import http.server
    import socket
    import threading

    from pipeline.preflight import check_prompts_file

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on it now: connections are refused
    url = f"http://127.0.0.1:{port}/prompts.txt"
    for check in (lambda: read_prompts(url, cfg), lambda: check_prompts_file(url)):
        with pytest.raises(InputError) as e:
            check()
        msg = str(e.value)
        assert "cannot connect to read the prompt file" in msg and "not found" not in msg
        assert "ConnectionRefusedError" in msg and "\n" not in msg

    (tmp_path / "here.txt").write_text("a red cube\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert [r.prompt for r in read_prompts(f"{base}/here.txt", cfg).requests] == ["a red cube"]
        with pytest.raises(InputError, match="prompt file not found"):
            read_prompts(f"{base}/missing.txt", cfg)
        with pytest.raises(InputError, match="prompt file not found"):
            check_prompts_file(f"{base}/missing.txt")
    finally:
        server.shutdown()
        server.server_close()
