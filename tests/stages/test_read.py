"""read: listing, schema checks before any work, units."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from elmo_dist.config import TextSettings
from elmo_dist.stages.read import InputError, check_schema, list_inputs, plan_units, read_unit


def _write(path, n, row_group_size, **cols):
    data = {"id": [f"{path.stem}-{i}" for i in range(n)], "text": [f"text {i}." for i in range(n)]}
    data.update(cols)
    pq.write_table(pa.table(data), str(path), row_group_size=row_group_size)


def test_listing_dirs_globs_and_units(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "a.parquet", 25, 10)
    _write(tmp_path / "sub" / "b.parquet", 7, 100)
    (tmp_path / "_ignored.parquet").write_bytes(b"x")
    files = list_inputs([str(tmp_path)])
    assert [f.num_rows for f in files] == [25, 7]
    assert [f.uri for f in list_inputs([str(tmp_path / "*.parquet")])] == [str(tmp_path / "a.parquet")]
    units = plan_units(files, rows_per_unit=12)
    assert [u.num_rows for u in units] == [10, 10, 5, 7]
    big = plan_units(files, rows_per_unit=3)  # row groups bigger than a unit are sliced
    assert sum(u.num_rows for u in big) == 32
    rows = [r for u in big for r in read_unit(u, TextSettings(id_column="id")).column("id").to_pylist()]
    assert rows == [f"a-{i}" for i in range(25)] + [f"b-{i}" for i in range(7)]
    assert len({u.unit_id for u in big}) == len(big)


def test_schema_errors_name_the_problem(tmp_path):
    _write(tmp_path / "a.parquet", 3, 10, body=[1, 2, 3])
    files = list_inputs([str(tmp_path / "a.parquet")])
    with pytest.raises(InputError, match="missing column 'content'"):
        check_schema(files, TextSettings(text_column="content"))
    with pytest.raises(InputError, match="column 'body' is int64, expected string text"):
        check_schema(files, TextSettings(text_column="body"))
    with pytest.raises(InputError, match="expected list<string>"):
        check_schema(files, TextSettings(tokens_column="text"))
    with pytest.raises(InputError, match="missing column 'uid'"):
        check_schema(files, TextSettings(id_column="uid"))
    with pytest.raises(InputError, match="no such file or directory"):
        list_inputs([str(tmp_path / "nope")])
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        list_inputs([str(tmp_path / "bad.parquet")])


def test_tiny_files_are_packed_into_few_units(tmp_path):
    d = tmp_path / "many"
    d.mkdir()
    for k in range(300):
        _write(d / f"f{k:04d}.parquet", 3, 10)
    files = list_inputs([str(d)])
    assert len(files) == 300
    units = plan_units(files, rows_per_unit=200)
    assert len(units) == 5 and [u.total_rows for u in units] == [198, 198, 198, 198, 108]
    assert sum(len(u.uris) for u in units) == 300
    # reading a packed unit gives every file's rows in listing order, with their own source and row
    t = read_unit(units[0], TextSettings(id_column="id"))
    assert t.num_rows == 198
    assert t.column("id").to_pylist()[:4] == ["f0000-0", "f0000-1", "f0000-2", "f0001-0"]
    assert t.column("_row").to_pylist()[:4] == [0, 1, 2, 0]
    assert t.column("source").to_pylist()[3] == str(d / "f0001.parquet")
    # the unit survives its trip to an actor (a plain dict) unchanged
    from elmo_dist.stages.read import Unit

    assert Unit.from_dict(units[0].to_dict()) == units[0]
    # without packing (refresh: one file per unit), every file is its own unit, as before
    alone = plan_units(files, rows_per_unit=200, pack=False)
    assert len(alone) == 300 and alone[0].unit_id == plan_units(files[:1], rows_per_unit=200)[0].unit_id


def test_big_files_are_not_packed_and_keep_their_ids(tmp_path):
    _write(tmp_path / "a.parquet", 25, 10)
    _write(tmp_path / "b.parquet", 4, 10)
    _write(tmp_path / "c.parquet", 3, 10)
    files = list_inputs([str(tmp_path)])
    units = plan_units(files, rows_per_unit=12)
    # a (25 rows) is cut by row groups; b and c (7 rows together) share one unit
    assert [u.total_rows for u in units] == [10, 10, 5, 7]
    assert units[:3] == plan_units(files[:1], rows_per_unit=12)
    assert units[3].uris == [files[1].uri, files[2].uri]


def test_slice_of_a_big_row_group_reads_only_its_rows(tmp_path):
    _write(tmp_path / "big.parquet", 100, 100)
    files = list_inputs([str(tmp_path / "big.parquet")])
    units = plan_units(files, rows_per_unit=30)
    assert [(u.offset, u.num_rows) for u in units] == [(0, 30), (30, 30), (60, 30), (90, 10)]
    got = [r for u in units for r in read_unit(u, TextSettings(id_column="id")).column("id").to_pylist()]
    assert got == [f"big-{i}" for i in range(100)]
    assert read_unit(units[1], TextSettings(id_column="id")).column("_row").to_pylist()[0] == 30


def test_units_are_capped_by_bytes(tmp_path):
    _write(tmp_path / "a.parquet", 40, 10)
    files = list_inputs([str(tmp_path / "a.parquet")])
    sizes = files[0].group_bytes
    assert len(sizes) == 4 and min(sizes) > 0
    cap = sizes[0] + sizes[1]  # the first two row groups fit exactly, a third never does
    units = plan_units(files, rows_per_unit=1000, bytes_per_unit=cap)
    assert sum(u.num_rows for u in units) == 40 and len(units) >= 2 and units[0].num_rows == 20
    for u in units:
        assert sum(sizes[g] for g in u.row_groups) <= cap


def test_units_are_cut_by_their_estimated_output_size(tmp_path):
    """Per-token vectors of every layer of a 1024-dim model are ~12 kB per token: a unit then reads
    at most ~350 kB of text (~1 GiB of output), however many rows --rows-per-unit allows."""
    from elmo_dist.config import JobConfig
    from elmo_dist.pipeline import output_bytes_per_token
    from elmo_dist.stages.read import (BYTES_PER_UNIT, MIN_BYTES_PER_UNIT, OUTPUT_BYTES_PER_UNIT,
                                       bytes_per_unit_for, list_inputs, plan_units)

    big = JobConfig.build(inputs=["x"], output=str(tmp_path / "o"), **{"embedding.token_embeddings": True,
                                                                      "embedding.token_output": "all"})
    per_token = output_bytes_per_token(big, 1024, 3)
    assert per_token > 1024 * 3 * 4
    cap = bytes_per_unit_for(per_token)
    assert MIN_BYTES_PER_UNIT <= cap < 400 << 10
    assert cap / 4.0 * per_token <= OUTPUT_BYTES_PER_UNIT * 1.001
    sentences_only = JobConfig.build(inputs=["x"], output=str(tmp_path / "o"))
    assert bytes_per_unit_for(output_bytes_per_token(sentences_only, 256, 3)) > 50 << 20
    assert bytes_per_unit_for(0) == BYTES_PER_UNIT

    import random

    rng = random.Random(0)
    rows = [(f"r{i}", " ".join(str(rng.getrandbits(24)) for _ in range(1300))) for i in range(200)]  # ~10 kB each
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows]}), tmp_path / "a.parquet",
                   row_group_size=10)
    files = list_inputs([str(tmp_path / "a.parquet")])
    units = plan_units(files, rows_per_unit=20_000, bytes_per_unit=cap)
    assert len(units) > 4  # cut by bytes, not by the 20,000-row limit
    assert all(sum(files[0].group_bytes[g] for g in u.row_groups) <= cap for u in units)
    assert sum(u.num_rows for u in units) == 200
