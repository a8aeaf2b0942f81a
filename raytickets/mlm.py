"""Masked-language modelling (Chen et al. 2020's `mlm` task), the data side: corpus, packed blocks, pre-masked
copies (the model, its loss and its metric: mlm_head.py).

It follows the academic-budget BERT recipe (Izsak et al. 2021): tokenise the corpus once, pack the token stream
into blocks of exactly `max_seq_length` tokens, and mask each block in advance in `copies` different ways
(BERT's `dupe_factor`), so epoch e trains on copy e % copies and every trial of a sweep reads the same masks from
one memory-mapped cache.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ConfigError, DataError
from .atomic import exclusive, write_dir_atomically
from .tasks import GLUE, TASKS, check_lengths, default_cache_dir, load_split, quiet_datasets

CORPUS_FIELD = "data.corpus"
PROBABILITY_FIELD = "data.mlm_probability"
COPIES_FIELD = "data.mlm_copies"
CORPUS_ALLOWED = ("a UTF-8 text file, a directory of .txt files, a datasets id (wikitext-103-raw-v1, "
                  "org/name[:config]) or null (the GLUE train sentences in data.glue_dir)")
# BERT-Tickets' MLM code derives from Hugging Face's run_language_modeling.py on WikiText-103 (raw), which the
# hub now publishes as Salesforce/wikitext.
HUB_CORPORA = {name: ("Salesforce/wikitext", name) for name in ("wikitext-103-raw-v1", "wikitext-2-raw-v1")}
# Bump when the cached layout changes, so old caches are not read as new ones.
CACHE_FORMAT = 1
DEV_EVERY = 20  # every 20th block is held out (5%): spread over the corpus, so dev covers every source
IGNORE = -100  # the label of positions that are not predicted (torch's cross_entropy ignore_index)
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # BERT's 80/10/10: of the chosen positions, [MASK] / random token / kept
TRAIN_STREAM, DEV_STREAM = 0, 1  # seed streams, so dev masks never repeat a training copy's draws
ROWS_PER_CHUNK = 4096  # masking works on this many blocks at a time (bounded memory on WikiText-103)


# -------------------------------------------------------------------------------------------------- corpus


def corpus_texts(corpus: str | None, glue_dir: str | Path | None) -> tuple[list[str], str]:
    """The corpus's documents and a one-line description of where they came from and how large they are."""
    if corpus is None:
        return _glue_texts(glue_dir)
    if not isinstance(corpus, str) or not corpus.strip():
        raise ConfigError(f"{CORPUS_FIELD}: {corpus!r}; allowed: {CORPUS_ALLOWED}")
    path = Path(corpus).expanduser()
    if path.is_dir():
        return _dir_texts(path)
    if path.exists():
        docs, layout = _file_texts(path)
        return docs, f"{corpus}: {_size(docs)}, {layout}"
    if _is_hub_id(corpus):
        return _hub_texts(corpus)
    raise ConfigError(f"{CORPUS_FIELD}: {corpus!r} does not exist; allowed: {CORPUS_ALLOWED}")


SNIFF_BYTES = 1 << 16  # check_corpus reads this much of each file: a config check must not read WikiText-103


def check_corpus(corpus: str | None, glue_dir: str | Path | None) -> None:
    """What `corpus_texts` would refuse, found without reading the corpus: a missing path, a directory without
    .txt files, a file that starts binary or not UTF-8, no GLUE train split for a null corpus. Run when a config
    is validated (`--dry-run` included), so a bad corpus fails before Ray starts or a cache is written. A datasets
    id is not looked up here (that would load it); a file that turns bad past its first 64 KiB fails when read."""
    if corpus is None:
        _glue_train_files(glue_dir)
        return
    if not isinstance(corpus, str) or not corpus.strip():
        raise ConfigError(f"{CORPUS_FIELD}: {corpus!r}; allowed: {CORPUS_ALLOWED}")
    path = Path(corpus).expanduser()
    if path.is_dir():
        files = _txt_files(path)
    elif path.exists():
        files = [path]
    elif _is_hub_id(corpus):
        return
    else:
        raise ConfigError(f"{CORPUS_FIELD}: {corpus!r} does not exist; allowed: {CORPUS_ALLOWED}")
    for f in files:
        if not _decode(f, SNIFF_BYTES).strip() and f.stat().st_size <= SNIFF_BYTES:
            raise ConfigError(f"{CORPUS_FIELD}: {f} holds no text; allowed: {CORPUS_ALLOWED}")


