"""refresh's pure steps, without Ray: the diff of a listing against the current version, and the
next manifest."""

from elmo_dist.config import JobConfig
from elmo_dist.refresh import build_manifest, diff_inputs
from elmo_dist.stages.read import InputFile, Unit


def _file(uri, size=10, version="1", rows=(5,)):
    return InputFile(uri, uri, size, version, tuple(rows))


def test_diff_by_size_and_version_in_listing_order():
    previous = {"a": {"size": 10, "version": "1"}, "b": {"size": 10, "version": "1"},
                "c": {"size": 10, "version": "1"}, "gone": {"size": 1, "version": "1"}}
    listing = {f.uri: f for f in [_file("new"), _file("c"), _file("b", version="2"), _file("a", size=11)]}
    d = diff_inputs(previous, listing)
    assert (d.added, d.changed, d.unchanged, d.deleted) == (["new"], ["b", "a"], ["c"], ["gone"])
    assert not d.empty
    same = diff_inputs({"c": {"size": 10, "version": "1"}}, {"c": _file("c")})
    assert same.empty and same.unchanged == ["c"]


def test_diff_is_linear():
    import time

    n = 100_000
    previous = {f"f{i}": {"size": 10, "version": "1"} for i in range(n)}
    listing = {f"f{i}": _file(f"f{i}", version="2" if i % 2 else "1") for i in range(n)}
    t0 = time.perf_counter()
    d = diff_inputs(previous, listing)
    assert len(d.changed) == n // 2 and len(d.unchanged) == n // 2
    assert time.perf_counter() - t0 < 5  # O(N): well under a second here; O(N^2) would take hours


def test_manifest_takes_new_shards_and_keeps_unchanged_entries(tmp_path):
    cfg = JobConfig.build(inputs=["in/"], output=str(tmp_path / "out"), model=str(tmp_path))
    files = [_file("a", rows=(3, 4)), _file("b")]
    units = [Unit("u1", "a", (0,), 0, 3), Unit("u2", "a", (1,), 3, 4)]
    records = {"u1": {"files": [{"path": "data/fp/part-u1-0000.parquet", "size": 100, "rows": 9}]},
               "u2": {"files": [{"path": "data/fp/part-u2-0000.parquet", "size": 200, "rows": 12}]}}
    current = {"version": 4, "inputs": {"b": {"size": 10, "version": "1", "rows": 5, "units": ["ub"],
                                              "files": ["data/fp/part-ub-0000.parquet"]}},
               "sizes": {"data/fp/part-ub-0000.parquet": 50, "data/fp/old.parquet": 1}}
    m = build_manifest(cfg, files, {"a"}, units, records, current, "cfp", "mfp", "run1", "now")
    assert m["previous"] == 4 and m["run_id"] == "run1" and m["rows"] == 12
    assert m["inputs"]["a"] == {"size": 10, "version": "1", "rows": 7, "units": ["u1", "u2"],
                                "files": ["data/fp/part-u1-0000.parquet", "data/fp/part-u2-0000.parquet"]}
    assert m["inputs"]["b"] is current["inputs"]["b"]
    assert m["files"] == sorted(["data/fp/part-u1-0000.parquet", "data/fp/part-u2-0000.parquet",
                                 "data/fp/part-ub-0000.parquet"])
    assert m["sizes"] == {"data/fp/part-u1-0000.parquet": 100, "data/fp/part-u2-0000.parquet": 200,
                          "data/fp/part-ub-0000.parquet": 50}  # only this version's shards
    first = build_manifest(cfg, files[:1], {"a"}, units, records, None, "cfp", "mfp", "run1", "now")
    assert first["previous"] is None and list(first["inputs"]) == ["a"]
