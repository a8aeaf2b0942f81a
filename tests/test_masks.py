"""The Mask value: validation, sparsity, apply, overlap, identity, Parquet rows and safetensors files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from raytickets.errors import MaskError
from raytickets.masks import Mask

NAMES = ("encoder.layer.0.attention.self.query.weight", "encoder.layer.1.output.dense.weight", "pooler.dense.weight")


def small_params() -> dict[str, torch.nn.Parameter]:
    torch.manual_seed(0)
    shapes = [(4, 6), (3, 5), (2, 2)]
    return {n: torch.nn.Parameter(torch.randn(*s)) for n, s in zip(NAMES, shapes)}


def random_mask(params, keep=0.5, seed=0) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(p.shape, generator=g) < keep for n, p in params.items()})


# -- construction and validation ---------------------------------------------------------------------


def test_accepts_01_tensors_and_stores_bool_on_cpu():
    mask = Mask({"a": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "b": np.array([1, 1, 0])})
    assert all(t.dtype == torch.bool and t.device.type == "cpu" for t in mask.tensors.values())
    assert mask.tensors["a"].tolist() == [[True, False], [False, True]]
    assert mask.names == ["a", "b"] and mask.shapes == {"a": (2, 2), "b": (3,)}


@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, float("nan")])
def test_rejects_values_other_than_0_and_1(bad):
    with pytest.raises(MaskError, match=r"'w'.*not 0/1"):
        Mask({"w": torch.tensor([1.0, bad, 0.0])})


def test_rejects_empty_mask_and_bad_names():
    with pytest.raises(MaskError, match="no tensors"):
        Mask({})
    with pytest.raises(MaskError, match="names"):
        Mask({3: torch.ones(2)})


def test_tensors_view_is_read_only():
    mask = Mask({"a": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(TypeError):
        mask.tensors["b"] = torch.ones(1, dtype=torch.bool)


def test_validate_names_missing_extra_and_wrong_shape():
    params = small_params()
    mask = Mask.ones_like(params)
    mask.validate(params)
    fewer = dict(params)
    del fewer[NAMES[2]]
    with pytest.raises(MaskError, match=r"'pooler\.dense\.weight' is not a prunable tensor"):
        mask.validate(fewer)
    with pytest.raises(MaskError, match=r"no entry for prunable tensor 'pooler\.dense\.weight'"):
        Mask.ones_like(fewer).validate(params)
    reshaped = dict(params, **{NAMES[0]: torch.zeros(6, 4)})
    with pytest.raises(MaskError, match=r"query\.weight'.*shape \[4, 6\].*\[6, 4\]"):
        mask.validate(reshaped)


# -- counts and sparsity -----------------------------------------------------------------------------


def test_counts_and_sparsity_overall_per_tensor_per_layer():
    mask = Mask({
        NAMES[0]: torch.tensor([[1, 0, 0, 0]]),  # 3 of 4 pruned
        "encoder.layer.0.intermediate.dense.weight": torch.tensor([1, 1, 1, 1]),  # 0 of 4
        NAMES[1]: torch.tensor([0, 0]),  # 2 of 2
        NAMES[2]: torch.tensor([1, 1, 0, 1, 1, 1, 1, 1, 1, 1]),  # 1 of 10
    })
    assert (mask.num_total, mask.num_kept, mask.num_pruned) == (20, 14, 6)
    assert mask.sparsity() == pytest.approx(6 / 20)
    assert mask.sparsity_per_tensor() == pytest.approx({NAMES[0]: 0.75, "encoder.layer.0.intermediate.dense.weight": 0.0,
                                                        NAMES[1]: 1.0, NAMES[2]: 0.1})
    assert mask.sparsity_per_layer() == pytest.approx({"0": 3 / 8, "1": 1.0, "pooler": 0.1})


def test_ones_like_is_dense():
    mask = Mask.ones_like(small_params())
    assert mask.sparsity() == 0.0 and mask.num_kept == 24 + 15 + 4


# -- apply -------------------------------------------------------------------------------------------


def test_apply_zeroes_exactly_the_pruned_entries_in_place():
    params = small_params()
    before = {n: p.detach().clone() for n, p in params.items()}
    storage = {n: p.data_ptr() for n, p in params.items()}
    mask = random_mask(params)
    assert all(p.requires_grad for p in params.values())  # apply works on leaf parameters: no_grad inside
    mask.apply(params)
    mask.apply(params)  # idempotent
    for n, p in params.items():
        m = mask.tensors[n]
        assert p.data_ptr() == storage[n]
        assert 0 < int(m.sum()) < m.numel()
        assert torch.all(p[~m] == 0)
        assert torch.equal(p[m], before[n][m])


def test_apply_refuses_params_that_do_not_fit():
    params = small_params()
    mask = random_mask(params)
    with pytest.raises(MaskError, match="shape"):
        mask.apply(dict(params, **{NAMES[2]: torch.zeros(3, 3)}))


# -- overlap -----------------------------------------------------------------------------------------


def test_jaccard_of_kept_sets():
    a = Mask({"x": torch.tensor([1, 1, 1, 0, 0, 0]), "y": torch.tensor([1, 0])})
    b = Mask({"x": torch.tensor([1, 1, 0, 1, 0, 0]), "y": torch.tensor([1, 1])})
    # kept(a) = {x0, x1, x2, y0}, kept(b) = {x0, x1, x3, y0, y1}: intersection 3, union 6
    assert a.jaccard(b) == pytest.approx(3 / 6) == b.jaccard(a)
    assert a.jaccard(a) == 1.0
    assert a.jaccard(Mask({"x": torch.tensor([0, 0, 0, 1, 1, 1]), "y": torch.tensor([0, 1])})) == 0.0
    empty = Mask({"x": torch.zeros(6), "y": torch.zeros(2)})
    assert empty.jaccard(empty) == 1.0


def test_jaccard_requires_same_tensors():
    a = Mask({"x": torch.ones(3)})
    with pytest.raises(MaskError, match="different tensors"):
        a.jaccard(Mask({"x": torch.ones(4)}))
    with pytest.raises(MaskError, match="different tensors"):
        a.jaccard(Mask({"z": torch.ones(3)}))


def test_expected_random_jaccard_formula_and_simulation():
    assert Mask.expected_random_jaccard(0.0, 0.0) == 1.0
    assert Mask.expected_random_jaccard(1.0, 0.3) == 0.0
    assert Mask.expected_random_jaccard(0.5, 0.5) == pytest.approx(0.25 / 0.75)
    # Two independent uniformly random masks with exact pruned counts, as random_prune makes them.
    n, s1, s2 = 400_000, 0.5, 0.8
    g = torch.Generator().manual_seed(1)
    a = torch.ones(n, dtype=torch.bool)
    a[torch.randperm(n, generator=g)[: round(s1 * n)]] = False
    b = torch.ones(n, dtype=torch.bool)
    b[torch.randperm(n, generator=g)[: round(s2 * n)]] = False
    observed = Mask({"w": a}).jaccard(Mask({"w": b}))
    assert observed == pytest.approx(Mask.expected_random_jaccard(s1, s2), abs=3e-3)
    with pytest.raises(MaskError, match="s2"):
        Mask.expected_random_jaccard(0.5, 1.5)


# -- identity ----------------------------------------------------------------------------------------


def test_mask_id_is_a_content_hash():
    params = small_params()
    a, b = random_mask(params, seed=3), random_mask(params, seed=3)
    assert a == b and a.mask_id == b.mask_id
    assert len(a.mask_id) == 16 and int(a.mask_id, 16) >= 0
    reordered = Mask({n: a.tensors[n] for n in reversed(a.names)})
    assert reordered == a and reordered.mask_id == a.mask_id  # a mask is a mapping: order is not content
    flipped = {n: t.clone() for n, t in a.tensors.items()}
    flipped[NAMES[2]][1, 1] = ~flipped[NAMES[2]][1, 1]
    assert Mask(flipped) != a and Mask(flipped).mask_id != a.mask_id
    # Same bits, different shape: a different mask.
    c = Mask({"w": torch.tensor([[1, 0], [1, 1]])})
    assert c.mask_id != Mask({"w": torch.tensor([1, 0, 1, 1])}).mask_id


# -- Parquet rows ------------------------------------------------------------------------------------


def test_records_pack_bits_big_endian_row_major():
    mask = Mask({"w": torch.tensor([[1, 0, 0, 0, 0], [0, 0, 0, 1, 1]])})
    (row,) = mask.to_records()
    # flat bits 10000000 11 -> the first bit is the most significant; the last byte is zero-padded
    assert row == {"tensor": "w", "shape": [2, 5], "bits": bytes([0b10000000, 0b11000000]),
                   "numel": 10, "sparsity": pytest.approx(0.7)}


def test_records_round_trip_through_parquet(tmp_path):
    import pyarrow.parquet as pq

    mask = random_mask(small_params(), seed=5)
    records = [dict(r, mask_id=mask.mask_id) for r in mask.to_records()]
    schema = pa.schema([("mask_id", pa.string()), ("tensor", pa.string()), ("shape", pa.list_(pa.int64())),
                        ("bits", pa.binary()), ("numel", pa.int64()), ("sparsity", pa.float64())])
    pq.write_table(pa.Table.from_pylist(records, schema=schema), tmp_path / "masks.parquet")
    rows = pq.read_table(tmp_path / "masks.parquet").to_pylist()
    restored = Mask.from_records(rows)
    assert restored == mask and restored.names == mask.names and restored.mask_id == mask.mask_id


def test_from_records_rejects_inconsistent_rows():
    (row,) = Mask({"w": torch.ones(10)}).to_records()
    with pytest.raises(MaskError, match="packed bytes"):
        Mask.from_records([dict(row, bits=row["bits"][:1])])
    with pytest.raises(MaskError, match="numel"):
        Mask.from_records([dict(row, numel=9)])
    with pytest.raises(MaskError, match="appears twice"):
        Mask.from_records([row, row])
    with pytest.raises(MaskError, match="missing"):
        Mask.from_records([{"tensor": "w"}])


# -- files -------------------------------------------------------------------------------------------


def test_save_load_round_trip_keeps_order_and_uses_packed_uint8(tmp_path):
    from safetensors import safe_open

    mask = random_mask(small_params(), seed=7)
    path = tmp_path / "ticket.safetensors"
    mask.save(path)
    restored = Mask.load(path)
    assert restored == mask and restored.names == mask.names and restored.mask_id == mask.mask_id
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["shapes"]) == {n: list(s) for n, s in mask.shapes.items()}
        stored = f.get_tensor(NAMES[0])
    assert stored.dtype == torch.uint8 and stored.numel() == (24 + 7) // 8
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_load_refuses_missing_and_foreign_files(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(MaskError, match="does not exist"):
        Mask.load(tmp_path / "nope.safetensors")
    save_file({"w": torch.zeros(3)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(MaskError, match="format"):
        Mask.load(tmp_path / "weights.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MaskError, match="not a readable"):
        Mask.load(tmp_path / "junk.safetensors")


def test_bert_base_sized_mask_fits_in_12_mb(tmp_path):
    # bert-base: 12 layers x (Q, K, V, O of 768x768 + intermediate 3072x768 + output 768x3072) + pooler.
    shapes = {}
    for layer in range(12):
        prefix = f"encoder.layer.{layer}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[prefix + name + ".weight"] = (768, 768)
        shapes[prefix + "intermediate.dense.weight"] = (3072, 768)
        shapes[prefix + "output.dense.weight"] = (768, 3072)
    shapes["pooler.dense.weight"] = (768, 768)
    g = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.empty(s, dtype=torch.uint8).random_(0, 2, generator=g).bool() for n, s in shapes.items()})
    assert mask.num_total == 85_524_480
    path = tmp_path / "bert-base.safetensors"
    mask.save(path)
    assert path.stat().st_size <= 12_000_000
    restored = Mask.load(path)
    assert restored == mask