def _size(docs: Sequence[str]) -> str:
    return f"{len(docs):,} documents, {sum(len(d.split()) for d in docs):,} words"


def _is_hub_id(corpus: str) -> bool:
    if corpus in HUB_CORPORA:
        return True
    # "org/name" or "org/name:config"; anything path-like ("./x", "x.txt") is a missing file instead.
    return (not corpus.startswith((".", "/", "~")) and not corpus.endswith(".txt")
            and re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", corpus) is not None)


def _decode(path: Path, limit: int | None = None) -> str:
    """The file's text (its first `limit` bytes), or a one-line error when it is not UTF-8 text (a NUL byte means
    binary)."""
    if not path.is_file():
        raise ConfigError(f"{CORPUS_FIELD}: {path} is not a regular file; allowed: {CORPUS_ALLOWED}")
    try:
        with open(path, "rb") as f:
            raw = f.read() if limit is None else f.read(limit)
            whole = limit is None or not f.read(1)
    except OSError as exc:
        raise ConfigError(f"{CORPUS_FIELD}: cannot read {path} ({exc.strerror or exc}); allowed: {CORPUS_ALLOWED}"
                          ) from None
    nul = raw.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"{CORPUS_FIELD}: {path} is binary, not UTF-8 text (NUL byte at offset {nul}); "
                          f"allowed: {CORPUS_ALLOWED}")
    try:  # a prefix may end inside a character: only a whole file must end on a complete one
        return codecs.getincrementaldecoder("utf-8-sig")().decode(raw, final=whole)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{CORPUS_FIELD}: {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                          f"{exc.start}); allowed: {CORPUS_ALLOWED}") from None


def _file_texts(path: Path) -> tuple[list[str], str]:
    """Documents of one text file: paragraphs if blank lines separate its text, else one document per line."""
    lines = [line.strip() for line in _decode(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    if "" in lines:
        blocks = itertools.groupby(lines, key=bool)
        docs, layout = [" ".join(block) for nonblank, block in blocks if nonblank], "paragraphs (blank-line separated)"
    else:
        docs, layout = lines, "one document per line"
    if not docs:
        raise ConfigError(f"{CORPUS_FIELD}: {path} holds no text; allowed: {CORPUS_ALLOWED}")
    return docs, layout


def _txt_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.glob("*.txt") if p.is_file())
    if not files:
        found = sorted(p.name for p in root.iterdir())[:3]
        raise ConfigError(f"{CORPUS_FIELD}: directory {root} has no .txt files "
                          f"(found: {', '.join(found) or 'nothing'}); allowed: {CORPUS_ALLOWED}")
    return files


def _dir_texts(root: Path) -> tuple[list[str], str]:
    files = _txt_files(root)
    docs = [doc for f in files for doc in _file_texts(f)[0]]
    return docs, f"{root}: {len(files)} .txt files, {_size(docs)}"


def _hub_texts(corpus: str) -> tuple[list[str], str]:
    """The train split of a datasets id; its `text` column, one document per non-empty line (WikiText's layout)."""
    import datasets

    repo, config = HUB_CORPORA.get(corpus) or (corpus.split(":") + [None])[:2]
    try:
        raw = datasets.load_dataset(repo, config, split="train")
    except (ConnectionError, OSError, ValueError) as exc:  # offline and not cached, unknown id, unknown config
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{CORPUS_FIELD}: {corpus!r} is no file or directory and could not be loaded as a datasets "
                          f"id ({reason}); offline, use a text file, a directory of .txt files or null (GLUE sentences)"
                          ) from None
    if "text" not in raw.column_names:
        raise ConfigError(f"{CORPUS_FIELD}: {corpus!r} has no 'text' column (found {raw.column_names})")
    docs = [t.strip() for t in raw["text"] if t and t.strip()]
    return docs, f"{repo}{'/' + config if config else ''} (train split): {_size(docs)}"


def _glue_train_files(glue_dir: str | Path | None) -> dict[str, Path]:
    """The GLUE train TSVs present in `glue_dir`, by task name in the task table's order."""
    if glue_dir is None:
        raise ConfigError(f"{CORPUS_FIELD}: null and data.glue_dir is null; set {CORPUS_FIELD} to {CORPUS_ALLOWED}")
    root = Path(glue_dir).expanduser()
    found = {name: root / TASKS[name].glue_name / "train.tsv" for name in GLUE}
    found = {name: path for name, path in found.items() if path.is_file()}
    if not found:
        raise ConfigError(f"data.glue_dir: no GLUE train split in '{glue_dir}' (expected <glue_dir>/<TASK>/train.tsv "
                          f"for one of {', '.join(TASKS[name].glue_name for name in GLUE)})")
    return found


