"""Knowledge distillation of every pruned model from a teacher's logits (Hinton et al. 2015), `train.distill`.

The loss of a training batch is  alpha · KD + (1 - alpha) · the task's own loss,  where KD is, for
classification, T² · KL(softmax(teacher / T) ‖ softmax(student / T)) averaged over the batch (Hinton's T² keeps
the soft targets' gradients on the scale of the hard ones), and for regression (STS-B) the squared error to the
teacher's prediction (a single logit has no distribution to soften). The same form as Sanh et al.'s movement
pruning runs (transformers examples/research_projects/movement-pruning/masked_run_glue.py: `kl_div` of
`log_softmax(student / T)` against `softmax(teacher / T)`, batchmean, times T², mixed by alpha_distil/alpha_ce,
whose defaults 0.5/0.5 and temperature 2.0 are ours).

The teacher is the trajectory's own full fine-tuned model (round 0) unless `teacher` names a model directory;
its logits are computed once per training example, in eval mode, and kept in memory ([rows, labels] floats).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigError


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


def check_distill(distill: Any, task: Any, model: str, path: str) -> None:
    """One-line ConfigErrors before anything runs: a task without logits to match, a teacher directory that is
    not a model of this task (its labels, or its ticket.json's task) or cannot read this model's tokens."""
    if task.is_span or task.is_mlm:
        raise ConfigError(f"{path}: task {task.name!r}; logits distillation covers the GLUE classification and "
                          f"regression tasks (span and MLM logits are not distilled)")
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
    want = 1 if task.is_regression else len(task.label_list)
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


def teacher_logits(model, train_data, collate, batch_size: int, precision: str, teacher: str | None = None):
    """The teacher's logits of every training example, in dataset order (a float32 CPU tensor). `model` holds the
    full fine-tuned weights (teacher null); with a `teacher` directory that model is loaded instead (safetensors
    only: a user's pickle is never loaded)."""
    import torch

    from .train import device_of, predict

    if teacher is not None:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(str(Path(teacher).expanduser()),
                                                                   use_safetensors=True).to(device_of(model))
    logits, _ = predict(model, train_data, collate, batch_size, precision)
    return torch.from_numpy(logits).float()
