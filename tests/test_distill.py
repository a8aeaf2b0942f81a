"""Knowledge distillation (train.distill): the KD loss against values computed by hand, a trajectory whose ticket's
first training loss is the hand-computed KD of its batch against the full model's cached logits, the full model
shared with undistilled trajectories, and teachers of another task or vocabulary refused in one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from raytickets import cli, runs
from raytickets.config import DistillConfig
from raytickets.distill import PAD_LOGIT, kd_loss, span_kd_loss
from raytickets.distributed import global_batches
from raytickets.models import tiny_bert
from raytickets.tickets import Trajectory, prepare, prunable_of

from test_tickets import cache_dir, imp_args, make_cfg  # noqa: F401  (fixtures)


def softmax(x):
    e = [math.exp(v) for v in x]
    return [v / sum(e) for v in e]


def test_kd_loss_is_hintons_mix_computed_by_hand():
    s = [[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]]
    t = [[2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    labels, T, alpha = [1, 2], 2.0, 0.7
    kl = [sum(p * (math.log(p) - math.log(q)) for p, q in zip(softmax([v / T for v in ti]), softmax([v / T for v in si])))
          for si, ti in zip(s, t)]
    ce = [-math.log(softmax(si)[y]) for si, y in zip(s, labels)]
    expected = alpha * T * T * sum(kl) / 2 + (1 - alpha) * sum(ce) / 2
    task = torch.nn.functional.cross_entropy(torch.tensor(s), torch.tensor(labels))
    assert float(kd_loss(torch.tensor(s), torch.tensor(t), task, alpha, T, regression=False)) == pytest.approx(expected)
    # regression: the squared error to the teacher's prediction, no temperature
    reg = kd_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [1.0]]), torch.tensor(0.5), 0.25, 2.0, True)
    assert float(reg) == pytest.approx(0.25 * (1 + 4) / 2 + 0.75 * 0.5)


def test_span_kd_is_the_mean_of_start_and_end_kl_over_each_windows_own_positions_by_hand():
    """SQuAD (Sanh et al.'s masked_run_squad.py): T² · KL on the start logits and on the end logits, averaged,
    mixed by alpha; a padded position (attention 0) counts on neither side, and a cached teacher row longer
    than the batch is cut to the batch's length."""
    start = [[1.0, 0.0, 2.0], [0.5, 1.5, 7.0]]  # the second window is 2 long: its third logit is padding
    end = [[0.0, 1.0, 1.0], [2.0, 0.0, -3.0]]
    t_start = [[2.0, 0.0, 1.0, PAD_LOGIT], [1.0, 0.0, PAD_LOGIT, PAD_LOGIT]]
    t_end = [[1.0, 1.0, 0.0, PAD_LOGIT], [0.0, 1.0, PAD_LOGIT, PAD_LOGIT]]
    lengths, T, alpha, task = [3, 2], 2.0, 0.6, 1.25

    def kl(student, teacher):
        total = 0.0
        for s, t, n in zip(student, teacher, lengths):
            p, q = softmax([v / T for v in t[:n]]), softmax([v / T for v in s[:n]])
            total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))
        return T * T * total / len(student)

    expected = alpha * (kl(start, t_start) + kl(end, t_end)) / 2 + (1 - alpha) * task
    teacher = torch.tensor([[ts, te] for ts, te in zip(t_start, t_end)])
    attention = torch.tensor([[1, 1, 1], [1, 1, 0]])
    got = span_kd_loss(torch.tensor(start), torch.tensor(end), teacher, attention, torch.tensor(task), alpha, T)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_a_squad_ticket_trains_on_the_span_kd_loss_against_the_full_models_cached_span_logits(tiny_model_dir,
                                                                                               tmp_path):
    from raytickets.config import TicketConfig, build
    from test_squad import small_squad

    model = tiny_bert(tmp_path / "nodrop", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg = build(TicketConfig, {
        "task": "squad", "model": str(model),
        "data": {"squad_dir": str(small_squad(tmp_path / "squad", paragraphs=2)), "max_seq_length": 96,
                 "doc_stride": 48, "max_dev_examples": 8, "cache_dir": str(tmp_path / "cache")},
        # fp32: the cached logits and the loss are recomputed here in float32 (null is bf16 on a bf16 CPU)
        "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "progress": False, "precision": "fp32",
                  "distill": {"alpha": 0.7, "temperature": 2.0}},
        "prune": {"method": "magnitude", "rounds": 1, "rate": 0.3}})
    seen = {}
    traj = Trajectory(cfg, tmp_path / "work")
    traj.run(on_round=lambda state: seen.update({state.round: state}))
    prep = prepare(traj.cfg)
    params = prunable_of(traj.cfg, prep.model)
    indices, _ = next(global_batches(len(prep.train), cfg.train.batch_size, cfg.train.seed, 0, True))
    batch = prep.collate([prep.train[i] for i in indices])
    inputs = {k: v for k, v in batch.items() if k not in ("start_positions", "end_positions")}
    with torch.no_grad():
        prep.model.load_state_dict(traj._full_weights)
        teacher = prep.model(**inputs)
        length = batch["attention_mask"].sum(1)
        cached = traj._teacher_logits[indices]
        for i, n in enumerate(length.tolist()):  # cached once, in eval mode, each window to its own length
            assert torch.allclose(cached[i, 0, :n], teacher.start_logits[i, :n], atol=1e-5)
            assert torch.allclose(cached[i, 1, :n], teacher.end_logits[i, :n], atol=1e-5)
            assert (cached[i, :, n:] == PAD_LOGIT).all()
        prep.model.load_state_dict(prep.initial.state)
        seen[1].mask.apply(params)
        student = prep.model(**batch)
    expected = span_kd_loss(student.start_logits, student.end_logits, cached, batch["attention_mask"], student.loss,
                            0.7, 2.0)
    assert seen[1].losses["ticket"][0] == pytest.approx(float(expected), rel=1e-4)
    assert 0 < float(expected) and seen[1].rows[0].kind == "ticket"


