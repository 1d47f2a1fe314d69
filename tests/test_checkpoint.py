"""checkpoint: the job's identity (begin), completion records (record/scan) and stats beside the output."""

import json
import os

import pytest

from elmo_dist import storage
from elmo_dist.checkpoint import JOB_DIR, JobState, ResumeError
from elmo_dist.config import JobConfig

MODEL_FP = "0123456789abcdef"
UNITS = ["u1", "u2", "u3"]


def _cfg(out, **over):
    return JobConfig.build(inputs=["/data/in.parquet"], output=str(out), **over)


def _shard(out, name, data=b"x" * 100):
    path = os.path.join(out, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    return {"path": name, "size": len(data), "rows": 10}


def _job_json(out, name):
    with open(os.path.join(out, JOB_DIR, name)) as fh:
        return json.load(fh)


# ---- begin -----------------------------------------------------------------------------------

def test_begin_records_then_resumes(tmp_path):
    out = str(tmp_path / "out")
    cfg = _cfg(out, **{"run.rows_per_unit": 1000})
    state = JobState(out)
    assert not state.exists()
    assert state.begin(cfg, MODEL_FP, UNITS) is False
    assert state.exists()
    assert _job_json(out, "plan.json") == {"units": UNITS, "rows_per_unit": 1000}
    conf = _job_json(out, "config.json")
    assert conf["fingerprint"] == cfg.fingerprint(MODEL_FP)
    assert conf["model_fingerprint"] == MODEL_FP
    assert conf["config"] == cfg.model_dump(mode="json")
    # second run: same config, same units in another order -> resume
    assert JobState(out).begin(cfg, MODEL_FP, list(reversed(UNITS))) is True
    # how the job runs may change on resume
    bigger = _cfg(out, **{"run.rows_per_unit": 1000, "run.num_actors": 8, "run.token_budget": 9000})
    assert JobState(out).begin(bigger, MODEL_FP, UNITS) is True
    assert _job_json(out, "plan.json")["units"] == UNITS  # plan not rewritten


def test_resume_refused_on_other_embedding_settings(tmp_path):
    out = str(tmp_path / "out")
    JobState(out).begin(_cfg(out), MODEL_FP, UNITS)
    with pytest.raises(ResumeError) as e:
        JobState(out).begin(_cfg(out, **{"embedding.pooling": "max"}), MODEL_FP, UNITS)
    msg = str(e.value)
    assert "changed: embedding" in msg
    assert "text" not in msg.split("changed:")[1].split(")")[0]


def test_resume_refused_on_other_compute_dtype(tmp_path):
    out = str(tmp_path / "out")
    JobState(out).begin(_cfg(out), MODEL_FP, UNITS)
    with pytest.raises(ResumeError, match=r"compute_dtype \(float32 -> bfloat16\)"):
        JobState(out).begin(_cfg(out, **{"run.compute_dtype": "bfloat16"}), MODEL_FP, UNITS)


def test_resume_refused_on_other_model_or_text(tmp_path):
    out = str(tmp_path / "out")
    JobState(out).begin(_cfg(out), MODEL_FP, UNITS)
    with pytest.raises(ResumeError, match=rf"model \({MODEL_FP} -> ffffffffffffffff\)"):
        JobState(out).begin(_cfg(out), "ffffffffffffffff", UNITS)
    with pytest.raises(ResumeError, match="changed: text"):
        JobState(out).begin(_cfg(out, **{"text.sentence_split": "none"}), MODEL_FP, UNITS)
    # nothing was overwritten by the refused runs
    assert _job_json(out, "config.json")["fingerprint"] == _cfg(out).fingerprint(MODEL_FP)


def test_resume_refused_on_other_units_with_rows_per_unit_hint(tmp_path):
    out = str(tmp_path / "out")
    JobState(out).begin(_cfg(out, **{"run.rows_per_unit": 500}), MODEL_FP, UNITS)
    with pytest.raises(ResumeError) as e:
        JobState(out).begin(_cfg(out, **{"run.rows_per_unit": 800}), MODEL_FP, ["v1", "v2"])
    msg = str(e.value)
    assert "3 units planned, 2 now" in msg
    assert "rows_per_unit=500, now 800" in msg and "--rows-per-unit 500" in msg
    # same rows_per_unit, other units (the input changed): no rows_per_unit hint
    with pytest.raises(ResumeError) as e:
        JobState(out).begin(_cfg(out, **{"run.rows_per_unit": 500}), MODEL_FP, UNITS + ["u4"])
    assert "--rows-per-unit" not in str(e.value)
    assert "3 units planned, 4 now" in str(e.value)


def test_damaged_job_config_refused(tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(os.path.join(out, JOB_DIR))
    open(os.path.join(out, JOB_DIR, "config.json"), "w").close()  # torn: 0 bytes
    with pytest.raises(ResumeError, match="damaged"):
        JobState(out).begin(_cfg(out), MODEL_FP, UNITS)


# ---- records and scan ----------------------------------------------------------------------

def _begun(tmp_path):
    out = str(tmp_path / "out")
    state = JobState(out)
    state.begin(_cfg(out), MODEL_FP, UNITS)
    return out, state


def test_scan_valid_records(tmp_path):
    out, state = _begun(tmp_path)
    f1 = [_shard(out, "part-u1-0000.parquet"), _shard(out, "part-u1-0001.parquet", b"y" * 7)]
    state.record("u1", f1, {"sentences": 20}, node={"host": "h"})
    scan = state.scan()
    assert scan.planned == UNITS
    assert list(scan.records) == ["u1"]
    assert scan.records["u1"]["files"] == f1
    assert scan.records["u1"]["stats"] == {"sentences": 20}
    assert scan.invalid == {}
    assert scan.missing == ["u2", "u3"] and not scan.complete
    assert scan.files() == ["part-u1-0000.parquet", "part-u1-0001.parquet"]
    assert scan.shard_sizes == {"part-u1-0000.parquet": 100, "part-u1-0001.parquet": 7}
    for u in ("u2", "u3"):
        state.record(u, [_shard(out, f"part-{u}-0000.parquet")], {})
    scan = state.scan()
    assert scan.complete and scan.missing == []
    assert state.done_units() == set(UNITS)
    assert [r["unit"] for r in state.records()] == UNITS
    assert list(state.scan(unit_ids=["u2"]).records) == ["u2"]  # only the units asked for


def test_scan_torn_record_is_invalid(tmp_path):
    out, state = _begun(tmp_path)
    state.record("u1", [_shard(out, "part-u1-0000.parquet")], {})
    open(os.path.join(out, JOB_DIR, "units", "u2.json"), "w").close()  # 0 bytes
    with open(os.path.join(out, JOB_DIR, "units", "u3.json"), "w") as fh:
        fh.write('{"unit": "u3", "files": [')  # truncated
    scan = state.scan()
    assert list(scan.records) == ["u1"]
    assert set(scan.invalid) == {"u2", "u3"}
    assert "unreadable JSON (0 bytes" in scan.invalid["u2"]
    assert "unreadable JSON" in scan.invalid["u3"]
    assert scan.missing == ["u2", "u3"]


def test_scan_missing_or_resized_shard_is_invalid(tmp_path):
    out, state = _begun(tmp_path)
    state.record("u1", [_shard(out, "part-u1-0000.parquet")], {})
    os.remove(os.path.join(out, "part-u1-0000.parquet"))
    state.record("u2", [_shard(out, "part-u2-0000.parquet")], {})
    with open(os.path.join(out, "part-u2-0000.parquet"), "ab") as fh:
        fh.write(b"more")
    scan = state.scan()
    assert scan.records == {}
    assert scan.invalid["u1"] == "shard part-u1-0000.parquet is missing"
    assert scan.invalid["u2"] == "shard part-u2-0000.parquet has 104 bytes, the record says 100"


def test_scan_other_bad_records(tmp_path):
    out, state = _begun(tmp_path)
    state.record("u1", [], {})
    storage.write_json(state.fs, os.path.join(out, JOB_DIR, "units", "u2.json"), {"unit": "u2"})
    storage.write_json(state.fs, os.path.join(out, JOB_DIR, "units", "u3.json"),
                       {"unit": "u3", "files": [{"size": 3}]})
    scan = state.scan()
    assert scan.records == {}
    assert scan.invalid["u1"] == "record lists no shard"
    assert "no file list" in scan.invalid["u2"]
    assert "bad file entry" in scan.invalid["u3"]


def test_scan_accepts_old_records_with_bare_paths(tmp_path):
    out, state = _begun(tmp_path)
    _shard(out, "part-u1-0000.parquet")
    storage.write_json(state.fs, os.path.join(out, JOB_DIR, "units", "u1.json"),
                       {"unit": "u1", "files": ["part-u1-0000.parquet"], "stats": {}})
    _shard(out, "part-u2-0000.parquet")
    storage.write_json(state.fs, os.path.join(out, JOB_DIR, "units", "u2.json"),
                       {"unit": "u2", "files": ["part-u2-0000.parquet", "part-u2-0001.parquet"]})
    scan = state.scan()
    assert scan.records["u1"]["files"] == [{"path": "part-u1-0000.parquet", "size": None, "rows": None}]
    assert scan.invalid == {"u2": "shard part-u2-0001.parquet is missing"}  # existence still checked


def test_scan_with_data_dir(tmp_path):
    out, state = _begun(tmp_path)
    state.record("u1", [_shard(out, "data/v1/part-u1-0000.parquet")], {})
    assert state.scan().invalid["u1"] == "shard data/v1/part-u1-0000.parquet is missing"  # root only
    scan = state.scan(data_dir="data")
    assert list(scan.records) == ["u1"] and scan.invalid == {}


def test_scan_without_plan(tmp_path):
    out = str(tmp_path / "out")
    state = JobState(out)
    state.record("u1", [_shard(out, "part-u1-0000.parquet")], {})
    scan = state.scan()
    assert scan.planned == [] and not scan.complete and list(scan.records) == ["u1"]


# ---- stats -----------------------------------------------------------------------------------

def test_write_stats_appends_runs_and_keeps_throughput_of_noop_run(tmp_path):
    out, state = _begun(tmp_path)
    assert state.stats() is None
    first = state.write_stats({"units_this_run": 3, "tokens_per_second": 1234.5, "units_done": 3},
                              run={"run": 1, "units": 3})
    assert first["runs"] == [{"run": 1, "units": 3}]
    noop = state.write_stats({"units_this_run": 0, "tokens_per_second": 0.0, "units_done": 3},
                             run={"run": 2, "units": 0})
    assert noop["tokens_per_second"] == 1234.5
    assert noop["runs"] == [{"run": 1, "units": 3}, {"run": 2, "units": 0}]
    assert state.stats() == noop == _job_json(out, "stats.json")
    real = state.write_stats({"units_this_run": 1, "tokens_per_second": 99.0}, run={"run": 3})
    assert real["tokens_per_second"] == 99.0 and len(real["runs"]) == 3
    assert len(state.write_stats({"units_this_run": 0})["runs"]) == 3  # no run given: nothing appended


def test_write_stats_keeps_last_100_runs(tmp_path):
    _, state = _begun(tmp_path)
    for i in range(105):
        out = state.write_stats({"units_this_run": 1}, run={"run": i})
    assert len(out["runs"]) == 100 and out["runs"][0] == {"run": 5} and out["runs"][-1] == {"run": 104}


# ---- writability and cleanup -----------------------------------------------------------------

def test_check_writable(tmp_path):
    out = str(tmp_path / "out")
    JobState(out).check_writable()
    assert os.listdir(os.path.join(out, JOB_DIR)) == []  # the probe is removed
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="not writable"):
        JobState(str(blocker / "out")).check_writable()


def test_cleanup_removes_only_temporaries(tmp_path):
    out, state = _begun(tmp_path)
    keep = _shard(out, "part-u1-0000.parquet")["path"]
    tmp = os.path.join(out, ".part-u1-0000.parquet.tmp-" + "a" * 32)
    nested = os.path.join(out, JOB_DIR, "units", ".u1.json.tmp-" + "b" * 32)
    for p in (tmp, nested):
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "w").close()
    state.cleanup()
    assert not os.path.exists(tmp) and not os.path.exists(nested)
    assert os.path.exists(os.path.join(out, keep))
    assert os.path.exists(os.path.join(out, JOB_DIR, "config.json"))


def test_record_naming_another_unit_does_not_count(tmp_path):
    out, state = _begun(tmp_path)
    shard = _shard(out, "part-u9-0000.parquet")
    storage.write_json(state.fs, os.path.join(out, JOB_DIR, "units", "u1.json"),
                       {"unit": "u9", "files": [shard], "stats": {}})
    scan = state.scan()
    assert "u1" not in scan.records and "u1" in scan.invalid