def _glue_texts(glue_dir: str | Path | None) -> tuple[list[str], str]:
    """The offline fallback: every sentence of every GLUE train split found (a pair's two texts side by side)."""
    files = _glue_train_files(glue_dir)
    docs: list[str] = []
    for name in files:
        data = load_split(TASKS[name], "train", glue_dir)
        texts = [data["text_a"]] if data["text_b"][0] is None else [data["text_a"], data["text_b"]]
        docs += [t for row in zip(*texts) for t in row]
    # RTE and MRPC repeat sentences across pairs; a copy in both train and dev blocks would flatter dev.
    docs = [d for d in dict.fromkeys(d.strip() for d in docs) if d]
    return docs, f"GLUE train sentences in {glue_dir} ({', '.join(files)}): {_size(docs)}"


def corpus_fingerprint(corpus: str | None, glue_dir: str | Path | None) -> str:
    """What the raw corpus is: sha256 of its files (names and bytes), or the id of a published dataset."""
    if corpus is not None and not Path(corpus).expanduser().exists() and _is_hub_id(corpus):
        return f"hub:{corpus}"  # a fixed published release; its name is its identity
    if corpus is None:
        files = {f"glue:{name}": path for name, path in _glue_train_files(glue_dir).items()}
    else:
        path = Path(corpus).expanduser()
        files = {p.name: p for p in sorted(path.glob("*.txt"))} if path.is_dir() else {path.name: path}
    digest = hashlib.sha256()
    for name, path in files.items():
        digest.update(f"{name}\0".encode())
        if path.is_file():  # an unreadable one is reported by corpus_texts, which runs next
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------- packing


def pack(texts: Sequence[str], tokenizer, length: int) -> list[list[int]]:
    """Blocks of exactly `length` tokens, [CLS] + length-2 tokens of the stream + [SEP]; the remainder is dropped."""
    return pack_array(texts, tokenizer, length).tolist()


