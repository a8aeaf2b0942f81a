"""Config: one-line errors naming field, value and what is allowed; overrides; every shipped YAML loads."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from raytickets.config import (
    GLUE_TASKS,
    ParamSpec,
    PruneConfig,
    SweepConfig,
    TicketConfig,
    apply_overrides,
    build,
    load,
    read_yaml,
    resolve,
    to_dict,
)
from raytickets.pruning import METHODS
from raytickets.errors import ConfigError, RayticketsError
from raytickets.sweep.tuner import load_config
from raytickets.mtl.experiment import load_mtl_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# A ticket config that validates on its own: IMP needs a stopping point.
TICKET_OK = ["prune.rounds=2"]


def ticket(*overrides: str) -> TicketConfig:
    return load(TicketConfig, overrides=[*TICKET_OK, *overrides])


def sweep(*overrides: str) -> SweepConfig:
    """A sweep config as the sweep loads it: the config's checks, then its mode's."""
    return load_config(None, ["ticket.prune.rounds=2", *overrides])


def error_of(fn, *args) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message, f"error spans several lines: {message!r}"
    assert isinstance(info.value, RayticketsError)
    return message


# ------------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    "override, expected",
    [
        # (field, bad value, what is allowed) all in the one line
        ("task=nope", ["task:", "'nope'", "allowed:", ", ".join(GLUE_TASKS)]),
        ("task=SST-2", ["task:", "'SST-2'", "sst2"]),
        ("model=bertbase", ["model:", "'bertbase'", "minilm", "bert-base", "bert-large", "hub id"]),
        ("model=/no/such/model", ["model:", "'/no/such/model'", "does not exist"]),
        ("prune.target_sparsity=1.0", ["prune.target_sparsity:", "1.0", "(0, 1)"]),
        ("prune.target_sparsity=1.5", ["prune.target_sparsity:", "1.5", "(0, 1)"]),
        ("prune.target_sparsity=-0.1", ["prune.target_sparsity:", "-0.1", "(0, 1)"]),
        ("prune.rate=0", ["prune.rate:", "0", "(0, 1)"]),
        (("prune.method=structured", "prune.head_fraction=1"), ["prune.head_fraction:", "1", "[0, 1)"]),
        (("prune.method=structured", "prune.ffn_fraction=-0.2"), ["prune.ffn_fraction:", "-0.2", "[0, 1)"]),
        # a setting of another method is an error, not silently ignored
        ("prune.head_fraction=0.3", ["prune.head_fraction:", "0.3", "a setting of structured", "not of method "
                                     "'magnitude'", "its settings: gradual_begin, gradual_end, initial_sparsity, losing, pattern, rate"]),
        (("prune.method=structured", "prune.rate=0.2"), ["prune.rate:", "a setting of", "magnitude", "not of method "
                                                    "'structured'"]),
        ("train.learning_rate=0", ["train.learning_rate:", "0", "positive"]),
        ("train.learning_rate=-2e-5", ["train.learning_rate:", "-2e-05", "positive"]),
        ("train.epochs=0", ["train.epochs:", "0", "positive"]),
        ("train.epochs=-1", ["train.epochs:", "-1", "positive"]),
        ("train.batch_size=0", ["train.batch_size:", "0", "positive"]),
        ("train.batch_size=-32", ["train.batch_size:", "-32", "positive"]),
        ("train.max_steps=0", ["train.max_steps:", "0", "positive"]),
        ("train.warmup_ratio=1", ["train.warmup_ratio:", "1", "[0, 1)"]),
        ("data.glue_dir=/no/such/glue", ["data.glue_dir:", "'/no/such/glue'", "does not exist"]),
        ("data.max_seq_length=4", ["data.max_seq_length:", "4", "[8, 512]"]),
        ("data.max_train_examples=0", ["data.max_train_examples:", "0", "positive"]),
        ("prune.rewind_step=-1", ["prune.rewind_step:", "-1", ">= 0"]),
        ("prune.baselines=[random, reinitt]", ["prune.baselines:", "'reinitt'", "random, reinit, shuffled"]),
        # wrong types
        ("train.batch_size=abc", ["train.batch_size:", "'abc'", "not a number", "int"]),
        ("train.batch_size=3.5", ["train.batch_size:", "3.5", "not an integer"]),
        ("train.learning_rate=fast", ["train.learning_rate:", "'fast'", "not a number", "float"]),
        ("train.learning_rate=true", ["train.learning_rate:", "True", "not a number"]),
        ("train.learning_rate=nan", ["train.learning_rate:", "nan", "finite"]),
        ("train.epochs=null", ["train.epochs:", "null", "float"]),
        ("prune.losing=maybe", ["prune.losing:", "'maybe'", "boolean"]),
        ("prune.exclude={a: 1}", ["prune.exclude:", "expected a list"]),
        ("data=abc", ["data:", "expected a mapping", "'abc'"]),
        ("task=[sst2, rte]", ["task:", "['sst2', 'rte']", "not a string"]),
        # bad literals
        ("prune.schedule=linear", ["prune.schedule:", "'linear'", "allowed: remaining, original"]),
        ("prune.scope=layer", ["prune.scope:", "'layer'", "allowed: global, per_tensor"]),
        ("prune.method=lottery", ["prune.method:", "'lottery'", "allowed: " + ", ".join(METHODS)]),
        ("prune.ffn_granularity=head", ["prune.ffn_granularity:", "'head'", "neuron, layer"]),
    ],
)
def test_bad_ticket_field_is_one_line_naming_field_value_and_allowed(override, expected):
    message = error_of(ticket, *([override] if isinstance(override, str) else override))
    assert message.startswith(expected[0]), message
    for part in expected:
        assert part in message, f"{part!r} missing from {message!r}"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["search.space.prune.target_sparsity.values=[0.5, 1.2]"],
         ["search.space.prune.target_sparsity:", "1.2", "(0, 1)"]),
        (["search.space.prune.target_sparsity.low=0.5", "search.space.prune.target_sparsity.high=1.0"],
         ["search.space.prune.target_sparsity:", "1.0", "(0, 1)"]),
        (["search.space.prune.target_sparsity.low=-0.1", "search.space.prune.target_sparsity.high=0.5"],
         ["search.space.prune.target_sparsity:", "-0.1", "(0, 1)"]),
        (["search.space.prune.rate.values=[0.2, abc]"], ["search.space.prune.rate:", "'abc'", "(0, 1)"]),
        (["search.space.prune.head_fraction.low=0.1", "search.space.prune.head_fraction.high=1.0"],
         ["search.space.prune.head_fraction:", "1.0", "[0, 1)"]),
        (["search.space.task.values=[sst2, nope]"], ["search.space.task:", "'nope'", "allowed: cola"]),
        (["search.space.train.learning_rte.values=[1]"],
         ["search.space:", "'train.learning_rte'", "allowed: task, model, data.*, train.*, prune.*"]),
        (["search.space.prune.rate.low=0.5", "search.space.prune.rate.high=0.2"],
         ["search.space.prune.rate:", "low 0.5 > high 0.2"]),
        (["search.space.prune.rate.values=[]"], ["search.space.prune.rate.values:", "empty"]),
        (["search.mode=random"], ["search.mode:", "'random'", "allowed: grid, mtl, optuna"]),
        (["search.transfer.source=/tmp", "search.transfer.targets=[sst2, nope]"],
         ["search.transfer.targets:", "'nope'", "allowed: cola"]),
        (["search.transfer.source=/tmp", "search.transfer.targets=[sst2]", "search.transfer.levels=[1.5]"],
         ["search.transfer.levels:", "1.5", "'matching' or a sparsity in (0, 1)"]),
        (["resources.num_workers=0"], ["resources.num_workers:", "0", ">= 1"]),
        (["name=my sweep"], ["name:", "'my sweep'", "without slashes, whitespace or control characters"]),
        (["search.trajectories_per_trial=3"], ["search.trajectories_per_trial:", "3", "mode: grid and scheduler: none"]),
        (["search.trajectories_per_trial=0"], ["search.trajectories_per_trial:", "0", ">= 1"]),
        (["search.mode=mtl"], ["search.mtl:", "mtl mode needs the multi-task experiment"]),
        (["search.mtl.tasks=[sst2]"], ["search.mtl:", "read only in mtl mode; search.mode is optuna"]),
    ],
)
def test_bad_sweep_field_is_one_line_naming_field_value_and_allowed(overrides, expected):
    message = error_of(sweep, *overrides)
    assert message.startswith(expected[0]), message
    for part in expected:
        assert part in message, f"{part!r} missing from {message!r}"


# ------------------------------------------------------------------------------ typos are not ignored


@pytest.mark.parametrize(
    "cls, data, field, allowed",
    [
        (TicketConfig, {"tsak": "sst2"}, "tsak", "task, model, metrics"),
        (TicketConfig, {"train": {"learning_rte": 1e-5}}, "train.learning_rte", "learning_rate, epochs"),
        (TicketConfig, {"data": {"glue-dir": "x"}}, "data.glue-dir", "glue_dir"),
        (TicketConfig, {"prune": {"targt_sparsity": 0.5}}, "prune.targt_sparsity", "target_sparsity"),
        (SweepConfig, {"serach": {}}, "serach", "search"),
        (SweepConfig, {"ticket": {"train": {"lr": 1}}}, "ticket.train.lr", "learning_rate"),
        (SweepConfig, {"resources": {"num_worker": 2}}, "resources.num_worker", "num_workers"),
        (SweepConfig, {"search": {"space": {"prune.rate": {"hgh": 0.5}}}}, "search.space.prune.rate.hgh",
         "values, low, high"),
    ],
)
def test_unknown_keys_are_rejected_at_every_depth(cls, data, field, allowed):
    message = error_of(build, cls, data)
    assert re.match(rf"{re.escape(field)}: unknown key( \(did you mean [\w.]+\?\))?; allowed: ", message), message
    assert allowed in message


def test_unknown_key_in_a_yaml_file_is_rejected_with_its_path(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("ticket:\n  train:\n    learning_rate: 3.0e-5\n    epoch: 2\n  prune:\n    rounds: 1\n")
    message = error_of(load_config, str(path), [])
    assert message.startswith("ticket.train.epoch: unknown key (did you mean epochs?); allowed: learning_rate, epochs"), message


def test_unknown_key_in_an_override_is_rejected():
    assert error_of(ticket, "train.lerning_rate=1e-4").startswith("train.lerning_rate: unknown key")
    assert error_of(ticket, "prun.rate=0.2").startswith("prun: unknown key")


def test_yaml_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    assert str(missing) in error_of(read_yaml, missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("ticket: [unclosed\n")
    message = error_of(read_yaml, broken)
    assert str(broken) in message and "not valid YAML" in message
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    assert "mapping at the top level" in error_of(read_yaml, scalar)


def test_malformed_override_is_rejected():
    assert "expected key.sub=value" in error_of(apply_overrides, {}, ["train.learning_rate"])
    assert "expected key.sub=value" in error_of(apply_overrides, {}, ["=3"])
    assert "train is not a section" in error_of(apply_overrides, {"train": 3}, ["train.epochs=1"])


# ------------------------------------------------------------------------------------------ overrides


def test_overrides_set_nested_fields_with_yaml_typed_values():
    cfg = ticket(
        "task=rte",
        "train.learning_rate=3e-5",  # YAML 1.1 reads this as a string; the float field converts it
        "train.epochs=2",
        "train.max_steps=null",
        "data.max_train_examples=500",
        "prune.rate=0.25",
        "prune.losing=true",
        "prune.baselines=random,reinit",
        "prune.exclude=[pooler.*]",
    )
    assert cfg.task == "rte"
    assert cfg.train.learning_rate == pytest.approx(3e-5) and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)
    assert cfg.train.max_steps is None
    assert cfg.data.max_train_examples == 500 and isinstance(cfg.data.max_train_examples, int)
    assert cfg.prune.rate == 0.25 and cfg.prune.losing is True
    assert cfg.prune.baselines == ["random", "reinit"]
    assert cfg.prune.exclude == ["pooler.*"]
    # untouched fields keep their defaults
    assert cfg.train.batch_size == TicketConfig().train.batch_size


def test_overrides_win_over_the_yaml_and_do_not_mutate_it():
    data = {"task": "sst2", "train": {"epochs": 3, "batch_size": 16}}
    out = apply_overrides(data, ["train.epochs=1", "train.seed=7"])
    assert out == {"task": "sst2", "train": {"epochs": 1, "batch_size": 16, "seed": 7}}
    assert data == {"task": "sst2", "train": {"epochs": 3, "batch_size": 16}}


def test_dotted_search_space_key_overrides_an_existing_entry():
    data = read_yaml(REPO / "configs" / "smoke.yaml")
    assert "prune.rate" in data["search"]["space"]
    out = apply_overrides(data, ["search.space.prune.rate.low=0.3"])
    assert out["search"]["space"]["prune.rate"] == {"low": 0.3, "high": data["search"]["space"]["prune.rate"]["high"]}
    cfg = build(SweepConfig, out)
    assert cfg.search.space["prune.rate"].low == 0.3


def test_dotted_search_space_key_can_add_a_new_dimension():
    cfg = sweep(
        "search.space.prune.rate.low=0.3",
        "search.space.prune.rate.high=0.5",
        "search.space.train.learning_rate={values: [1.0e-5, 2.0e-5]}",
        "search.space.task.values=[sst2, rte]",
    )
    assert cfg.search.space["prune.rate"] == ParamSpec(low=0.3, high=0.5)
    assert cfg.search.space["train.learning_rate"].values == [1e-5, 2e-5]
    assert cfg.search.space["task"].values == ["sst2", "rte"]
    assert set(cfg.search.space) == {"prune.rate", "train.learning_rate", "task"}


def test_valid_configs_round_trip_through_to_dict():
    cfg = ticket("task=mrpc", "prune.method=structured", "prune.head_fraction=0.3")
    again = build(TicketConfig, to_dict(cfg))
    again.validate()
    assert again == cfg


# ------------------------------------------------------------------------------ model-aware defaults


@pytest.mark.parametrize("model, expected", [("minilm", 1e-4), ("bert-base", 2e-5), ("bert-large", 2e-5)])
def test_a_null_learning_rate_resolves_for_the_model(model, expected):
    assert TicketConfig().train.learning_rate is None
    assert ticket(f"model={model}").train.learning_rate is None  # validation leaves the config as it is
    assert resolve(ticket(f"model={model}")).train.learning_rate == expected
    assert resolve(ticket(f"model={model}", "train.learning_rate=3.0e-5")).train.learning_rate == 3e-5


def test_each_sweep_trial_resolves_the_learning_rate_for_its_own_model():
    from raytickets.sweep.trial import trial_ticket

    cfg = sweep("ticket.model=minilm", "search.space.model.values=[minilm, bert-base]")
    assert cfg.ticket.train.learning_rate is None  # the template stays unresolved
    assert resolve(trial_ticket(cfg, {"model": "bert-base"})).train.learning_rate == 2e-5
    assert resolve(trial_ticket(cfg, {"model": "minilm"})).train.learning_rate == 1e-4
    fixed = sweep("ticket.train.learning_rate=3.0e-5", "search.space.model.values=[minilm, bert-base]")
    assert resolve(trial_ticket(fixed, {"model": "bert-base"})).train.learning_rate == 3e-5


# --------------------------------------------------------------------------------------- IMP settings


def test_imp_needs_a_stopping_point_but_finetune_does_not():
    cfg = TicketConfig()
    message = error_of(cfg.validate)
    assert message.startswith("prune.rounds:") and "target_sparsity" in message
    cfg.validate(imp=False)  # `raytickets finetune` prunes nothing


def test_original_schedule_cannot_prune_everything():
    message = error_of(ticket, "prune.schedule=original", "prune.rate=0.3", "prune.rounds=4")
    assert message.startswith("prune.rounds: 4") and "rounds * rate must be < 1" in message


def test_rewind_step_beyond_max_steps_is_rejected():
    message = error_of(ticket, "train.max_steps=10", "prune.rewind_step=11")
    assert message.startswith("prune.rewind_step: 11") and "10 training steps" in message


@pytest.mark.parametrize(
    "schedule, rate, target, expected",
    [
        ("remaining", 0.2, None, [0.2, 0.36, 0.488]),
        ("original", 0.2, None, [0.2, 0.4, 0.6]),
        ("remaining", 0.5, 0.6, [0.5, 0.6]),  # the last round stops exactly at the target
    ],
)
def test_sparsity_schedule(schedule, rate, target, expected):
    prune = PruneConfig(schedule=schedule, rate=rate, rounds=None if target else 3, target_sparsity=target)
    assert prune.num_rounds() == len(expected)
    assert [prune.sparsity_at(r) for r in range(1, len(expected) + 1)] == pytest.approx(expected)


# ------------------------------------------------------------------------------------ shipped configs


def test_configs_directory_is_not_empty():
    assert len(CONFIGS) >= 1


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)  # relative glue_dir entries are relative to the repository root
    raw = read_yaml(path)
    if "arms" in raw:  # a multi-task experiment (`raytickets mtl --config`): its `sweep` section finds the tickets
        cfg, raw = load_mtl_config(path).sweep, raw["sweep"]
    else:
        cfg = load_config(str(path), [])
    assert isinstance(cfg, SweepConfig)
    assert cfg.name == raw["name"]
    # every key the file sets reached the config (nothing dropped on the way)
    for section in ("train", "prune"):
        for key, value in raw.get("ticket", {}).get(section, {}).items():
            got = getattr(getattr(cfg.ticket, section), key)
            assert got == value or got == pytest.approx(value), f"{path.name}: ticket.{section}.{key}"
    for key in raw.get("search", {}).get("space", {}):
        assert key in cfg.search.space
    assert dataclasses.asdict(cfg)["search"]["space"].keys() == raw.get("search", {}).get("space", {}).keys()


def test_readme_lists_every_method():
    """docs/concepts.md's method table is the registry's: a method added without its row (or a row left for a
    method removed) fails here."""
    text = (REPO / "docs" / "concepts.md").read_text()
    table = text[text.index("<!-- methods:"):text.index("<!-- /methods -->")]
    rows = [re.split(r"(?<!\\)\|", line) for line in table.splitlines() if line.startswith("| `")]  # \| is text
    assert [cells[1].strip().strip("`") for cells in rows] == list(METHODS)
    for cells, cls in zip(rows, METHODS.values()):
        assert cells[2].strip().replace("\\|", "|") == cls.summary, cls.name


def test_a_per_task_setting_is_validated_as_that_tasks_trials_run(tmp_path):
    """`per_task.mlm.data.corpus` is valid although the template's task is a GLUE task (it used to be checked
    against the template's task and refused); on a GLUE task it is still refused."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one sentence\nanother sentence\n")
    cfg = build(TicketConfig, {"task": "sst2", "prune": {"rounds": 1}, "per_task": {"mlm": {"data.corpus": str(corpus)}}})
    cfg.validate("ticket")
    assert resolve(build(TicketConfig, {**to_dict(cfg), "task": "mlm"})).data.corpus == str(corpus)
    bad = build(TicketConfig, {"task": "sst2", "prune": {"rounds": 1}, "per_task": {"rte": {"data.corpus": str(corpus)}}})
    with pytest.raises(ConfigError, match=r"^ticket.data.corpus: .* is read by the mlm task only; task is 'rte'"):
        bad.validate("ticket")
