"""Results as Parquet tables (`rounds`, `masks`, `tickets`): explicit schemas, atomic and idempotent writes.

Layout under a results root (a local directory or any URI `pyarrow.fs.FileSystem.from_uri` accepts):

    <root>/rounds/<hash of key>.parquet    one file per round row, key (trial, round, kind)
    <root>/masks/<mask_id>.parquet         one file per mask, one row per tensor
    <root>/tickets/<hash of trial>.parquet one file per finished trajectory
    <root>/sweeps/<name>-<digest>.json     what each sweep ran with: resolved config, versions, start times

One small file per key means rewriting a key replaces its file (a retried round never duplicates a row),
and a file is written under a temporary name (prefix `.tmp-`, suffix `.partial`) and renamed into place,
so a reader sees a complete file or none. pandas, `pyarrow.dataset` and DuckDB
(`read_parquet('<root>/rounds/*.parquet')`) all read the tables directly; none of them matches the
temporary names. Every file carries the table name and `SCHEMA_VERSION` in its Parquet metadata.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .atomic import TMP_PREFIX, TMP_SUFFIX, write_file_atomically  # noqa: F401  (TMP_*: the names a reader skips)
from .errors import ResultsError
from .rows import (  # noqa: F401  (the row types and schemas, read from here by the store's users)
    ADDED_IN, MASKS_SCHEMA, ROUNDS_SCHEMA, SCHEMAS, TICKETS_SCHEMA, MaskRow, RoundRow, TicketRow, allowed_kinds,
    allowed_methods, as_dict,
)

SCHEMA_VERSION = 4  # rows.ADDED_IN says what each version added
META_TABLE = b"raytickets.table"
META_VERSION = b"raytickets.schema_version"



# ---------------------------------------------------------------- filesystems and atomic files


def open_filesystem(root: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI such as `s3://bucket/results` or `file:///tmp/r`."""
    text = os.fspath(root)
    if "://" in text:
        try:
            return pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise ResultsError(f"results dir {text!r}: cannot open ({first_line(exc)})") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))


def write_parquet_atomic(table: pa.Table, fs: pafs.FileSystem, path: str) -> None:
    """Write `table` to `path` so that a reader sees the whole file or no file, never a part of one."""
    write_file_atomically(fs, path, lambda out: pq.write_table(table, out, compression="zstd"))


def write_bytes_atomic(data: bytes, fs: pafs.FileSystem, path: str) -> None:
    """Write `data` to `path` with the same all-or-nothing guarantee (report pages, figures)."""
    write_file_atomically(fs, path, lambda out: out.write(data))


def check_writable(fs: pafs.FileSystem, path: str, what: str = "--out", shown: str | None = None) -> None:
    """ResultsError unless a folder can be made at `path` (a local path or one inside a URI's filesystem); the
    check writes nothing that stays. Locally, a folder is made and removed in the deepest existing ancestor: a
    permission bit says nothing to root, and neither does it about a read-only mount or /proc."""
    shown = shown or path
    if isinstance(fs, pafs.LocalFileSystem):
        _check_local_writable(path, what, shown)
        return
    probe = f"{path.rstrip('/')}/.write-probe-{os.getpid()}"
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as out:
            out.write(b"ok")
        fs.delete_file(probe)
    except (OSError, pa.ArrowException) as exc:
        raise ResultsError(f"{what}: cannot write to {shown} ({first_line(exc)})") from None


def _check_local_writable(path: str, what: str, shown: str) -> None:
    import tempfile

    target = os.path.abspath(os.path.expanduser(path))
    existing = target
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if existing == target and not os.path.isdir(target):
        raise ResultsError(f"{what}: {shown} is a file, not a directory")
    if existing != target and not os.path.isdir(existing):
        raise ResultsError(f"{what}: cannot write to {shown} ({existing} is a file, not a directory)")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-probe-", dir=existing))
    except OSError as exc:
        raise ResultsError(f"{what}: cannot write to {shown} (making a folder in {existing}: "
                           f"{exc.strerror or first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _key_file(*key: Any) -> str:
    """A stable file name for a row key: the same key always maps to the same file."""
    digest = hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:24]
    return f"{digest}.parquet"


def round_key(row: Mapping[str, Any]) -> tuple:
    """The dedup key of a round row: (trial, round, kind); transfer rows add (task, source_task), since one
    trial's mask may be transferred to several targets in a round, and multi-task rows add (task, arm)."""
    key = (row["trial"], int(row["round"]), row["kind"])
    if row["kind"] == "transfer":
        key += (row["task"], row.get("source_task"))
    elif row["kind"] == "mtl":
        key += (row["task"], row.get("arm"))
    return key


# ---------------------------------------------------------------- row validation


