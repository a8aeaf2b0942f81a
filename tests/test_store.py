"""store: Parquet tables read by pandas, pyarrow.dataset and DuckDB; atomic, idempotent writes; clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from raytickets.errors import ResultsError
from raytickets.masks import Mask
from raytickets.store import ADDED_IN, ROUNDS_SCHEMA, SCHEMA_VERSION, ResultsStore, rows_to_table

REPO = Path(__file__).resolve().parents[1]


def row(**over) -> dict:
    base = dict(
        sweep="s1", trial="sst2-0", task="sst2", model="minilm", method="magnitude", scope="global",
        schedule="remaining", rate=0.2, target_sparsity=None, head_fraction=None, ffn_fraction=None, rewind_step=0,
        seed=0, round=1, kind="ticket", sparsity=0.2, metric_name="accuracy", metric=0.91, accuracy=0.91,
        full_metric=0.92, training_steps=100, wall_seconds=3.5, mask_id="0123456789abcdef",
        started_at="2024-05-01T10:00:00+00:00", finished_at="2024-05-01T10:05:00+00:00",
    )
    return {**base, **over}


def mask(seed: int = 0, shapes=((3, 5), (8, 4))) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({f"encoder.layer.{i}.attention.self.query.weight": torch.rand(s, generator=g) < 0.6
                 for i, s in enumerate(shapes)})


def parquet_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.parquet"))


def one_line_error(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_rounds_are_readable_by_pandas_pyarrow_dataset_and_duckdb(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_rounds([row(round=r, sparsity=1 - 0.8 ** r, metric=0.9 - r / 100) for r in range(1, 4)])
    frame = store.rounds().sort_values("round")
    assert frame["round"].tolist() == [1, 2, 3]
    assert frame["metric"].tolist() == pytest.approx([0.89, 0.88, 0.87])
    assert str(frame["started_at"].dt.tz) == "UTC" and frame["target_sparsity"].isna().all()

    assert len(pd.read_parquet(tmp_path / "rounds")) == 3
    table = ds.dataset(tmp_path / "rounds", format="parquet").to_table()
    assert table.schema.equals(ROUNDS_SCHEMA) and table.num_rows == 3
    con = duckdb.connect()
    rows = con.sql(f"SELECT round, metric FROM read_parquet('{tmp_path}/rounds/*.parquet') ORDER BY round").fetchall()
    assert rows == [(1, pytest.approx(0.89)), (2, pytest.approx(0.88)), (3, pytest.approx(0.87))]
    meta = pq.read_schema(parquet_files(tmp_path / "rounds")[0]).metadata
    assert meta[b"raytickets.schema_version"] == str(SCHEMA_VERSION).encode()


def test_same_round_written_twice_leaves_one_row(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_rounds([row(metric=0.5)])
    store.write_rounds([row(metric=0.7, finished_at="2024-05-01T11:00:00+00:00")])  # a retried round
    frame = store.rounds()
    assert len(frame) == 1 and frame["metric"].iloc[0] == 0.7
    assert len(parquet_files(tmp_path / "rounds")) == 1
    # Other kinds of the same round are other rows; transfer rows are keyed by their target and source too.
    store.write_rounds([row(kind="random"), row(kind="transfer", task="mrpc", source_task="sst2"),
                        row(kind="transfer", task="rte", source_task="sst2")])
    assert sorted(store.rounds()["kind"]) == ["random", "ticket", "transfer", "transfer"]


def test_reading_dedupes_copied_files_keeping_the_latest(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_rounds([row(metric=0.5, finished_at="2024-05-01T12:00:00+00:00")])
    (file,) = parquet_files(tmp_path / "rounds")
    (tmp_path / "rounds" / "copied-from-another-root.parquet").write_bytes(file.read_bytes())
    store.write_rounds([row(metric=0.6, finished_at="2024-05-01T09:00:00+00:00")])  # older finish time
    assert len(parquet_files(tmp_path / "rounds")) == 2
    frame = store.rounds()
    assert len(frame) == 1 and frame["metric"].iloc[0] == 0.5


def test_mask_rebuilt_from_the_masks_table_equals_the_saved_mask(tmp_path):
    store = ResultsStore(tmp_path)
    saved = mask(seed=1)  # 15 + 32 weights: the first tensor does not fill its last byte
    mask_id = store.write_mask(saved)
    assert mask_id == saved.mask_id and store.write_mask(mask(seed=1)) == mask_id
    assert len(parquet_files(tmp_path / "masks")) == 1
    loaded = store.load_mask(mask_id)
    assert loaded == saved and loaded.mask_id == mask_id and loaded.names == saved.names
    records = store.masks().drop(columns="mask_id").to_dict("records")
    assert Mask.from_records(records) == saved
    assert store.masks()["shape"].map(list).tolist() == [[3, 5], [8, 4]]


def test_ticket_rewritten_for_the_same_trial_replaces_it(tmp_path):
    store = ResultsStore(tmp_path)
    ticket = dict(trial="sst2-0", task="sst2", model="minilm", method="magnitude", seed=0, rounds=3, best_round=2,
                  best_sparsity=0.36, best_metric=0.93, gain=0.01, finished_at="2024-05-01T12:00:00Z")
    store.write_ticket(ticket)
    store.write_ticket({**ticket, "rounds": 4})
    store.write_ticket({**ticket, "trial": "sst2-1", "seed": 1})
    frame = store.tickets().set_index("trial")
    assert frame.loc["sst2-0", "rounds"] == 4 and len(frame) == 2


def stored_rounds(store: ResultsStore, trial: str, kind: str = "ticket") -> set[int]:
    """Round numbers of `trial` stored with this kind (what a resume looks for)."""
    frame = store.rounds()
    return {int(r) for r in frame[(frame["trial"] == trial) & (frame["kind"] == kind)]["round"]}


def test_round_keys_on_a_written_store(tmp_path):
    store = ResultsStore(tmp_path / "new")
    store.write_rounds([row(round=0, kind="full"), row(round=1), row(round=2), row(round=2, kind="random")])
    assert stored_rounds(store, "sst2-0") == {1, 2} and stored_rounds(store, "sst2-0", "full") == {0}
    assert stored_rounds(store, "sst2-0", "random") == {2}
    store.write_rounds([row(kind="transfer", task="mrpc", source_task="sst2"),
                        row(kind="mtl", task="mrpc", arm="plain"), row(kind="mtl", task="mrpc", arm="tickets_share"),
                        row(kind="mtl", task="mrpc", arm="plain", metric=0.5)])  # the same key again: replaced
    frame = store.rounds()
    transfer, mtl = frame[frame["kind"] == "transfer"], frame[frame["kind"] == "mtl"]
    assert list(transfer["task"]) == ["mrpc"] and sorted(mtl["arm"]) == ["plain", "tickets_share"]
    assert mtl.set_index("arm").loc["plain", "metric"] == 0.5


def test_a_version_1_file_is_read_with_the_new_columns_null(tmp_path):
    store = ResultsStore(tmp_path)
    v2 = rows_to_table("rounds", [row()])
    v1 = v2.drop_columns(list(ADDED_IN[2]["rounds"]))
    v1 = v1.replace_schema_metadata({**v2.schema.metadata, b"raytickets.schema_version": b"1"})
    _write_raw(tmp_path / "rounds" / "v1.parquet", v1)
    frame = store.rounds()
    assert len(frame) == 1 and frame["metric"].iloc[0] == 0.91
    assert frame["setting_id"].isna().all() and frame["failed"].isna().all()


@pytest.mark.parametrize("bad, message", [
    ({"kind": "lottery"}, r"rounds\.kind: 'lottery' is not allowed; allowed: ticket, full, transfer, mtl, random"),
    ({"method": "bogus-method"}, r"rounds\.method: 'bogus-method'"),
    ({"sparsity": 1.5}, r"rounds\.sparsity: 1\.5 is not a fraction"),
    ({"metric": None}, r"rounds\.metric: missing or None, but it is required"),
    ({"metric": "high"}, r"rounds\.metric: value 'high' is not double"),
    ({"metrics": 0.9}, r"rounds: unknown column\(s\) \['metrics'\]"),
    ({"finished_at": "yesterday"}, r"rounds\.finished_at: 'yesterday' is not an ISO-8601 timestamp"),
])
def test_bad_round_rows_are_refused_and_nothing_is_written(tmp_path, bad, message):
    store = ResultsStore(tmp_path)
    with pytest.raises(ResultsError, match=message) as excinfo:
        store.write_rounds([row(round=1), row(round=2, **bad)])  # a good row first: it must not be written
    one_line_error(excinfo)
    assert not (tmp_path / "rounds").exists()


def test_results_dir_without_tables_is_a_clear_error(tmp_path):
    store = ResultsStore(tmp_path)
    for read, table in ((store.rounds, "rounds"), (store.masks, "masks"), (store.tickets, "tickets")):
        with pytest.raises(ResultsError, match=f"{tmp_path}/{table}: no {table} table in results dir") as excinfo:
            read()
        one_line_error(excinfo)
    with pytest.raises(ResultsError, match=r"masks/feedfeedfeedfeed\.parquet: mask 'feedfeedfeedfeed' is not stored"):
        store.load_mask("feedfeedfeedfeed")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultsError, match="is a file, not a directory"):
        ResultsStore(tmp_path / "file")


def _write_raw(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_table_with_missing_columns_or_newer_schema_is_refused(tmp_path):
    store = ResultsStore(tmp_path)
    good = rows_to_table("rounds", [row()])
    _write_raw(tmp_path / "rounds" / "old.parquet", good.drop_columns(["metric", "kind"]))
    with pytest.raises(ResultsError, match=r"rounds/old\.parquet: missing column\(s\) \['kind', 'metric'\]") as excinfo:
        store.rounds()
    one_line_error(excinfo)

    newer = good.replace_schema_metadata({**good.schema.metadata, b"raytickets.schema_version": b"99"})
    _write_raw(tmp_path / "rounds" / "old.parquet", newer)
    with pytest.raises(ResultsError, match=rf"old\.parquet: schema version 99 is newer than this raytickets reads \({SCHEMA_VERSION}\)"):
        store.rounds()

    _write_raw(tmp_path / "rounds" / "old.parquet", pa.table({"trial": ["x"]}))  # a foreign Parquet file
    with pytest.raises(ResultsError, match=r"old\.parquet: metadata says table 'none', expected 'rounds'"):
        store.rounds()


def test_truncated_parquet_file_is_named(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_rounds([row(round=1), row(round=2)])
    victim = parquet_files(tmp_path / "rounds")[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(ResultsError, match=f"{victim.name}: not a complete Parquet file, truncated or corrupt") as excinfo:
        store.rounds()
    one_line_error(excinfo)


def test_mask_records_whose_shapes_disagree_are_refused(tmp_path):
    store = ResultsStore(tmp_path)
    saved = mask(seed=2)
    mask_id = store.write_mask(saved)
    path = tmp_path / "masks" / f"{mask_id}.parquet"
    table = pq.read_table(path)

    def rewrite(column: str, values) -> None:
        i = table.schema.get_field_index(column)
        _write_raw(path, table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type)))

    rewrite("shape", [[4, 5], [8, 4]])  # 20 weights claimed, numel says 15
    with pytest.raises(ResultsError, match=rf"{mask_id}\.parquet: tensor '.*layer\.0.*' has shape \[4, 5\] but numel 15"):
        store.load_mask(mask_id)
    rewrite("bits", [b"\x00", table.column("bits")[1].as_py()])  # 1 byte cannot hold 15 bits
    with pytest.raises(ResultsError, match=r"has 1 bytes of bits, shape \[3, 5\] needs 2"):
        store.load_mask(mask_id)
    flipped = bytes([table.column("bits")[0].as_py()[0] ^ 0x80]) + table.column("bits")[0].as_py()[1:]
    rewrite("bits", [flipped, table.column("bits")[1].as_py()])
    with pytest.raises(ResultsError, match=rf"content hash is [0-9a-f]{{16}}, not {mask_id} \(file corrupted\)"):
        store.load_mask(mask_id)


def test_temporary_files_are_ignored_by_every_reader(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_rounds([row()])
    (tmp_path / "rounds" / ".tmp-deadbeef-x.parquet.partial").write_bytes(b"PAR1 half a file")
    assert len(store.rounds()) == 1 and len(pd.read_parquet(tmp_path / "rounds")) == 1
    assert ds.dataset(tmp_path / "rounds").count_rows() == 1
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/rounds/*.parquet')").fetchall() == [(1,)]


WRITER = """
import sys, torch
from raytickets.masks import Mask
from raytickets.store import ResultsStore
store, g = ResultsStore(sys.argv[1]), torch.Generator().manual_seed(0)
while True:  # large masks, written one after another until the parent kills this process
    store.write_mask(Mask({f"t{k}": torch.rand(2048, 2048, generator=g) < 0.5 for k in range(6)}))
