"""MLM: corpus readers and their errors, packing, pre-masking (80/10/10), the cached splits, the head, the metric."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from raytickets import mlm
from raytickets.errors import ConfigError, DataError
from raytickets.mlm import (
    IGNORE,
    PremaskedCorpus,
    collate_blocks,
    corpus_texts,
    held_out,
    mlm_splits,
    pack,
    pack_array,
    premask,
    token_stream,
)
from raytickets.mlm_head import SparsePredictionMLM, load_mlm_model, masked_lm_sums, metrics_from_sums, mlm_metrics
from raytickets.models import load_tokenizer, packaged_minilm_dir
from raytickets.tasks import get_task, load_split


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def sentences(glue_dir) -> list[str]:
    """The first 600 CoLA sentences: real text, short enough for a few hundred blocks."""
    return list(load_split(get_task("cola"), "train", glue_dir)["text_a"][:600])


@pytest.fixture
def corpus_file(tmp_path, sentences) -> Path:
    path = tmp_path / "cola.txt"
    path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return path


def one_line_error(exc_info, *fragments: str) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --------------------------------------------------------------------------------------------- metric


def test_masked_lm_sums_score_exactly_the_masked_positions():
    """Position 0 is not masked (its logits would count as right for label 0); 1 is right, 2 wrong, 3 right."""
    logits = torch.tensor([[[9.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 5.0]]])
    labels = torch.tensor([[IGNORE, 1, 0, 2]])
    count, correct, loss = masked_lm_sums(logits, labels).tolist()
    by_hand = [math.log(math.exp(3) + 2) - 3, math.log(1 + math.exp(2) + math.e), math.log(2 + math.exp(5)) - 5]
    assert (count, correct) == (3, 2)
    assert loss == pytest.approx(sum(by_hand), rel=1e-6)
    metrics = metrics_from_sums(masked_lm_sums(logits, labels))
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["perplexity"] == pytest.approx(math.exp(sum(by_hand) / 3), rel=1e-6)


def test_no_masked_position_is_a_data_error():
    with pytest.raises(DataError) as exc:
        metrics_from_sums(masked_lm_sums(torch.zeros(1, 2, 3), torch.full((1, 2), IGNORE)))
    one_line_error(exc, "dev", "-100")


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir, tiny_dev):
    """The tiny random BERT with its output bias set to the log frequency of the dev labels, so that it predicts
    frequent tokens ("the", ".") and scores a non-zero accuracy."""
    model = load_mlm_model(str(tiny_model_dir), seed=0)
    labels = np.array(tiny_dev["labels"]).ravel()
    counts = np.bincount(labels[labels != IGNORE], minlength=model.config.vocab_size)
    with torch.no_grad():
        model.cls.predictions.bias.copy_(torch.from_numpy(np.log(counts + 0.1)))
    model.eval()
    return model


@pytest.fixture(scope="module")
def tiny_dev(sentences, tokenizer):
    return premask(pack(sentences[:200], tokenizer, 32), tokenizer, copies=1, probability=0.15, seed=5)[0]


def test_mlm_metrics_match_the_models_own_full_logits(tiny_lm, tiny_dev):
    """The sparse head scores what BertForMaskedLM's full [N, T, vocab] logits and loss give, at any batch size."""
    batch = collate_blocks([tiny_dev[i] for i in range(len(tiny_dev))])
    with torch.no_grad():
        out = tiny_lm(**batch)
    where = batch["labels"] != IGNORE
    accuracy = (out.logits.argmax(-1)[where] == batch["labels"][where]).float().mean().item()
    assert 0.02 < accuracy < 0.5
    for batch_size in (8, 80):
        metrics = mlm_metrics(tiny_lm, tiny_dev, batch_size)
        assert metrics["accuracy"] == pytest.approx(accuracy)
        assert metrics["perplexity"] == pytest.approx(math.exp(out.loss.item()), rel=1e-5)
    assert not tiny_lm.training  # restored as it was


