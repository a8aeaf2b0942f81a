"""Knowledge distillation of every pruned model from a teacher's logits (Hinton et al. 2015), `train.distill`.

The loss of a training batch is  alpha · KD + (1 - alpha) · the task's own loss,  where KD is, for
classification, T² · KL(softmax(teacher / T) ‖ softmax(student / T)) averaged over the batch (Hinton's T² keeps
the soft targets' gradients on the scale of the hard ones), and for regression (STS-B) the squared error to the
teacher's prediction (a single logit has no distribution to soften). The same form as Sanh et al.'s movement
pruning runs (transformers examples/research_projects/movement-pruning/masked_run_glue.py: `kl_div` of
`log_softmax(student / T)` against `softmax(teacher / T)`, batchmean, times T², mixed by alpha_distil/alpha_ce,
whose defaults 0.5/0.5 and temperature 2.0 are ours). SQuAD distils its span logits as their
masked_run_squad.py does: the KL above on the start logits and on the end logits over a window's positions,
averaged, `(loss_start + loss_end) / 2`, then mixed by alpha.

The teacher is the trajectory's own full fine-tuned model (round 0) unless `teacher` names a model directory;
its logits are computed once per training example, in eval mode, and kept in memory ([rows, labels] floats;
for SQuAD [windows, 2, max_seq_length], the positions past a window's end at PAD_LOGIT).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigError

# A position outside a window: far below any logit, yet finite in bf16/fp16 (-inf would make 0 · -inf = nan in
# the KL), so its softmax share is 0 on both sides.
PAD_LOGIT = -1.0e4


def kd_loss(student, teacher, task_loss, alpha: float, temperature: float, regression: bool):
    """alpha · KD(student, teacher) + (1 - alpha) · task_loss, in fp32 (see the module docstring)."""
    import torch.nn.functional as F

    student, teacher = student.float(), teacher.float().to(student.device)
    if regression:
        kd = F.mse_loss(student.view(-1), teacher.view(-1))
    else:
        kd = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.softmax(teacher / temperature, dim=-1),
                      reduction="batchmean") * temperature ** 2
    return alpha * kd + (1 - alpha) * task_loss.float()


def span_kd_loss(start, end, teacher, attention_mask, task_loss, alpha: float, temperature: float):
    """alpha · (KD(start) + KD(end)) / 2 + (1 - alpha) · task_loss: `teacher` is [batch, 2, ≥ length] (start,
    end) and the student's padded positions are masked as the teacher's are."""
    import torch.nn.functional as F

    length = start.shape[1]
    teacher = teacher[:, :, :length].float().to(start.device)
    pad = attention_mask == 0

    def kd(student, target):
        student = student.float().masked_fill(pad, PAD_LOGIT)
        return F.kl_div(F.log_softmax(student / temperature, dim=-1), F.softmax(target / temperature, dim=-1),
                        reduction="batchmean") * temperature ** 2

    return alpha * (kd(start, teacher[:, 0]) + kd(end, teacher[:, 1])) / 2 + (1 - alpha) * task_loss.float()


def check_distill(distill: Any, task: Any, model: str, path: str) -> None:
    """One-line ConfigErrors before anything runs: a task without logits to match, a teacher directory that is
    not a model of this task (its labels, or its ticket.json's task) or cannot read this model's tokens."""
    if task.is_mlm:
        raise ConfigError(f"{path}: task {task.name!r}; logits distillation covers the GLUE tasks and squad "
                          f"(MLM logits are not distilled)")
    if distill.teacher is None:
        return
    where = Path(distill.teacher).expanduser()
    config = where / "config.json"
    if not config.is_file() or not list(where.glob("*.safetensors")):
        raise ConfigError(f"{path}.teacher: {distill.teacher!r} is not a model directory (config.json and "
                          f"safetensors weights); allowed: null (the full fine-tuned model) or such a directory")
    teacher_config = json.loads(config.read_text())
    # transformers writes id2label only for a head other than its default of 2 labels
    labels = len(teacher_config.get("id2label") or {}) or teacher_config.get("num_labels", 2)
    want = 1 if task.is_regression else 2 if task.is_span else len(task.label_list)  # span: start and end
    architectures = teacher_config.get("architectures") or []
    if task.is_span and not any(a.endswith("ForQuestionAnswering") for a in architectures):
        raise ConfigError(f"{path}.teacher: {distill.teacher!r} is a {', '.join(architectures) or 'model'} without a "
                          f"question-answering head; allowed: a model fine-tuned on {task.name!r}")
    ticket = where / "ticket.json"
    teacher_task = json.loads(ticket.read_text()).get("task") if ticket.is_file() else None
    if labels != want or teacher_task not in (None, task.name):
        what = f"task {teacher_task!r}" if teacher_task not in (None, task.name) else f"{labels} labels"
        raise ConfigError(f"{path}.teacher: {distill.teacher!r} is a model of {what}; allowed: a model fine-tuned on "
                          f"{task.name!r} ({want} label{'s' if want > 1 else ''})")
    from .models import resolve_model

    student = json.loads((Path(resolve_model(model)) / "config.json").read_text()) \
        if (Path(resolve_model(model)) / "config.json").is_file() else {}
    same = teacher_config.get("vocab_size") == student.get("vocab_size")
    if same and list(where.glob("vocab.txt")) + list(where.glob("tokenizer.json")):  # it ships its tokenizer
        same = _vocabulary(str(where)) == _vocabulary(model)
    if not same:
        raise ConfigError(f"{path}.teacher: {distill.teacher!r} reads another vocabulary than model {model!r}; "
                          f"allowed: a teacher with the student's tokenizer (it sees the same token ids)")


def _vocabulary(model: str) -> dict[str, int]:
    from .models import load_tokenizer

    return load_tokenizer(model).get_vocab()


def teacher_logits(model, train_data, collate, batch_size: int, precision: str, teacher: str | None = None,
                   span: bool = False):
    """The teacher's logits of every training example, in dataset order (a float32 CPU tensor; `span`: SQuAD's
    windows, [windows, 2, longest window]). `model` holds the full fine-tuned weights (teacher null); with a
    `teacher` directory that model is loaded instead (safetensors only: a user's pickle is never loaded)."""
    import torch

    from .train import device_of, predict

    if teacher is not None:
        from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

        auto = AutoModelForQuestionAnswering if span else AutoModelForSequenceClassification
        model = auto.from_pretrained(str(Path(teacher).expanduser()), use_safetensors=True).to(device_of(model))
    if span:
        from .squad import predict_logits

        starts, ends = predict_logits(model, train_data, collate, batch_size, precision)
        out = torch.full((len(starts), 2, max(map(len, starts), default=0)), PAD_LOGIT)
        for i, (s, e) in enumerate(zip(starts, ends)):
            out[i, 0, :len(s)], out[i, 1, :len(e)] = torch.from_numpy(s), torch.from_numpy(e)
        return out
    logits, _ = predict(model, train_data, collate, batch_size, precision)
    return torch.from_numpy(logits).float()