"""


def test_writer_killed_mid_write_leaves_no_partial_parquet_file(tmp_path):
    masks_dir = tmp_path / "masks"
    for _ in range(3):  # the kill must land while a temporary file exists; retry if it was between files
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                names = os.listdir(masks_dir) if masks_dir.exists() else []
                if any(n.startswith(".tmp-") for n in names) and any(n.endswith(".parquet") for n in names):
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.0005)
        finally:
            proc.kill()
            proc.wait()
        if any(n.startswith(".tmp-") for n in os.listdir(masks_dir)):
            break
    leftovers = [n for n in os.listdir(masks_dir) if n.startswith(".tmp-")]
    assert leftovers, "never killed the writer mid-write"
    assert all(n.endswith(".partial") for n in leftovers)  # not matched by *.parquet globs
    store = ResultsStore(tmp_path)
    complete = parquet_files(masks_dir)
    assert complete and all(store.load_mask(p.stem).mask_id == p.stem for p in complete)
    assert store.masks()["mask_id"].nunique() == len(complete)
    [(count,)] = duckdb.sql(f"SELECT count(DISTINCT mask_id) FROM read_parquet('{masks_dir}/*.parquet')").fetchall()
    assert count == len(complete) and ds.dataset(masks_dir).count_rows() == 6 * len(complete)


def test_generic_filesystem_path_and_file_uri(tmp_path):
    # A SubTreeFileSystem over local disk is not a LocalFileSystem, so this exercises the code path
    # used for S3 and other URIs (output stream + move) while the files stay readable on disk.
    store = ResultsStore("results", filesystem=pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()))
    saved = mask(seed=4)
    store.write_rounds([row(), row()])
    store.write_mask(saved)
    assert len(store.rounds()) == 1 and store.load_mask(saved.mask_id) == saved
    assert not [n for n in os.listdir(tmp_path / "results" / "rounds") if not n.endswith(".parquet")]
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/results/rounds/*.parquet')").fetchall() == [(1,)]
    with pytest.raises(ResultsError, match=r"^results/tickets: no tickets table"):
        store.tickets()

    uri_store = ResultsStore((tmp_path / "results").as_uri())
    assert len(uri_store.rounds()) == 1 and uri_store.load_mask(saved.mask_id) == saved
    with pytest.raises(ResultsError, match=r"^file://.*/results/tickets: no tickets table"):
        uri_store.tickets()