def test_sparse_prediction_has_the_full_heads_loss_and_gradients(tiny_model_dir, tiny_dev):
    batch = collate_blocks([tiny_dev[i] for i in range(8)])
    full, sparse = load_mlm_model(str(tiny_model_dir), seed=0), load_mlm_model(str(tiny_model_dir), seed=0)
    full.eval(), sparse.eval()  # no dropout: the two forwards must see the same network
    full(**batch).loss.backward()
    out = SparsePredictionMLM(sparse)(**batch)
    out.loss.backward()
    assert out.logits.shape == (int((batch["labels"] != IGNORE).sum()), full.config.vocab_size)
    torch.testing.assert_close(out.loss, full(**batch).loss)
    for (name, a), b in zip(full.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def _metrics_rank(rank: int, world: int, port: int, model_dir: str, dev_dir: str, out: str) -> None:
    import os

    import torch.distributed as dist
    from datasets import load_from_disk

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        metrics = mlm_metrics(load_mlm_model(model_dir, seed=0), load_from_disk(dev_dir), batch_size=4)
        Path(f"{out}.{rank}").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_return_what_one_process_returns(tiny_model_dir, tiny_dev, tmp_path):
    """7 blocks over 2 ranks (4 + 3): each scores its shard, the sums are all-reduced, both ranks agree."""
    from raytickets.sweep.cluster import free_port

    dev = tiny_dev.select(range(7))
    dev.save_to_disk(str(tmp_path / "dev"))
    out = str(tmp_path / "metrics")
    torch.multiprocessing.spawn(_metrics_rank, args=(2, free_port(), str(tiny_model_dir), str(tmp_path / "dev"), out),
                                nprocs=2, join=True)
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    alone = mlm_metrics(load_mlm_model(str(tiny_model_dir), seed=0), dev, batch_size=4)
    assert ranks[0] == pytest.approx(alone, rel=1e-6)


# -------------------------------------------------------------------------------------------- packing


def test_pack_gives_blocks_of_exactly_the_length_and_keeps_the_stream_in_order(sentences, tokenizer):
    stream = token_stream(sentences[:300], tokenizer)
    assert (stream == tokenizer.sep_token_id).sum() == 300  # one [SEP] after each document
    blocks = pack(sentences[:300], tokenizer, 32)
    assert {len(b) for b in blocks} == {32}
    assert all(b[0] == tokenizer.cls_token_id and b[-1] == tokenizer.sep_token_id for b in blocks)
    bodies = np.concatenate([b[1:-1] for b in blocks])
    assert np.array_equal(bodies, stream[: len(bodies)])
    assert 0 <= len(stream) - len(bodies) < 30  # only the remainder, shorter than one block, is dropped


def test_pack_rejects_a_length_without_room_for_a_token(tokenizer):
    with pytest.raises(ConfigError) as exc:
        pack(["a sentence"], tokenizer, 2)
    one_line_error(exc, "max_seq_length", "2")


# -------------------------------------------------------------------------------------------- masking


@pytest.fixture(scope="module")
def blocks(sentences, tokenizer) -> np.ndarray:
    return pack_array(sentences, tokenizer, 64)


def _arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    return np.array(dataset["input_ids"]), np.array(dataset["labels"])


def test_premasked_copies_are_deterministic_by_seed_and_differ_from_one_another(blocks, tokenizer):
    first = [_arrays(d) for d in premask(blocks, tokenizer, copies=3, probability=0.15, seed=0)]
    again = [_arrays(d) for d in premask(blocks, tokenizer, copies=3, probability=0.15, seed=0)]
    other = [_arrays(d) for d in premask(blocks, tokenizer, copies=3, probability=0.15, seed=1)]
    for (x, y), (x2, y2) in zip(first, again):
        assert np.array_equal(x, x2) and np.array_equal(y, y2)
    chosen = [y != IGNORE for _, y in first]
    assert not np.array_equal(chosen[0], chosen[1]) and not np.array_equal(chosen[1], chosen[2])
    assert not np.array_equal(chosen[0], other[0][1] != IGNORE)
    for x, y in first:  # labels are the original ids where chosen; elsewhere the input is the original
        assert np.array_equal(np.where(y != IGNORE, y, x), blocks)
    d = premask(blocks, tokenizer, copies=1, probability=0.15, seed=0)[0]
    assert d.column_names == ["input_ids", "attention_mask", "token_type_ids", "labels"]
    assert {len(r) for c in d.column_names for r in d[c]} == {64}
    assert set(np.ravel(d["attention_mask"])) == {1} and set(np.ravel(d["token_type_ids"])) == {0}


def test_premask_chooses_15_percent_with_berts_80_10_10(blocks, tokenizer):
    """Over 10 copies of 110 blocks (~62,000 candidate positions, ~9,300 chosen): shares within ~5 sd."""
    specials = np.isin(blocks, tokenizer.all_special_ids)
    counts = {"chosen": 0, "mask": 0, "random": 0, "kept": 0}
    for d in premask(blocks, tokenizer, copies=10, probability=0.15, seed=0):
        x, y = _arrays(d)
        chosen = y != IGNORE
        counts["chosen"] += chosen.sum()
        counts["mask"] += (chosen & (x == tokenizer.mask_token_id)).sum()
        counts["kept"] += (chosen & (x == blocks)).sum()
        counts["random"] += (chosen & (x != blocks) & (x != tokenizer.mask_token_id)).sum()
    candidates = 10 * (~specials).sum()
    assert candidates > 50_000
    assert counts["chosen"] / candidates == pytest.approx(0.15, abs=0.005)  # round(0.15 n) per block
    assert counts["mask"] / counts["chosen"] == pytest.approx(0.8, abs=0.02)
    assert counts["random"] / counts["chosen"] == pytest.approx(0.1, abs=0.015)
    assert counts["kept"] / counts["chosen"] == pytest.approx(0.1, abs=0.015)


def test_special_tokens_are_never_masked_nor_drawn(blocks, tokenizer):
    """[CLS], [SEP] (block ends and document ends) and an [UNK] planted in every block stay, even at p = 0.9."""
    planted = blocks.copy()
    planted[:, 5] = tokenizer.unk_token_id
    special = np.isin(planted, tokenizer.all_special_ids)
    assert special[:, 1:-1].any()  # document-end [SEP]s inside blocks are among them
    for d in premask(planted, tokenizer, copies=2, probability=0.9, seed=3):
        x, y = _arrays(d)
        assert (y[special] == IGNORE).all() and np.array_equal(x[special], planted[special])
        replaced = (y != IGNORE) & (x != planted) & (x != tokenizer.mask_token_id)
        assert replaced.any() and not np.isin(x[replaced], tokenizer.all_special_ids).any()


@pytest.mark.parametrize("field, copies, probability", [
    ("data.mlm_probability", 10, 0.0), ("data.mlm_probability", 10, 1.0), ("data.mlm_probability", 10, 1.5),
    ("data.mlm_probability", 10, -0.1), ("data.mlm_probability", 10, "0.15"), ("data.mlm_probability", 10, True),
    ("data.mlm_copies", 0, 0.15), ("data.mlm_copies", -1, 0.15), ("data.mlm_copies", 2.5, 0.15),
    ("data.mlm_copies", True, 0.15),
])
def test_bad_masking_options_are_one_line_errors(tokenizer, corpus_file, tmp_path, field, copies, probability):
    with pytest.raises(ConfigError) as exc:
        mlm_splits(tokenizer, "minilm", str(corpus_file), None, copies=copies, probability=probability,
                   cache_dir=tmp_path / "cache")
    one_line_error(exc, field, repr(copies if field == "data.mlm_copies" else probability), "allowed")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("mlm-*"))