def _coerce_timestamp(value: Any, field: str) -> datetime | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ResultsError(f"{field}: {value!r} is not an ISO-8601 timestamp") from None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    if isinstance(value, datetime):
        # A naive time is taken to be UTC, as every raytickets writer records UTC.
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    raise ResultsError(f"{field}: {value!r} is not a timestamp (datetime, ISO string or epoch seconds)")


def rows_to_table(table_name: str, rows: Iterable[Any]) -> pa.Table:
    """Validate rows (row dataclasses or mappings) against the table's schema and build an Arrow table;
    ResultsError names the bad field."""
    schema = SCHEMAS[table_name]
    rows = [as_dict(row) for row in rows]
    for row in rows:
        unknown = sorted(set(row) - set(schema.names))
        if unknown:
            raise ResultsError(f"{table_name}: unknown column(s) {unknown}; allowed: {', '.join(schema.names)}")
    arrays = []
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if pa.types.is_timestamp(field.type):
            values = [_coerce_timestamp(v, f"{table_name}.{field.name}") for v in values]
        if not field.nullable and any(v is None for v in values):
            raise ResultsError(f"{table_name}.{field.name}: missing or None, but it is required")
        try:
            arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowException, TypeError, ValueError) as exc:
            bad = next((v for v in values if v is not None), None)
            raise ResultsError(
                f"{table_name}.{field.name}: value {bad!r} is not {field.type} ({first_line(exc)})"
            ) from None
    return tag_table(pa.Table.from_arrays(arrays, schema=schema), table_name)


def tag_table(table: pa.Table, table_name: str) -> pa.Table:
    """The table with the metadata every raytickets Parquet file carries: its table name and schema version."""
    return table.replace_schema_metadata({META_TABLE: table_name.encode(), META_VERSION: str(SCHEMA_VERSION).encode()})


def _check_round_values(row: Mapping[str, Any]) -> None:
    kinds, methods = allowed_kinds(), allowed_methods()
    if row.get("kind") not in kinds:
        raise ResultsError(f"rounds.kind: {row.get('kind')!r} is not allowed; allowed: {', '.join(kinds)}")
    if row.get("method") not in methods:
        raise ResultsError(f"rounds.method: {row.get('method')!r} is not allowed; allowed: {', '.join(methods)}")
    sparsity = row.get("sparsity")
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0.0 <= float(sparsity) <= 1.0:
        raise ResultsError(f"rounds.sparsity: {sparsity!r} is not a fraction in [0, 1]")


# ---------------------------------------------------------------- the store


