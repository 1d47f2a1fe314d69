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