def pack_array(texts: Sequence[str], tokenizer, length: int) -> np.ndarray:
    """`pack` as an int32 array [blocks, length] (a list of lists of WikiText-103 would need gigabytes)."""
    if not isinstance(length, int) or isinstance(length, bool) or length < 3:
        raise ConfigError(f"max_seq_length: {length!r}; allowed: an integer of at least 3 ([CLS], a token, [SEP])")
    stream = token_stream(texts, tokenizer)
    body = length - 2
    n = len(stream) // body
    blocks = np.empty((n, length), dtype=np.int32)
    blocks[:, 0], blocks[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    blocks[:, 1:-1] = stream[: n * body].reshape(n, body)
    return blocks


def token_stream(texts: Sequence[str], tokenizer, chunk: int = 10_000) -> np.ndarray:
    """Every document's word pieces, each followed by [SEP] (where one document ends, as in BERT's input)."""
    for name in ("cls_token_id", "sep_token_id", "mask_token_id"):
        if getattr(tokenizer, name, None) is None:
            raise ConfigError(f"model: its tokenizer has no {name.removesuffix('_id')}; MLM needs [CLS], [SEP], [MASK]")
    sep = tokenizer.sep_token_id
    parts = []
    for start in range(0, len(texts), chunk):
        # verbose=False: documents longer than model_max_length are fine here, packing cuts them.
        ids = tokenizer(list(texts[start:start + chunk]), add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)["input_ids"]
        parts.append(np.fromiter(itertools.chain.from_iterable(d + [sep] for d in ids), dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


# ------------------------------------------------------------------------------------------------- masking


def check_masking(copies, probability) -> None:
    if not isinstance(probability, (int, float)) or isinstance(probability, bool) or not 0 < probability < 1:
        raise ConfigError(f"{PROBABILITY_FIELD}: {probability!r}; allowed: a number strictly between 0 and 1 "
                          f"(BERT: 0.15)")
    if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
        raise ConfigError(f"{COPIES_FIELD}: {copies!r}; allowed: an integer of at least 1 (BERT: 10)")


def premask(blocks, tokenizer, copies: int = 10, probability: float = 0.15, seed: int = 0,
            stream: int = TRAIN_STREAM) -> list:
    """`copies` masked versions of `blocks` (a `datasets.Dataset` each), reproducible from `seed`.

    In each block round(probability · n) of its n non-special positions (at least one) are chosen, as BERT's
    create_pretraining_data.py does; of those 80% become [MASK], 10% a random non-special token, 10% stay.
    `labels` holds the original id at the chosen positions and -100 elsewhere.
    """
    check_masking(copies, probability)
    return [masked_copy(blocks, tokenizer, c, probability, seed, stream) for c in range(copies)]


def masked_copy(blocks, tokenizer, copy: int, probability: float, seed: int, stream: int = TRAIN_STREAM):
    """Copy number `copy` of `premask` alone (the cache writes one copy at a time: bounded memory)."""
    check_masking(1, probability)
    blocks = np.asarray(blocks, dtype=np.int32)
    if blocks.ndim != 2:
        raise DataError(f"blocks: shape {blocks.shape}; expected [blocks, length] of equal-length blocks")
    specials = np.array(sorted(tokenizer.all_special_ids), dtype=np.int32)
    pool = np.setdiff1d(np.arange(len(tokenizer), dtype=np.int32), specials)  # what a random replacement draws
    rng = np.random.default_rng([stream, seed % (1 << 64), copy])
    chunks = [_mask_chunk(blocks[i:i + ROWS_PER_CHUNK], rng, probability, specials, tokenizer.mask_token_id, pool)
              for i in range(0, len(blocks), ROWS_PER_CHUNK)]
    if not chunks:
        return _dataset(blocks, np.full_like(blocks, IGNORE))
    return _dataset(np.concatenate([x for x, _ in chunks]), np.concatenate([y for _, y in chunks]))


def _mask_chunk(blocks: np.ndarray, rng, probability: float, specials: np.ndarray, mask_id: int, pool: np.ndarray):
    special = np.isin(blocks, specials)
    candidates = (~special).sum(axis=1)
    k = np.minimum(candidates, np.maximum(1, np.rint(probability * candidates))).astype(np.int64)
    keys = rng.random(blocks.shape)
    keys[special] = 2.0  # never among the k smallest
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    chosen = rank < k[:, None]
    action = rng.random(blocks.shape)
    inputs = blocks.copy()
    inputs[chosen & (action < MASK_SHARE)] = mask_id
    replace = chosen & (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)
    inputs[replace] = pool[rng.integers(len(pool), size=int(replace.sum()))]
    return inputs, np.where(chosen, blocks, IGNORE).astype(np.int32)


def _dataset(input_ids: np.ndarray, labels: np.ndarray):
    """A Dataset of fixed-length rows built from arrays (Arrow fixed-size lists: no per-row Python objects)."""
    import pyarrow as pa
    from datasets import Dataset

    def column(a: np.ndarray, dtype) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(a.astype(dtype).ravel()), a.shape[1])

    table = pa.table({
        "input_ids": column(input_ids, np.int32),
        "attention_mask": column(np.ones_like(input_ids), np.int8),  # packed blocks have no padding
        "token_type_ids": column(np.zeros_like(input_ids), np.int8),  # one segment: no next-sentence pairs
        "labels": column(labels, np.int32),
    })
    return Dataset(table)


def collate_blocks(rows: Sequence[dict]) -> dict:
    """Stacks equal-length rows into int64 tensors (no padding: every block has the same length)."""
    import torch  # here, not at the top: config validation imports this module (check_corpus) without torch

    return {key: torch.tensor(np.array([r[key] for r in rows]), dtype=torch.long) for key in rows[0]}


# -------------------------------------------------------------------------------------------------- splits


class PremaskedCorpus:
    """The MLM training split: the same blocks masked `num_copies` ways; epoch e reads copy e % num_copies."""

    def __init__(self, copies: Sequence, description: str = ""):
        if not copies or len({len(c) for c in copies}) != 1:
            raise DataError(f"copies: {len(copies)} datasets of lengths {[len(c) for c in copies]}; "
                            f"expected at least one, all of the same length")
        self.copies = list(copies)
        self.description = description

    def __len__(self) -> int:
        return len(self.copies[0])

    @property
    def num_copies(self) -> int:
        return len(self.copies)

    def for_epoch(self, epoch: int):
        return self.copies[epoch % len(self.copies)]


def held_out(num_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, dev) block indices: every DEV_EVERY-th block is dev; with fewer blocks, the last one."""
    if num_blocks < 2:
        raise ConfigError(f"{CORPUS_FIELD}: the corpus fills {num_blocks} block(s); need at least 2 (train and dev): "
                          f"a larger corpus or a smaller max_seq_length")
    index = np.arange(num_blocks)
    dev = index % DEV_EVERY == DEV_EVERY - 1 if num_blocks >= DEV_EVERY else index == num_blocks - 1
    return index[~dev], index[dev]


def _subsample(rows: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """`limit` of `rows` chosen uniformly with `seed`, kept in order: tasks.subsample's rule, on indices."""
    if limit is None or limit >= len(rows):
        return rows
    return rows[np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))]