# ------------------------------------------------------------------------------------------- corpora


def test_a_file_with_one_document_per_line(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\ufeffThe cat sat.\nA dog ran far.\n  Birds sing.  \n\n\n", encoding="utf-8")  # BOM, blank tail
    docs, description = corpus_texts(str(path), None)
    assert docs == ["The cat sat.", "A dog ran far.", "Birds sing."]
    assert "3 documents, 9 words" in description and "one document per line" in description


def test_a_file_of_paragraphs_separated_by_blank_lines(tmp_path):
    path = tmp_path / "paragraphs.txt"
    path.write_text("\nThe cat sat\non the mat.\n\nA dog ran.\n\n\n  \nBirds\nsing\nloudly.\n", encoding="utf-8")
    docs, description = corpus_texts(str(path), None)
    assert docs == ["The cat sat on the mat.", "A dog ran.", "Birds sing loudly."]
    assert "3 documents" in description and "paragraphs" in description


def test_a_directory_reads_its_txt_files_in_name_order(tmp_path):
    (tmp_path / "b.txt").write_text("Second file.\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("First, line one.\nFirst, line two.\n", encoding="utf-8")
    (tmp_path / "notes.md").write_bytes(b"\0\1 not read")
    docs, description = corpus_texts(str(tmp_path), None)
    assert docs == ["First, line one.", "First, line two.", "Second file."]
    assert "2 .txt files, 3 documents" in description


def test_offline_fallback_is_every_glue_train_sentence(glue_dir):
    docs, description = corpus_texts(None, glue_dir)
    cola, rte = (load_split(get_task(t), "train", glue_dir) for t in ("cola", "rte"))
    assert docs[0] == cola["text_a"][0]
    at = docs.index(rte["text_a"][0])
    assert docs[at + 1] == rte["text_b"][0]  # a pair's two texts stay side by side
    assert len(docs) == len(set(docs)) == 87_085  # the 88,216 texts of the four shared splits, less repeats
    assert "(cola, sst2, mrpc, rte): 87,085 documents, 956,734 words" in description


@pytest.mark.parametrize("case", ["missing file", "missing dir", "empty", "blank", "binary", "latin-1",
                                  "no txt in dir", "binary txt in dir", "no corpus no glue", "empty string",
                                  "unknown hub id", "wikitext offline"])
def test_bad_corpora_are_one_line_errors_naming_the_field(tmp_path, case):
    glue_dir = None
    if case == "missing file":
        corpus, fragment = "corpus.txt", "does not exist"
    elif case == "missing dir":
        corpus, fragment = str(tmp_path / "nowhere"), "does not exist"
    elif case in ("empty", "blank"):
        corpus, fragment = str(tmp_path / "x.txt"), "no text"
        Path(corpus).write_text("" if case == "empty" else " \n\n\t\n", encoding="utf-8")
    elif case == "binary":
        corpus, fragment = str(tmp_path / "x.bin"), "binary"
        Path(corpus).write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    elif case == "latin-1":
        corpus, fragment = str(tmp_path / "x.txt"), "byte 0xe9"
        Path(corpus).write_bytes("un caf\u00e9 noir\n".encode("latin-1"))
    elif case in ("no txt in dir", "binary txt in dir"):
        corpus = str(tmp_path)
        if case == "no txt in dir":
            fragment = "no .txt files (found: notes.md)"
            (tmp_path / "notes.md").write_text("text, but not .txt", encoding="utf-8")
        else:
            fragment = "binary"
            (tmp_path / "a.txt").write_text("fine\n", encoding="utf-8")
            (tmp_path / "b.txt").write_bytes(b"\0" * 16)
    elif case == "no corpus no glue":
        corpus, fragment = None, "data.glue_dir is null"
    elif case == "empty string":
        corpus, fragment = "  ", "allowed"
    elif case == "unknown hub id":
        corpus, fragment = "raytickets-test/no-such-corpus", "could not be loaded"
    else:  # the alias resolves to the hub repository, which offline cannot be reached
        corpus, fragment = "wikitext-103-raw-v1", "Salesforce/wikitext"
    with pytest.raises(ConfigError) as exc:
        corpus_texts(corpus, glue_dir)
    one_line_error(exc, "data.corpus", fragment)


def test_a_glue_dir_without_glue_tasks_names_data_glue_dir(tmp_path):
    with pytest.raises(ConfigError) as exc:
        corpus_texts(None, tmp_path)
    one_line_error(exc, "data.glue_dir", "CoLA")


# -------------------------------------------------------------------------------------------- splits


def test_splits_hold_out_every_20th_block_premask_and_cycle_copies(tokenizer, corpus_file, sentences, tmp_path):
    splits = mlm_splits(tokenizer, "minilm", str(corpus_file), None, max_seq_length=32, seed=0, copies=3,
                        cache_dir=tmp_path)
    train, dev = splits["train"], splits["dev"]
    blocks = pack_array(sentences, tokenizer, 32)
    train_rows, dev_rows = held_out(len(blocks))
    assert isinstance(train, PremaskedCorpus) and train.num_copies == 3
    assert len(train) == len(train_rows) and len(dev) == len(dev_rows) == len(blocks) // 20 > 0

    def unmasked(d):
        x, y = _arrays(d)
        return np.where(y != IGNORE, y, x)

    assert np.array_equal(unmasked(dev), blocks[19::20])
    for e in range(4):
        assert np.array_equal(unmasked(train.for_epoch(e)), blocks[train_rows])
    assert train.for_epoch(3) is train.for_epoch(0)
    masks = [np.array(train.for_epoch(e)["labels"]) != IGNORE for e in range(3)]
    assert not np.array_equal(masks[0], masks[1])
    for d in (*train.copies, dev):  # read memory-mapped from the cache, not held in memory
        assert d.cache_files and all(Path(f["filename"]).is_relative_to(tmp_path) for f in d.cache_files)
    assert (f"{len(blocks):,} blocks of 32 tokens: {len(train_rows):,} train, {len(dev_rows)} dev (every 20th block); "
            f"3 masked copies of train") in train.description
    assert "600 documents" in train.description


def test_second_call_reads_the_cache_and_a_changed_setting_builds_anew(tokenizer, corpus_file, tmp_path, monkeypatch):
    first = mlm_splits(tokenizer, "minilm", str(corpus_file), None, max_seq_length=32, copies=2, cache_dir=tmp_path)

    def no_rebuild(*args):
        raise AssertionError("the corpus was read again")

    monkeypatch.setattr(mlm, "corpus_texts", no_rebuild)
    again = mlm_splits(tokenizer, "minilm", str(corpus_file), None, max_seq_length=32, copies=2, cache_dir=tmp_path)
    assert again["dev"]["labels"] == first["dev"]["labels"]
    assert again["train"].for_epoch(1)["input_ids"] == first["train"].for_epoch(1)["input_ids"]
    monkeypatch.undo()
    mlm_splits(tokenizer, "minilm", str(corpus_file), None, max_seq_length=32, copies=2, probability=0.2,
               cache_dir=tmp_path)
    corpus_file.write_text("A changed corpus.\n" * 400, encoding="utf-8")
    mlm_splits(tokenizer, "minilm", str(corpus_file), None, max_seq_length=32, copies=2, cache_dir=tmp_path)
    entries = sorted(tmp_path.glob("mlm-*"))
    assert len(entries) == 3 and not list(tmp_path.glob(".tmp-*"))
    assert json.loads((entries[0] / "key.json").read_text())["task"] == "mlm"


def test_max_examples_subsample_train_and_dev(tokenizer, corpus_file, tmp_path):
    splits = mlm_splits(tokenizer, "minilm", str(corpus_file), None, max_seq_length=32, max_train_examples=50,
                        max_dev_examples=4, copies=2, cache_dir=tmp_path)
    assert len(splits["train"]) == 50 and len(splits["dev"]) == 4


def test_a_corpus_too_small_for_two_blocks_is_a_one_line_error(tokenizer, tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("Only a few words here.\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        mlm_splits(tokenizer, "minilm", str(path), None, max_seq_length=128, cache_dir=tmp_path / "cache")
    one_line_error(exc, "data.corpus", "0 block(s)", "at least 2")


# --------------------------------------------------------------------------------------------- model


@pytest.mark.slow
def test_minilm_gets_a_bert_initialised_head_tied_to_its_word_embeddings():
    from safetensors import safe_open

    model = load_mlm_model("minilm", seed=0)
    head = model.cls.predictions
    assert model.config.tie_word_embeddings
    assert head.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    assert head.decoder.bias is head.bias and not head.bias.any()
    dense = head.transform.dense
    assert dense.weight.std().item() == pytest.approx(0.02, abs=5e-4) and abs(dense.weight.mean().item()) < 5e-4
    assert not dense.bias.any()
    assert (head.transform.LayerNorm.weight == 1).all() and not head.transform.LayerNorm.bias.any()
    assert model.bert.pooler is None
    with safe_open(str(packaged_minilm_dir() / "model.safetensors"), framework="pt") as f:
        name = "encoder.layer.0.attention.self.query.weight"
        stored = f.get_tensor(name if name in f.keys() else f"bert.{name}")
    assert torch.equal(model.bert.get_parameter(name), stored)  # the encoder is the pre-trained one


def test_the_seed_fixes_the_new_head(tiny_model_dir):
    def transform(seed):
        return load_mlm_model(str(tiny_model_dir), seed=seed).cls.predictions.transform.dense.weight

    assert torch.equal(transform(3), transform(3)) and not torch.equal(transform(3), transform(4))


def test_a_non_bert_model_is_a_one_line_error(tmp_path):
    from transformers import DistilBertConfig

    DistilBertConfig(n_layers=1, dim=32, hidden_dim=64, n_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as exc:
        load_mlm_model(str(tmp_path))
    one_line_error(exc, "model", "distilbert")


@pytest.fixture
def one_thread():
    """Two threads on two loaded cores wait on each other (a MiniLM step measured 5x slower than with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_mlm_loss_falls_on_real_text_with_minilm(tokenizer, corpus_file, tmp_path, one_thread):
    """30 AdamW steps at 1e-4 on the pre-masked copies of 600 CoLA sentences (110 blocks of 64): dev perplexity
    falls clearly. The loss is SparsePredictionMLM's (the same loss, ~2.5x cheaper a step here)."""
    torch.manual_seed(0)
    splits = mlm_splits(tokenizer, "minilm", str(corpus_file), None, max_seq_length=64, copies=2, cache_dir=tmp_path)
    model = load_mlm_model("minilm", seed=0)
    before = mlm_metrics(model, splits["dev"], batch_size=16)
    net = SparsePredictionMLM(model)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    net.train()
    step, epoch = 0, 0
    while step < 30:
        data = splits["train"].for_epoch(epoch)
        order = torch.randperm(len(data)).tolist()
        for start in range(0, len(order) - 7, 8):
            net(**collate_blocks([data[i] for i in order[start:start + 8]])).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == 30:
                break
        epoch += 1
    after = mlm_metrics(model, splits["dev"], batch_size=16)
    assert epoch >= 2  # both copies were trained on
    assert math.log(after["perplexity"]) < math.log(before["perplexity"]) - 2.0, (before, after)
    assert after["accuracy"] > before["accuracy"], (before, after)  # 0 -> ~0.11 of 44 masked dev positions


# ------------------------------------------------------------------------------------- mlm as a task


class Interrupted(Exception):
    pass


def test_imp_on_mlm_runs_through_the_trajectory_and_resumes(tiny_model_dir, glue_dir, tmp_path):
    """`task: mlm` is a task like the others: the full model (round 0) and IMP rounds on the pre-masked corpus,
    rewinding to the pre-trained weights, rows with accuracy and perplexity, resumed at the first unfinished
    round after an interruption."""
    from raytickets.config import DataConfig, PruneConfig, TicketConfig, TrainConfig, resolve
    from raytickets.tickets import Trajectory

    cfg = TicketConfig(
        task="mlm", model=str(tiny_model_dir),
        data=DataConfig(glue_dir=str(glue_dir), max_seq_length=32, max_train_examples=64, max_dev_examples=16,
                        mlm_copies=2, cache_dir=str(tmp_path / "cache")),
        train=TrainConfig(max_steps=2, batch_size=8, learning_rate=1e-3, mlm_warmup_steps=20),  # a short warm-up
        prune=PruneConfig(rate=0.2, rounds=3, baselines=["random"]),
    )
    assert resolve(cfg).train.warmup_ratio == 0.06 and resolve(cfg).train.grad_accumulation == 4  # the recipe

    def stop_after_round_1(state):
        if state.round == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        Trajectory(cfg, tmp_path / "work").run(on_round=stop_after_round_1)
    seen = []
    rows = Trajectory(cfg, tmp_path / "work").run(on_round=lambda s: seen.append((s.round, s.resumed)))
    assert seen == [(0, True), (1, True), (2, False), (3, False)]
    tickets = [r for r in rows if r.kind == "ticket"]
    assert [round(r.sparsity, 4) for r in tickets] == [0.2, 0.36, 0.488]
    assert all(r.metric_name == "accuracy" and r.metric == r.accuracy and r.perplexity > 1 for r in rows)
    assert {r.kind for r in rows} == {"full", "ticket", "random"} and all(r.training_steps == 2 for r in rows)
    from raytickets.masks import Mask

    mask = Mask.load(Trajectory(cfg, tmp_path / "work").round_dir(3) / "mask.safetensors")
    assert mask.names and not any("pooler" in n for n in mask.names)  # the MLM encoder has no pooler


def test_a_corpus_for_a_glue_task_is_one_line():
    from raytickets.config import TicketConfig, load

    with pytest.raises(ConfigError, match=r"^data.corpus: 'x.txt' is read by the mlm task only; task is 'sst2'"):
        load(TicketConfig, overrides=["prune.rounds=1", "data.corpus=x.txt"])
    with pytest.raises(ConfigError, match=r"^data.mlm_probability: 1.5 must be in \(0, 1\)"):
        load(TicketConfig, overrides=["task=mlm", "prune.rounds=1", "data.mlm_probability=1.5"])


# --------------------------------------------------------- the head: warmed up, carried over, oneshot_diff


def _mlm_cfg(tiny_model_dir, glue_dir, tmp_path, **train):
    from raytickets.config import DataConfig, PruneConfig, TicketConfig, TrainConfig

    return TicketConfig(
        task="mlm", model=str(tiny_model_dir),
        data=DataConfig(glue_dir=str(glue_dir), max_seq_length=32, max_train_examples=64, max_dev_examples=16,
                        mlm_copies=2, cache_dir=str(tmp_path / "cache")),
        train=TrainConfig(**{"max_steps": 2, "batch_size": 8, "learning_rate": 1e-3, "mlm_warmup_steps": 0, **train}),
        prune=PruneConfig(rate=0.2, rounds=2),
    )


def test_mlm_rounds_rewind_the_encoder_and_carry_the_head_over(tiny_model_dir, glue_dir, tmp_path, monkeypatch):
    """BERT-Tickets rewinds only `bert.*` (LT_pretrain.py:216-224): round r's ticket starts from the pre-trained
    encoder and the head round r-1 trained, and training round r again (its weights dropped) starts there too."""
    from raytickets import tickets
    from raytickets.mlm_head import head_keys
    from raytickets.tickets import Trajectory

    starts, real = [], tickets.finetune

    def spy(model, *args, **kwargs):
        starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(tickets, "finetune", spy)
    trained = {}
    traj = Trajectory(_mlm_cfg(tiny_model_dir, glue_dir, tmp_path), tmp_path / "work")
    traj.run(on_round=lambda s: trained.setdefault(s.round, s.weights))
    assert len(starts) == 3  # round 0, rounds 1 and 2 (no baselines)
    initial, round1, round2 = starts
    heads = head_keys(load_mlm_model(str(tiny_model_dir)))
    assert heads and all(k.startswith("cls.") for k in heads) and "cls.predictions.decoder.weight" not in heads
    for k in heads:  # round 1 keeps round 0's trained head, round 2 round 1's: neither is the initial head
        assert torch.equal(round1[k], trained[0][k]) and not torch.equal(round1[k], initial[k]), k
        assert torch.equal(round2[k], trained[1][k]) and not torch.equal(round2[k], trained[0][k]), k
    for k in initial:  # the encoder (the tied decoder with it) goes back to the rewind point every round
        if k not in heads:
            assert torch.equal(round1[k], initial[k]) and torch.equal(round2[k], initial[k]), k
    saved = load_file_st(traj.round_dir(1) / "head.safetensors")
    assert saved.keys() == set(heads) and all(torch.equal(saved[k], trained[0][k]) for k in heads)
    assert not (traj.round_dir(1) / "weights.safetensors").exists()  # dropped: weights_of(1) trains it again
    again = traj.weights_of(1)
    assert torch.equal(starts[-1]["cls.predictions.bias"], trained[0]["cls.predictions.bias"])
    assert all(torch.equal(again[k], trained[1][k]) for k in trained[1])


def load_file_st(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_oneshot_diff_is_0_when_training_moved_nothing_and_positive_when_it_did(tiny_model_dir, glue_dir, tmp_path):
    """A round-1 ticket pruned from weights training did not move is one-shot magnitude pruning of the rewind
    weights (reported as such in the run log); real training moves the mask away from it. GLUE rows keep
    oneshot_diff null."""
    from raytickets.tickets import Trajectory, round_lines

    def run(lr, name):
        cfg = _mlm_cfg(tiny_model_dir, glue_dir, tmp_path, learning_rate=lr, mlm_warmup_steps=4)
        cfg.prune.rounds = 1
        lines, traj = [], Trajectory(cfg, tmp_path / name)
        rows = traj.run(on_round=lambda s: lines.extend(round_lines(s)))
        return traj, rows, lines

    still, rows, lines = run(1e-30, "still")  # AdamW steps of ~1e-30: below fp32's resolution of the weights
    full = load_file_st(still.full_dir / "weights.safetensors")
    rewind, prunable = still._context[3].state, [f"bert.{name}" for name in still._context[1]]
    assert all(torch.equal(full[k], rewind[k]) for k in prunable)  # the premise (zero biases move by ~1e-30)
    ticket = next(r for r in rows if r.kind == "ticket")
    assert ticket.oneshot_diff == 0.0 and rows[0].oneshot_diff is None
    assert any("equals one-shot magnitude pruning" in line for line in lines), lines
    warmup = json.loads((still.dir / "warmup.json").read_text())
    assert warmup["steps"] == 4 and warmup["dev_accuracy"][0][0] == 0

    _, rows, lines = run(1e-2, "moved")
    ticket = next(r for r in rows if r.kind == "ticket")
    assert 0 < ticket.oneshot_diff <= 1
    assert any(f"oneshot_diff {ticket.oneshot_diff:.4f}" in line for line in lines), lines


def test_oneshot_diff_counts_the_tickets_pruned_weights_that_oneshot_keeps():
    from raytickets.masks import Mask
    from raytickets.tickets import oneshot_diff

    w = torch.tensor([[0.1, -0.2, 0.3, 0.4], [0.5, -0.6, 0.7, 0.8]])
    state = {"bert.a": w}
    oneshot = Mask({"a": w.abs() > 0.25})  # the 2 smallest pruned: 25%
    assert oneshot_diff(oneshot, state, 0.25, "global") == 0.0
    one_off = Mask({"a": torch.tensor([[True, False, False, True], [True, True, True, True]])})
    assert oneshot_diff(one_off, state, 0.25, "global") == 0.5  # prunes 0.2 (one-shot too) and 0.3 (kept by it)
    assert oneshot_diff(Mask({"a": w.abs() > 0.65}), state, 0.75, "global") == 0.0


def test_a_version_2_rounds_file_reads_with_oneshot_diff_null(tmp_path):
    import pyarrow.parquet as pq

    from raytickets.rows import RoundRow
    from raytickets.store import ResultsStore, rows_to_table

    row = RoundRow(trial="t", task="mlm", model="m", method="magnitude", seed=0, round=1, kind="ticket",
                   sparsity=0.3, metric_name="accuracy", metric=0.4, oneshot_diff=0.25)
    store = ResultsStore(tmp_path)
    store.write_rounds([row])
    assert store.rounds()["oneshot_diff"].tolist() == [0.25]
    v2 = rows_to_table("rounds", [row]).drop_columns(["oneshot_diff"])
    v2 = v2.replace_schema_metadata({**v2.schema.metadata, b"raytickets.schema_version": b"2"})
    (tmp_path / "old" / "rounds").mkdir(parents=True)
    pq.write_table(v2, tmp_path / "old" / "rounds" / "v2.parquet")
    old = ResultsStore(tmp_path / "old").rounds()
    assert len(old) == 1 and old["oneshot_diff"].isna().all() and old["metric"].iloc[0] == 0.4


def test_warmup_settings_enter_mlm_run_ids_only(tiny_model_dir, glue_dir, tmp_path):
    """mlm rounds changed meaning (head warm-up, carried head): an mlm id always holds the warm-up settings, so
    no mlm round stored before resumes as a new one; a GLUE run's id does not change."""
    from raytickets import runs
    from raytickets.config import resolve

    mlm_cfg = resolve(_mlm_cfg(tiny_model_dir, glue_dir, tmp_path, mlm_warmup_steps=1000))
    assert runs.settings(mlm_cfg)["train"]["mlm_warmup_steps"] == 1000
    glue = resolve(_mlm_cfg(tiny_model_dir, glue_dir, tmp_path, mlm_warmup_steps=1000))
    glue.task = "sst2"
    assert not any(k.startswith("mlm_warmup") for k in runs.settings(glue)["train"])
    glue.train.mlm_warmup_layers = 2  # set away from its default: it enters
    assert runs.settings(glue)["train"]["mlm_warmup_layers"] == 2


@pytest.mark.parametrize("field, value, message", [
    ("mlm_warmup_steps", -1, "train.mlm_warmup_steps: -1 must be an integer >= 0"),
    ("mlm_warmup_layers", -1, "train.mlm_warmup_layers: -1 must be an integer >= 0"),
    ("mlm_warmup_learning_rate", 0.0, "train.mlm_warmup_learning_rate: 0.0 must be positive"),
])
def test_bad_warmup_settings_are_one_line_errors(field, value, message):
    from raytickets.config import TicketConfig, load

    with pytest.raises(ConfigError) as exc:
        load(TicketConfig, overrides=["task=mlm", "prune.rounds=1", f"train.{field}={value}"])
    one_line_error(exc, message)


def test_warmup_layers_beyond_the_encoder_name_the_field(tiny_model_dir, tiny_dev):
    from raytickets.mlm_head import warm_up_head

    model = load_mlm_model(str(tiny_model_dir), seed=0)
    with pytest.raises(ConfigError) as exc:
        warm_up_head(model, PremaskedCorpus([tiny_dev]), tiny_dev, max_steps=1, layers=len(model.bert.encoder.layer) + 1,
                     learning_rate=1e-3, batch_size=4, eval_batch_size=8, seed=0)
    one_line_error(exc, "train.mlm_warmup_layers", "allowed")


def test_the_warmup_plateau_needs_flat_accuracy_and_flat_loss():
    """Accuracy stalled at the frequency prior while the loss still falls is no plateau; both flat is."""
    from raytickets.mlm_head import WARMUP_MIN_GAIN, WARMUP_MIN_NATS, Warmup

    def flat(acc, ppl):
        w = Warmup(accuracy=[(0, acc[0]), (100, acc[1])], perplexity=[(0, ppl[0]), (100, ppl[1])])
        return w.flat(WARMUP_MIN_GAIN, WARMUP_MIN_NATS)

    assert not flat((0.045, 0.046), (1937.0, 1677.0))  # accuracy stalls, loss falls 0.14 nats
    assert not flat((0.05, 0.09), (300.0, 299.0))  # loss flat, accuracy climbs
    assert flat((0.20, 0.202), (60.0, 59.5))


@pytest.mark.slow
def test_head_warmup_beats_a_random_head_on_minilm_and_glue_sentences(tokenizer, glue_dir, tmp_path, one_thread):
    """MiniLM is a bare encoder: its new MLM head scores 0 on dev. Warming up the head and the last layer on the
    GLUE-sentence corpus (the offline default) lifts dev accuracy and cuts perplexity by orders of magnitude,
    leaves the rest of the encoder as it was, and does not stop where accuracy stalls at the frequency prior
    while the loss still falls (60 steps: 0 -> ~4.5%, perplexity ~45,000 -> ~2,000)."""
    from raytickets.mlm_head import load_mlm_model_and_head, warm_up_head

    splits = mlm_splits(tokenizer, "minilm", None, str(glue_dir), max_seq_length=64, max_train_examples=256,
                        max_dev_examples=48, copies=2, cache_dir=tmp_path)
    model, pretrained_head = load_mlm_model_and_head("minilm", seed=0)
    assert not pretrained_head
    before = {k: v.clone() for k, v in model.state_dict().items()}
    w = warm_up_head(model, splits["train"], splits["dev"], max_steps=60, layers=1, learning_rate=1e-3,
                     batch_size=8, eval_batch_size=48, seed=0, every=30)
    after = mlm_metrics(model, splits["dev"], batch_size=48)
    assert w.accuracy[0][1] < 0.01 and after["accuracy"] == pytest.approx(w.accuracy[-1][1])
    assert after["accuracy"] > w.accuracy[0][1] + 0.03, w.line()
    assert math.log(w.perplexity[0][1]) - math.log(after["perplexity"]) > 2.0, w.line()
    assert w.steps == 60 and not w.plateaued, w.line()  # the loss was still falling
    last = f"bert.encoder.layer.{len(model.bert.encoder.layer) - 1}."
    for k, v in model.state_dict().items():
        moved = not torch.equal(v, before[k])
        assert moved == (k.startswith(("cls.", last)) and "decoder.weight" not in k), k


def test_mlm_chance_is_the_share_of_the_most_frequent_masked_token(tiny_lm, tiny_dev):
    """Issue 17 item 1: MLM's chance value is always predicting the dev blocks' most frequent masked token (the
    frequency prior a head learns first), measured on the dev blocks, not 0."""
    from datasets import Dataset

    from raytickets.mlm_head import mlm_chance
    from raytickets.tasks import get_task
    from raytickets.train import evaluate

    hand = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6]], "labels": [[IGNORE, 7, 9], [7, IGNORE, 7]]})
    assert mlm_chance(hand) == pytest.approx(3 / 4)  # 7 is three of the four masked targets
    labels = np.array(tiny_dev["labels"]).ravel()
    _, counts = np.unique(labels[labels != IGNORE], return_counts=True)
    _, chance = evaluate(tiny_lm, get_task("mlm"), {"dev": tiny_dev}, collate_blocks, 64, with_chance=True)
    assert chance["accuracy"] == pytest.approx(counts.max() / counts.sum()) and chance["accuracy"] > 0.02