def test_ticket_trains_on_the_kd_loss_against_the_full_models_cached_logits(make_cfg, tmp_path):
    # no dropout, so the first step's loss is a function of the weights alone and can be recomputed here
    model = tiny_bert(tmp_path / "nodrop", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    # fp32: the cached logits and the loss are recomputed here in float32 (null is bf16 on a bf16 CPU)
    cfg = make_cfg(model=str(model), prune__rounds=1, train__distill=DistillConfig(alpha=0.6, temperature=3.0),
                   train__precision="fp32")
    seen = {}
    traj = Trajectory(cfg, tmp_path / "work")
    traj.run(on_round=lambda state: seen.update({state.round: state}))
    first_loss = seen[1].losses["ticket"][0]
    prep = prepare(traj.cfg)
    params = prunable_of(traj.cfg, prep.model)
    indices, _ = next(global_batches(len(prep.train), cfg.train.batch_size, cfg.train.seed, 0, True))
    batch = prep.collate([prep.train[i] for i in indices])
    with torch.no_grad():
        prep.model.load_state_dict(traj._full_weights)
        teacher = prep.model(**{k: v for k, v in batch.items() if k != "labels"}).logits.numpy()
        prep.model.load_state_dict(prep.initial.state)  # round 1 starts from the pre-trained weights, masked
        seen[1].mask.apply(params)
        student = prep.model(**{k: v for k, v in batch.items() if k != "labels"}).logits.numpy()
    assert np.allclose(traj._teacher_logits[indices].numpy(), teacher, atol=1e-5)  # cached once, in eval mode
    labels, T = batch["labels"].numpy(), 3.0
    kl = ce = 0.0
    for s, t, y in zip(student, teacher, labels):
        p, q = softmax(list(t / T)), softmax(list(s / T))
        kl += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))
        ce += -math.log(softmax(list(s))[y])
    expected = 0.6 * T * T * kl / len(labels) + 0.4 * ce / len(labels)
    assert first_loss == pytest.approx(expected, rel=1e-4)
    undistilled = make_cfg(model=str(model), prune__rounds=1, train__precision="fp32")
    assert runs.full_id(traj.cfg) == runs.full_id(Trajectory(undistilled, tmp_path / "work").cfg)  # shared round 0
    assert runs.run_id(traj.cfg) != runs.run_id(Trajectory(undistilled, tmp_path / "work").cfg)


def teacher_dir(path, labels: int, task: str | None = None, vocab_size: int = 30522):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, num_labels=labels)
    BertForSequenceClassification(config).save_pretrained(path / "teacher")
    if task:
        (path / "teacher" / "ticket.json").write_text(json.dumps({"task": task}))
    return path / "teacher"


@pytest.mark.parametrize("kind,message", [
    ("labels", "error: train.distill.teacher: '{}' is a model of 3 labels; allowed: a model fine-tuned on 'rte'"),
    ("task", "error: train.distill.teacher: '{}' is a model of task 'mrpc'; allowed: a model fine-tuned on 'rte'"),
    ("vocab", "error: train.distill.teacher: '{}' reads another vocabulary than model"),
    ("mlm", "error: train.distill: task 'mlm'; logits distillation covers the GLUE tasks and squad"),
    ("squad", "error: train.distill.teacher: '{}' is a BertForSequenceClassification without a question-answering "
              "head; allowed: a model fine-tuned on 'squad'"),
])
def test_bad_teacher_is_one_line_before_any_training(tiny_model_dir, glue_dir, cache_dir, tmp_path, capsys, kind,
                                                     message):
    labels, task, extra = {"labels": (3, None, {}), "task": (2, "mrpc", {}), "vocab": (2, None, {"vocab_size": 1000}),
                           "mlm": (2, None, {}), "squad": (2, None, {})}[kind]
    teacher = teacher_dir(tmp_path / "t", labels, task, **extra)
    capsys.readouterr()  # what making the teacher printed
    args = imp_args(tiny_model_dir, glue_dir, cache_dir, tmp_path / "out", "--rounds", "1",
                    f"train.distill={{teacher: {teacher}}}" if kind != "mlm" else "train.distill={}",
                    *([f"task={kind}"] if kind in ("mlm", "squad") else []))
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message.format(teacher)) and err.count("\n") == 1, err
    assert not list((tmp_path / "out").rglob("rows.json"))


def test_a_teacher_directory_gives_its_own_logits(make_cfg, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from raytickets.distill import teacher_logits
    from raytickets.models import load_tokenizer

    teacher = teacher_dir(tmp_path, 2)
    load_tokenizer("minilm").save_pretrained(teacher)  # the student's tokenizer: the check passes
    cfg = make_cfg(prune__rounds=1, train__distill=DistillConfig(teacher=str(teacher)))
    prep = prepare(cfg)
    got = teacher_logits(prep.model, prep.train, prep.collate, 16, "fp32", str(teacher))
    direct = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    batch = prep.collate([prep.train[i] for i in range(len(prep.train))])
    with torch.no_grad():
        expected = direct(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert got.shape == (len(prep.train), 2) and torch.allclose(got, expected, atol=1e-5)