def mlm_splits(tokenizer, tokenizer_id: str, corpus: str | None, glue_dir: str | Path | None,
               max_seq_length: int = 128, max_train_examples: int | None = None,
               max_dev_examples: int | None = None, seed: int = 0, copies: int = 10, probability: float = 0.15,
               cache_dir: str | Path | None = None) -> dict:
    """{"train": PremaskedCorpus, "dev": Dataset}: packed, held out (every 20th block), subsampled, pre-masked.

    Built once per cache key (everything the blocks and masks depend on) and published atomically; every call
    reads the memory-mapped Arrow files, so the trials of a sweep share one set of masks. Concurrent callers with
    the same key wait for the first instead of masking the corpus again. The dev split is one copy masked from
    its own seed stream.
    """
    check_lengths(tokenizer, max_seq_length, max_train_examples, max_dev_examples, seed)
    check_masking(copies, probability)
    check_corpus(corpus, glue_dir)  # before the lock: a bad corpus leaves no lock file and no cache dir
    key = {
        "format": CACHE_FORMAT, "task": "mlm", "tokenizer": tokenizer_id, "max_seq_length": max_seq_length,
        "max_train_examples": max_train_examples, "max_dev_examples": max_dev_examples, "seed": seed,
        "copies": copies, "probability": probability, "source": corpus_fingerprint(corpus, glue_dir),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / f"mlm-{digest}"
    with _building(root, f".mlm-{digest}.lock"):
        if not final.is_dir():
            train, dev, description = _blocks(tokenizer, corpus, glue_dir, max_seq_length, max_train_examples,
                                              max_dev_examples, seed)

            def write(d: Path) -> None:
                with quiet_datasets():
                    for c in range(copies):
                        masked_copy(train, tokenizer, c, probability, seed).save_to_disk(str(d / f"train-{c}"))
                    masked_copy(dev, tokenizer, 0, probability, seed, DEV_STREAM).save_to_disk(str(d / "dev"))
                (d / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True))
                (d / "description.txt").write_text(f"{description}; {copies} masked copies of train\n")

            write_dir_atomically(final, write)
    return _load(final, copies)


@contextlib.contextmanager
def _building(root: Path, lock_name: str):
    """The cache's build lock (`atomic.exclusive`). When the build fails (a corpus too small for two blocks, a
    byte that is not UTF-8 past the part `check_corpus` read), the lock file goes, and so do the cache folders
    this call made, if empty: bad input leaves nothing behind. A caller already waiting on the same lock then
    builds, or fails, itself; two builders publish one copy (`atomic.publish`)."""
    made = [d for d in (root, *root.parents) if not d.exists()]
    lock = root / lock_name
    with exclusive(lock):
        try:
            yield
        except BaseException:
            lock.unlink(missing_ok=True)
            for d in made:  # deepest first
                try:
                    d.rmdir()
                except OSError:  # not empty: another build's files
                    break
            raise


def _blocks(tokenizer, corpus, glue_dir, length, max_train, max_dev, seed):
    """(train blocks, dev blocks, what they are) before masking."""
    docs, source = corpus_texts(corpus, glue_dir)
    blocks = pack_array(docs, tokenizer, length)
    train, dev = held_out(len(blocks))
    rule = f"every {DEV_EVERY}th block" if len(blocks) >= DEV_EVERY else "the last block"
    train, dev = _subsample(train, max_train, seed), _subsample(dev, max_dev, seed)
    description = (f"{source}; {blocks.size - 2 * len(blocks):,} tokens packed into {len(blocks):,} blocks of "
                   f"{length} tokens: {len(train):,} train, {len(dev):,} dev ({rule})")
    return blocks[train], blocks[dev], description


def _load(final: Path, copies: int) -> dict:
    """The published splits, memory-mapped (load_from_disk reads the Arrow files in place)."""
    from datasets import load_from_disk

    train = [load_from_disk(str(final / f"train-{c}")) for c in range(copies)]
    description = (final / "description.txt").read_text().strip()
    return {"train": PremaskedCorpus(train, description), "dev": load_from_disk(str(final / "dev"))}