class ResultsStore:
    """The `rounds`, `masks` and `tickets` tables of one results root (local path or URI)."""

    def __init__(self, root: str | os.PathLike, filesystem: pafs.FileSystem | None = None):
        self.root = os.fspath(root)
        if filesystem is None:
            self.fs, self.base = open_filesystem(self.root)
        else:  # an already-open filesystem (e.g. `SubTreeFileSystem`, a configured `S3FileSystem`)
            self.fs, self.base = filesystem, self.root.rstrip("/")
        info = self.fs.get_file_info(self.base)
        if info.type == pafs.FileType.File:
            raise ResultsError(f"results dir {self.root}: is a file, not a directory")

    # ------------------------------------------------------------ paths
    def path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def display(self, path: str) -> str:
        """A path as the user wrote the root (so error messages show `s3://...` for S3 results)."""
        rel = path[len(self.base.rstrip("/")) + 1:] if path.startswith(self.base.rstrip("/")) else path
        return f"{self.root.rstrip('/')}/{rel}"

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.File

    # ------------------------------------------------------------ writes
    def write_rounds(self, rows: Iterable[RoundRow | Mapping[str, Any]]) -> int:
        """Write round rows (one file each); a row whose key was written before replaces it. Returns the count.

        Every row is validated before any file is written, so a bad row leaves the store untouched.
        """
        rows = [as_dict(row) for row in rows]
        tables = []
        for row in rows:
            _check_round_values(row)
            table = rows_to_table("rounds", [row])
            tables.append((round_key(row), table))
        for key, table in tables:
            write_parquet_atomic(table, self.fs, self.path("rounds", _key_file("rounds", *key)))
        return len(tables)

    def write_mask(self, mask) -> str:
        """Store a `Mask` (content-addressed: a mask already stored is not written again); returns its id."""
        mask_id = mask.mask_id
        path = self.path("masks", f"{mask_id}.parquet")
        if self._exists(path):
            return mask_id
        rows = [{"mask_id": mask_id, **record} for record in mask.to_records()]  # valid: built from the Mask
        write_parquet_atomic(rows_to_table("masks", rows), self.fs, path)
        return mask_id

    def write_ticket(self, row: TicketRow | Mapping[str, Any]) -> None:
        """Write the summary of one finished trajectory; rewriting the same trial replaces it."""
        row = as_dict(row)
        table = rows_to_table("tickets", [row])
        write_parquet_atomic(table, self.fs, self.path("tickets", _key_file("tickets", row["trial"])))

    def write_weights(self, state: Mapping[str, Any], name: str) -> str:
        """Store fine-tuned weights as `<root>/weights/<name>.safetensors` (atomically); returns the path
        relative to the root, as `RoundRow.weights_path` records it."""
        from safetensors.torch import save

        relative = f"weights/{name}.safetensors"
        write_bytes_atomic(save(dict(state)), self.fs, self.path(relative))
        return relative

    def load_weights(self, relative: str) -> dict:
        """Weights stored by `write_weights` (safetensors: nothing is unpickled). `relative` comes from a row,
        which anyone can write: a path that leaves the root (`../`, absolute) is refused, never read."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        parts = str(relative).replace("\\", "/").split("/")
        if not relative or str(relative).startswith("/") or "://" in str(relative) or ".." in parts:
            raise ResultsError(f"rounds.weights_path: {relative!r} is not a path inside results dir {self.root}; "
                               f"allowed: weights/<name>.safetensors, as the writer records it")
        path = self.path(relative)
        if not self._exists(path):
            raise ResultsError(f"{self.display(path)}: weights file is not in results dir {self.root}")
        with self.fs.open_input_stream(path) as f:
            raw = f.read()
        try:
            return load(raw)
        except (SafetensorError, ValueError, OSError) as exc:
            raise ResultsError(f"{self.display(path)}: not a safetensors weights file ({first_line(exc)})") from None

    def write_sweep_record(self, record: Mapping[str, Any]) -> None:
        """Store what a sweep ran with (`name`, `config_digest`, its resolved `config`, `started_at`, `versions`)
        as `<root>/sweeps/<name>-<digest>.json`, for the report's header and cost. A resumed sweep keeps its first
        record and adds its start to `resumed_at`. JSON: a reader never unpickles it."""
        path = self.path("sweeps", f"{record['name']}-{record['config_digest']}.json")
        if self._exists(path):
            with self.fs.open_input_stream(path) as f:
                old = json.loads(f.read())
            record = {**old, "resumed_at": [*old.get("resumed_at", []), record["started_at"]]}
        write_bytes_atomic(json.dumps(record, indent=1, sort_keys=True, default=str).encode(), self.fs, path)

    def sweep_records(self) -> list[dict]:
        """Every stored sweep record (`write_sweep_record`), oldest start first; [] for results written without."""
        selector = pafs.FileSelector(self.path("sweeps"), allow_not_found=True)
        records = []
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.base_name.endswith(".json") and not info.base_name.startswith("."):
                with self.fs.open_input_stream(info.path) as f:
                    try:
                        records.append(json.loads(f.read()))
                    except ValueError as exc:
                        raise ResultsError(f"{self.display(info.path)}: not a sweep record ({first_line(exc)})") from None
        return sorted(records, key=lambda r: str(r.get("started_at", "")))

    def has_mask(self, mask_id: str) -> bool:
        return self._exists(self.path("masks", f"{mask_id}.parquet"))

    # ------------------------------------------------------------ reads
    def rounds(self) -> pd.DataFrame:
        """All round rows, one per key (the latest `finished_at` wins if a key was stored twice)."""
        return self._read("rounds")

    def masks(self) -> pd.DataFrame:
        """All stored mask records (one row per mask tensor)."""
        return self._read("masks")

    def tickets(self) -> pd.DataFrame:
        """One row per finished trajectory."""
        return self._read("tickets")

    def load_mask(self, mask_id: str):
        """The stored `Mask` with this id; ResultsError if absent, inconsistent or not matching its id."""
        from .masks import Mask

        path = self.path("masks", f"{mask_id}.parquet")
        if not self._exists(path):
            raise ResultsError(f"{self.display(path)}: mask {mask_id!r} is not stored in {self.root}")
        table = self._read_file("masks", path)
        records = table.to_pylist()
        for record in records:
            _check_mask_record(record, self.display(path))
            if record["mask_id"] != mask_id:
                raise ResultsError(f"{self.display(path)}: holds mask {record['mask_id']!r}, expected {mask_id!r}")
        try:
            mask = Mask.from_records(records)
        except Exception as exc:  # the Mask's own validation (dtype, duplicate names, ...)
            raise ResultsError(f"{self.display(path)}: not a valid mask ({first_line(exc)})") from None
        if mask.mask_id != mask_id:
            raise ResultsError(f"{self.display(path)}: content hash is {mask.mask_id}, not {mask_id} (file corrupted)")
        return mask

    def table_files(self, table_name: str) -> list[str]:
        """The complete Parquet files of a table (temporary and hidden files excluded)."""
        selector = pafs.FileSelector(self.path(table_name), allow_not_found=True)
        return sorted(
            info.path for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
            and not info.base_name.startswith((".", "_"))
        )

    def _read(self, table_name: str, required: bool = True) -> pd.DataFrame:
        files = self.table_files(table_name)
        schema = SCHEMAS[table_name]
        if not files:
            if required:
                raise ResultsError(
                    f"{self.display(self.path(table_name))}: no {table_name} table in results dir {self.root} "
                    f"(no *.parquet files){self._inner_root_hint(table_name)}"
                )
            return schema.empty_table().to_pandas()
        # Threads overlap the per-file latency of object stores; pyarrow releases the GIL while reading.
        with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
            tables = list(pool.map(lambda p: self._read_file(table_name, p), files))
        frame = pa.concat_tables(tables).to_pandas()
        return _dedupe(table_name, frame)

    def _inner_root_hint(self, table_name: str) -> str:
        """Pointed at a sweep's folder (Tune's trials and `results/`), name the results root inside it."""
        inner = f"{self.root.rstrip('/')}/results"
        found = self.fs.get_file_info(self.path("results", table_name))
        return (f"; {self.root} is a sweep's folder: its results root is {inner}"
                if found.type == pafs.FileType.Directory else "")

    def _read_file(self, table_name: str, path: str) -> pa.Table:
        where = self.display(path)
        try:
            table = pq.read_table(path, filesystem=self.fs)
        except (pa.ArrowException, OSError) as exc:
            raise ResultsError(f"{where}: not a complete Parquet file, truncated or corrupt ({first_line(exc)})") from None
        meta = table.schema.metadata or {}
        stored_name = meta.get(META_TABLE, b"").decode()
        if stored_name != table_name:
            raise ResultsError(f"{where}: metadata says table {stored_name or 'none'!r}, expected {table_name!r}")
        try:
            version = int(meta.get(META_VERSION, b""))
        except ValueError:
            raise ResultsError(f"{where}: no valid {META_VERSION.decode()} in its metadata") from None
        if version > SCHEMA_VERSION:
            raise ResultsError(
                f"{where}: schema version {version} is newer than this raytickets reads ({SCHEMA_VERSION}); upgrade raytickets"
            )
        schema = SCHEMAS[table_name]
        for v in range(version + 1, SCHEMA_VERSION + 1):  # columns added since the file was written: nulls
            for name in ADDED_IN.get(v, {}).get(table_name, ()):
                if name not in table.column_names:
                    table = table.append_column(schema.field(name), pa.nulls(table.num_rows, schema.field(name).type))
        missing = [name for name in schema.names if name not in table.column_names]
        if missing:
            raise ResultsError(f"{where}: missing column(s) {missing} of the {table_name} table")
        try:
            return table.select(schema.names).cast(schema)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise ResultsError(f"{where}: columns do not have the {table_name} schema's types ({first_line(exc)})") from None


def _check_mask_record(record: Mapping[str, Any], where: str) -> None:
    shape, numel, bits = list(record["shape"]), int(record["numel"]), record["bits"]
    if math.prod(shape) != numel:
        raise ResultsError(f"{where}: tensor {record['tensor']!r} has shape {shape} but numel {numel}")
    if len(bits) != (numel + 7) // 8:
        raise ResultsError(
            f"{where}: tensor {record['tensor']!r} has {len(bits)} bytes of bits, shape {shape} needs {(numel + 7) // 8}"
        )


def _dedupe(table_name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """One row per key; where a key appears twice (files copied between roots), the latest write wins."""
    if table_name == "masks":
        return frame.drop_duplicates(["mask_id", "tensor"], keep="last").reset_index(drop=True)
    if table_name == "tickets":
        keys = ["trial"]
    else:
        # the same key as `round_key`: transfer rows add (task, source_task), multi-task rows (task, arm)
        transfer, mtl = frame["kind"] == "transfer", frame["kind"] == "mtl"
        frame = frame.assign(
            _task=frame["task"].where(transfer | mtl, ""),
            _extra=frame["source_task"].where(transfer, frame["arm"].where(mtl, "")).fillna(""),
        )
        keys = ["trial", "round", "kind", "_task", "_extra"]
    frame = frame.sort_values("finished_at", kind="stable", na_position="first")
    frame = frame.drop_duplicates(keys, keep="last").drop(columns=["_task", "_extra"], errors="ignore")
    return frame.sort_index().reset_index(drop=True)
