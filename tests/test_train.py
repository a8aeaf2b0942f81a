"""Masked fine-tuning: pruned weights stay exactly 0, rewind points are real copies, runs are seeded,
every task shape (classification, STS-B regression, MNLI's two dev sets) is scored as GLUE scores it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raytickets.config import TrainConfig, default_learning_rate
from raytickets.errors import ConfigError, MaskError
from raytickets.masks import Mask
from raytickets.models import MINILM, encoder_state, load_model, load_tokenizer, prunable_parameters, snapshot
from raytickets.pruning import random_prune
from raytickets.tasks import collate, compute_metrics, get_task, tokenized_splits
from conftest import MNLI_HEADER, pairs, write_stsb, write_tsv
from raytickets.train import evaluate, finetune, make_optimizer, predict, state_copy, total_steps

# Large enough that a few Adam steps visibly move a tiny random model's weights.
FAST = dict(learning_rate=1e-3, batch_size=8, eval_batch_size=16, warmup_ratio=0.0)


class Data:
    """A task's tokenised train/dev splits for one model, as `finetune` takes them."""

    def __init__(self, model_dir, task: str, glue, cache, n_train=None, n_dev=None, max_seq_length=32):
        self.model_dir = str(model_dir)
        self.task = get_task(task)
        tokenizer = load_tokenizer(self.model_dir)
        splits = tokenized_splits(self.task, tokenizer, self.model_dir, glue, max_seq_length=max_seq_length,
                                  max_train_examples=n_train, max_dev_examples=n_dev, cache_dir=cache)
        self.train = splits["train"]
        self.dev = {s: splits[s] for s in self.task.dev_splits}
        self.collate = collate(tokenizer)

    def model(self, seed: int = 0):
        return load_model(self.model_dir, self.task.num_labels, seed=seed)

    def finetune(self, model, cfg: TrainConfig, **kwargs):
        return finetune(model, self.task, self.train, self.dev, self.collate, cfg, **kwargs)


DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def one_thread():
    """A 32-wide model gains nothing from a second thread, and loses much when the cores are shared."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(DEFAULT_THREADS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenized")


@pytest.fixture(scope="module")
def sst2(tiny_model_dir, glue_dir, cache):
    return Data(tiny_model_dir, "sst2", glue_dir, cache, n_train=64, n_dev=32)


def random_mask(params, sparsity=0.5, seed=0) -> Mask:
    return random_prune(Mask.ones_like(params), sparsity, "global", torch.Generator().manual_seed(seed))


class Stop(Exception):
    pass


def stop_after(k: int):
    """An on_step callback that interrupts training after k steps: the run's weights at step k."""

    def on_step(step, loss):
        if step == k:
            raise Stop

    return on_step


# ------------------------------------------------------------------------------------------ the mask


def test_pruned_weights_stay_exactly_zero_at_every_step_and_kept_weights_train(sst2):
    model = sst2.model()
    params = prunable_parameters(model)
    mask = random_mask(params)
    pruned = {n: ~t for n, t in mask.tensors.items()}
    before = snapshot(params)
    head_before = model.classifier.weight.detach().clone()
    embeddings_before = model.bert.embeddings.word_embeddings.weight.detach().clone()
    cfg = TrainConfig(max_steps=8, **FAST)
    checked = []

    def on_step(step, loss):
        for name, p in params.items():
            assert torch.count_nonzero(p.detach()[pruned[name]]) == 0, f"step {step}: {name} revived"
        checked.append(step)

    res = sst2.finetune(model, cfg, mask=mask, params=params, on_step=on_step)
    assert checked == list(range(1, 9)) and res.steps == 8 and len(res.losses) == 8
    for name, p in params.items():
        w = p.detach()
        assert torch.count_nonzero(w[pruned[name]]) == 0, name
        kept = mask.tensors[name]
        changed = (w[kept] != before[name][kept]).float().mean().item()
        assert changed > 0.9, f"{name}: only {changed:.0%} of the kept weights changed"
    assert not torch.equal(model.classifier.weight, head_before)  # the dense parts train too
    assert not torch.equal(model.bert.embeddings.word_embeddings.weight, embeddings_before)
    assert set(res.metrics) == {"accuracy"} and 0 <= res.metrics["accuracy"] <= 1


def test_without_reapplying_the_mask_adamw_would_revive_pruned_weights(sst2):
    """The premise of the test above: one AdamW step, mask not re-applied, moves pruned weights off 0."""
    model = sst2.model()
    params = prunable_parameters(model)
    mask = random_mask(params)
    mask.apply(params)
    optimizer, _ = make_optimizer(model, TrainConfig(**FAST), steps=4)
    batch = sst2.collate([sst2.train[i] for i in range(8)])
    model(**batch).loss.backward()
    name = "encoder.layer.0.attention.self.query.weight"
    grad_on_pruned = params[name].grad[~mask.tensors[name]]
    assert torch.count_nonzero(grad_on_pruned) > 0.9 * grad_on_pruned.numel()  # pruned weights get gradients
    optimizer.step()
    revived = torch.count_nonzero(params[name].detach()[~mask.tensors[name]]).item()
    assert revived > 0.9 * grad_on_pruned.numel()


def test_mtdnn_adamax_is_mt_dnns_update_rule_on_a_hand_computed_step():
    """Two steps of MT-DNN's Adamax (module/bert_optim.py:119-139 of Liang et al.'s code) on w = [1, -2],
    lr 0.1, decay 0.01, eps 1e-6, gradients [0.5, 0] then [-0.25, 0], worked out by hand:
      step 1, w[0]: m = 0.1·0.5 = 0.05;  u = |0.5| + 1e-6 = 0.500001;  Δ = 0.05/(0.500001 + 1e-6) + 0.01·1
                    = 0.0999996 + 0.01 = 0.1099996;  w = 1 - 0.1·0.1099996 = 0.98900004
              w[1]: g = 0, so m = 0 and Δ = 0.01·(-2) alone: w = -2 + 0.002 = -1.998
      step 2, w[0]: m = 0.9·0.05 + 0.1·(-0.25) = 0.02;  u = max(0.999·0.500001, 0.250001) = 0.499500999;
                    Δ = 0.02/0.499501999 + 0.01·0.98900004 = 0.04003988 + 0.00989000 = 0.04992988;
                    w = 0.98900004 - 0.004992988 = 0.98400705
              w[1]: w = -1.998·(1 - 0.1·0.01) = -1.996002
    No bias correction (torch's Adamax would divide m by 1 - 0.9 = 0.1 at step 1) and the decay after the
    normalisation (torch's adds 0.01·w to g, and the zero-gradient entry would move by ~lr = 0.1)."""
    from raytickets.optim import MTDNNAdamax

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = MTDNNAdamax([w], lr=0.1, weight_decay=0.01)
    assert opt.defaults["eps"] == 1e-6 and opt.defaults["betas"] == (0.9, 0.999)  # MT-DNN's (bert_optim.py:37)
    w.grad = torch.tensor([0.5, 0.0], dtype=torch.float64)
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([0.98900004, -1.998], dtype=torch.float64), atol=1e-8)
    w.grad = torch.tensor([-0.25, 0.0], dtype=torch.float64)
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([0.98400705, -1.996002], dtype=torch.float64), atol=1e-8)
    assert opt.state[w]["step"] == 2

    v = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))  # the contrast: torch's Adamax
    torch_opt = torch.optim.Adamax([v], lr=0.1, weight_decay=0.01)
    v.grad = torch.tensor([0.5, 0.0], dtype=torch.float64)
    torch_opt.step()
    assert abs(v[1].item() - -1.9) < 1e-6  # the zero-gradient weight moves lr = 0.1, not lr·wd·|w| = 0.002


def test_adamax_mtdnn_decays_unseen_embeddings_by_lr_wd_w_where_torchs_adamax_takes_lr(sst2):
    """Issue 17 item 3: under torch's Adamax(weight_decay) every embedding row of a token not in the batch
    shrinks by ~lr per step (its only gradient is wd·w, normalised to ±1); MT-DNN's rule moves it lr·wd·w."""
    from raytickets.optim import MTDNNAdamax

    batch = sst2.collate([sst2.train[i] for i in range(8)])
    lr, wd = 5e-5, 0.01
    moved = {}
    for name in ("adamax_mtdnn", "adamax"):
        model = sst2.model()
        model.eval()  # no dropout: the two optimisers see the same gradient
        table = model.bert.embeddings.word_embeddings.weight
        unseen = torch.ones(table.shape[0], dtype=torch.bool)
        unseen[batch["input_ids"].unique()] = False
        before = table.detach().clone()
        optimizer, _ = make_optimizer(model, TrainConfig(learning_rate=lr, weight_decay=wd, warmup_ratio=0.0,
                                                         optimizer=name), steps=10)
        assert isinstance(optimizer, MTDNNAdamax) == (name == "adamax_mtdnn")
        model(**batch).loss.backward()
        optimizer.step()
        moved[name] = (before - table.detach())[unseen]
        if name == "adamax_mtdnn":
            # to float32's resolution at |w| ~ 0.05 (an ulp is ~4e-9): lr·wd·w is ~1e-8
            assert torch.allclose(moved[name], lr * wd * before[unseen], rtol=0, atol=8e-9)
    assert moved["adamax_mtdnn"].abs().mean() < 1e-3 * lr  # ~lr·wd·0.02 = 1e-8 per step
    assert moved["adamax"].abs().mean() > 0.9 * lr  # torch's: ~lr per step, whatever wd is


def test_gradient_clipping_counts_only_the_weights_a_mask_keeps(sst2):
    """Pruned weights do not exist: their gradients are zeroed before clipping, so the clipped norm is the
    norm over kept weights (at 90% sparsity the old norm over every weight was ~1.4x larger)."""
    model = no_dropout(sst2.model())
    params = prunable_parameters(model)
    mask = random_mask(params, 0.9)
    reference = no_dropout(sst2.model())
    ref_params = prunable_parameters(reference)
    mask.apply(ref_params)
    batch = sst2.collate([sst2.train[i] for i in torch.randperm(
        len(sst2.train), generator=first_epoch_generator()).tolist()[:8]])
    reference(**batch).loss.backward()
    every = torch.cat([p.grad.flatten() for p in reference.parameters()]).norm().item()
    for name, p in ref_params.items():
        p.grad.mul_(mask.tensors[name])
    kept = torch.cat([p.grad.flatten() for p in reference.parameters()]).norm().item()
    # fp32: compared with the float32 backward above to 1e-5 (the default, null, is bf16 on a bf16 CPU)
    res = sst2.finetune(model, TrainConfig(max_steps=1, precision="fp32", **FAST), mask=mask, params=params)
    assert res.grad_norms[0] == pytest.approx(kept, rel=1e-5)
    assert every > 1.05 * kept  # what clipping used to see


def first_epoch_generator() -> torch.Generator:
    """The generator behind epoch 0's order for seed 0 (distributed.global_order), after the DataLoader-style draw."""
    g = torch.Generator().manual_seed(0)
    torch.empty((), dtype=torch.int64).random_(generator=g)
    return g


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_fp32_weights_under_the_mask(sst2, precision):
    """Autocast computes in bf16/fp16 (fp16 with a loss scaler); the weights, the mask and the optimiser stay
    fp32, so pruned weights are still exactly 0 and the run lands near the fp32 run."""
    model = no_dropout(sst2.model())
    params = prunable_parameters(model)
    mask = random_mask(params)
    res = sst2.finetune(model, TrainConfig(max_steps=4, precision=precision, **FAST), mask=mask, params=params)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for name, p in params.items():
        assert torch.count_nonzero(p.detach()[~mask.tensors[name]]) == 0, name
    reference = no_dropout(sst2.model())
    ref = sst2.finetune(reference, TrainConfig(max_steps=4, precision="fp32", **FAST), mask=mask,
                        params=prunable_parameters(reference))
    assert all(math.isfinite(l) for l in res.losses) and res.losses[0] == pytest.approx(ref.losses[0], abs=0.05)
    assert res.losses != ref.losses  # it did compute in another precision


def test_masked_finetune_with_a_dense_mask_changes_every_prunable_tensor(sst2):
    model = sst2.model()
    params = prunable_parameters(model)
    before = snapshot(params)
    sst2.finetune(model, TrainConfig(max_steps=3, **FAST), mask=Mask.ones_like(params), params=params)
    for name, p in params.items():
        assert (p.detach() != before[name]).float().mean() > 0.9, name


def test_a_mask_for_other_tensors_is_rejected_before_training(sst2):
    model = sst2.model()
    params = prunable_parameters(model)
    before = snapshot(params)
    wrong = Mask({"encoder.layer.0.attention.self.query.weight": torch.ones(32, 32, dtype=torch.bool)})
    with pytest.raises(MaskError, match="no entry for prunable tensor"):
        sst2.finetune(model, TrainConfig(max_steps=2, **FAST), mask=wrong, params=params)
    assert all(torch.equal(p, before[n]) for n, p in params.items())


# --------------------------------------------------------------------------------------- rewinding


def test_rewind_capture_equals_the_run_interrupted_after_k_steps_and_is_a_copy(sst2):
    # The rewind point is every weight (encoder and head) after k steps of *this* run (its learning-rate
    # schedule included), so the reference is the same run interrupted after k steps.
    k, cfg = 3, TrainConfig(max_steps=7, **{**FAST, "warmup_ratio": 0.2})
    model = sst2.model()
    res = sst2.finetune(model, cfg, capture_step=k)
    reference = sst2.model()
    with pytest.raises(Stop):
        sst2.finetune(reference, cfg, on_step=stop_after(k))
    at_k, final = state_copy(reference), state_copy(model)
    assert res.rewind_state.keys() == at_k.keys() == final.keys()
    assert "classifier.weight" in res.rewind_state  # the head is rewound too (Frankle et al., open_lth)
    for name, value in res.rewind_state.items():
        assert torch.equal(value, at_k[name]), name
    # ... and not the final weights: a state_dict() reference would have trained on with the model
    prunable = prunable_parameters(model)
    for name in [*(f"bert.{n}" for n in prunable), "classifier.weight"]:
        assert not torch.equal(res.rewind_state[name], final[name]), name
    own = {p.data_ptr() for p in model.parameters()}
    assert not own & {t.data_ptr() for t in res.rewind_state.values()}


def test_rewind_capture_equals_a_run_of_max_steps_k(sst2):
    # Without warmup the first step's learning rate is the same whatever the run's length, so a run
    # with max_steps=1 is the same computation as the first step of a longer run.
    model = sst2.model()
    res = sst2.finetune(model, TrainConfig(max_steps=5, **FAST), capture_step=1)
    short = sst2.model()
    sst2.finetune(short, TrainConfig(max_steps=1, **FAST))
    at_1 = state_copy(short)
    assert all(torch.equal(res.rewind_state[n], at_1[n]) for n in at_1)
    assert not all(torch.equal(res.rewind_state[n], v) for n, v in state_copy(model).items())


def test_rewind_capture_at_step_0_is_the_masked_pretrained_weights(sst2):
    model = sst2.model()
    params = prunable_parameters(model)
    mask = random_mask(params, 0.3)
    pretrained = state_copy(model)
    res = sst2.finetune(model, TrainConfig(max_steps=2, **FAST), mask=mask, params=params, capture_step=0)
    for name, value in res.rewind_state.items():
        bare = name.removeprefix("bert.")
        expected = pretrained[name] * mask.tensors[bare] if bare in params else pretrained[name]
        assert torch.equal(value, expected), name
    assert not torch.equal(res.rewind_state["bert.pooler.dense.weight"], params["pooler.dense.weight"])


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def test_late_rewinding_continues_the_schedule_from_step_k(sst2):
    """Training from step k's weights with start_step=k is the rest of the original run (open_lth's
    rewinding): the learning rates of steps k+1..T and the batches of those steps, T-k steps. Dropout is off
    so the same weights on the same batch give the same loss."""
    k, cfg = 3, TrainConfig(max_steps=6, **{**FAST, "warmup_ratio": 0.5})
    whole = sst2.finetune(no_dropout(sst2.model()), cfg, capture_step=k)
    rewound = no_dropout(sst2.model())
    rewound.load_state_dict(whole.rewind_state)
    rest = sst2.finetune(rewound, cfg, start_step=k)
    assert rest.steps == 6 - k and len(rest.losses) == 6 - k
    assert rest.learning_rates == whole.learning_rates[k:]
    assert rest.losses[0] == whole.losses[k]  # step k+1's batch, on step k's weights
    restart = no_dropout(sst2.model())
    restart.load_state_dict(whole.rewind_state)
    again = sst2.finetune(restart, cfg)  # without start_step: warmup and the first batches all over again
    assert again.learning_rates[:3] != whole.learning_rates[k:k + 3] and again.losses[0] != whole.losses[k]


def test_capture_step_beyond_the_run_is_a_config_error(sst2):
    with pytest.raises(ConfigError, match=r"prune.rewind_step: 5 is beyond the 4 training steps"):
        sst2.finetune(sst2.model(), TrainConfig(max_steps=4, **FAST), capture_step=5)


def test_an_unresolved_learning_rate_is_a_config_error(sst2):
    with pytest.raises(ConfigError, match=r"^train.learning_rate: null; give a positive number"):
        sst2.finetune(sst2.model(), TrainConfig(max_steps=1, batch_size=8))


# ------------------------------------------------------------------------------------ steps and seeds


@pytest.mark.parametrize("epochs, expected", [(1, 3), (2, 6), (0.5, 2)])
def test_epochs_set_the_number_of_steps(sst2, epochs, expected):
    train = sst2.train.select(range(20))  # ceil(20 / 8) = 3 batches an epoch
    assert total_steps(len(train), TrainConfig(epochs=epochs, batch_size=8)) == expected
    res = finetune(sst2.model(), sst2.task, train, sst2.dev, sst2.collate, TrainConfig(epochs=epochs, **FAST))
    assert res.steps == expected and len(res.losses) == expected


def test_two_accumulated_batches_of_8_are_one_batch_of_16(sst2):
    """grad_accumulation: an optimiser step over two micro-batches of 8 is the step over the 16 examples at once
    (each micro-batch's mean loss weighted 1/2); steps count optimiser steps, the epoch's batches are shared."""
    accumulated, whole = no_dropout(sst2.model()), no_dropout(sst2.model())
    # fp32: the two orders of summation agree to 1e-6 in float32; bf16 (the default, null, on a bf16 CPU) rounds
    # each micro-batch's activations on its own
    a = sst2.finetune(accumulated, TrainConfig(max_steps=2, grad_accumulation=2, precision="fp32", **FAST))
    b = sst2.finetune(whole, TrainConfig(max_steps=2, precision="fp32", **{**FAST, "batch_size": 16}))
    assert a.steps == b.steps == 2 and a.losses == pytest.approx(b.losses, rel=1e-5)
    sa, sb = state_copy(accumulated), state_copy(whole)
    assert all(torch.allclose(sa[n], sb[n], atol=1e-6) for n in sa)
    assert total_steps(64, TrainConfig(epochs=1, batch_size=8, grad_accumulation=2)) == 4


def test_length_buckets_keep_each_epochs_examples_and_cut_padding(sst2):
    from raytickets.distributed import global_batches

    lengths = [len(ids) for ids in sst2.train["input_ids"]]
    plain = list(global_batches(len(lengths), 8, 0, 0))
    buckets = list(global_batches(len(lengths), 8, 0, 0, lengths=lengths))
    assert sorted(i for b, _ in buckets for i in b) == sorted(i for b, _ in plain for i in b) == list(range(len(lengths)))

    def pad_fraction(batches):
        padded = sum(len(b) * max(lengths[i] for i in b) for b, _ in batches)
        return 1 - sum(lengths) / padded

    assert pad_fraction(buckets) < 0.5 * pad_fraction(plain)
    res = sst2.finetune(sst2.model(), TrainConfig(max_steps=3, bucket_by_length=True, **FAST))
    assert res.steps == 3 and all(math.isfinite(l) for l in res.losses)


def test_max_steps_overrides_epochs_and_cycles_the_data():
    assert total_steps(20, TrainConfig(epochs=1, batch_size=8, max_steps=7)) == 7
    assert total_steps(20, TrainConfig(epochs=1, batch_size=8), world_size=2) == 2  # 10 rows a rank


def test_same_seed_same_run_other_seed_other_run(sst2):
    cfg = TrainConfig(max_steps=6, seed=3, **FAST)
    runs = []
    for _ in range(2):
        model = sst2.model()
        params = prunable_parameters(model)
        res = sst2.finetune(model, cfg, mask=random_mask(params), params=params)
        runs.append((res, {n: p.detach().clone() for n, p in model.named_parameters()}))
    (a, wa), (b, wb) = runs
    assert a.losses == b.losses and a.metrics == b.metrics
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    other = sst2.finetune(sst2.model(), TrainConfig(max_steps=6, seed=4, **FAST))
    assert other.losses != a.losses  # the seed drives data order and dropout


def test_the_seed_drives_dropout_not_only_data_order(sst2):
    # One batch of eight copies of one row: every seed feeds the same tensor in step 1, so the loss
    # can differ only through dropout.
    train = sst2.train.select([0] * 8)
    first = {}
    for seed in (3, 3, 4):
        res = finetune(sst2.model(), sst2.task, train, sst2.dev, sst2.collate, TrainConfig(max_steps=1, seed=seed, **FAST))
        first.setdefault(seed, []).append(res.losses[0])
    assert first[3][0] == first[3][1]
    assert abs(first[3][0] - first[4][0]) > 1e-4, first


# ------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("task", ["sst2", "mrpc"])
def test_evaluate_equals_compute_metrics_on_one_by_one_predictions(tiny_model_dir, glue_dir, cache, task):
    data = Data(tiny_model_dir, task, glue_dir, cache, n_train=8, n_dev=24)
    model = data.model(seed=1)
    model.train()
    dev = data.dev["dev"]
    metrics = evaluate(model, data.task, data.dev, data.collate, batch_size=5)
    assert model.training  # evaluate restores the mode it found
    model.eval()
    with torch.no_grad():  # one row at a time: no padding, no batching to get wrong
        logits = np.concatenate([
            model(**{k: v for k, v in data.collate([row]).items() if k != "labels"}).logits.numpy() for row in dev
        ])
    labels = np.array(dev["labels"])
    expected = compute_metrics(data.task, logits, labels)
    assert set(metrics) == set(data.task.metrics)
    assert metrics == pytest.approx(expected, abs=1e-12)
    got_logits, got_labels = predict(model, dev, data.collate, batch_size=7)
    np.testing.assert_allclose(got_logits, logits, atol=1e-5)
    np.testing.assert_array_equal(got_labels, labels)


def test_stsb_regression_trains_and_reports_pearson_and_spearman(tiny_model_dir, tmp_path):
    write_stsb(tmp_path / "glue", train=48, dev=24)
    data = Data(tiny_model_dir, "stsb", tmp_path / "glue", tmp_path / "cache")
    model = data.model()
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    # fp32: this tiny random model's predictions differ by less than bf16's step near 2.5 (1/64), so bf16 logits
    # (the default, null, on a bf16 CPU) come out constant and the correlations undefined
    res = data.finetune(model, TrainConfig(max_steps=18, precision="fp32", **{**FAST, "learning_rate": 1e-2}))
    assert set(res.metrics) == {"pearson", "spearman"}
    assert all(math.isfinite(v) and -1 <= v <= 1 for v in res.metrics.values())
    # regression loss (MSE against 0..5 scores) falls as the head learns the scale
    assert np.mean(res.losses[-4:]) < 0.5 * res.losses[0], res.losses
    logits, labels = predict(model, data.dev["dev"], data.collate, 16)
    assert logits.shape == (24, 1) and labels.dtype.kind == "f"
    assert res.metrics == pytest.approx(compute_metrics(data.task, logits, labels), abs=1e-12)


def test_mnli_reports_matched_mismatched_and_their_mean(tiny_model_dir, tmp_path):
    gold = ("entailment", "neutral", "contradiction")
    for split, n, seed in (("train", 30, 0), ("dev_matched", 15, 1), ("dev_mismatched", 11, 2)):
        rows = []
        for i, (a, b, kind) in enumerate(pairs(n, seed)):
            labels = [gold[kind]] * (1 if split == "train" else 5)
            rows.append([i, 100 + i, f"{i}e", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)", a, b, *labels,
                         gold[kind]])
        header = MNLI_HEADER + (["label1"] if split == "train" else [f"label{j}" for j in range(1, 6)]) + ["gold_label"]
        write_tsv(tmp_path / "glue" / "MNLI" / f"{split}.tsv", header, rows)
    data = Data(tiny_model_dir, "mnli", tmp_path / "glue", tmp_path / "cache")
    assert set(data.dev) == {"dev_matched", "dev_mismatched"}
    model = data.model()
    res = data.finetune(model, TrainConfig(max_steps=4, **FAST))
    assert set(res.metrics) == {"dev_matched/accuracy", "dev_mismatched/accuracy", "accuracy"}
    for split in data.dev:
        logits, labels = predict(model, data.dev[split], data.collate, 8)
        assert len(labels) == (15 if split == "dev_matched" else 11)
        assert res.metrics[f"{split}/accuracy"] == compute_metrics(data.task, logits, labels)["accuracy"]
    mean = (res.metrics["dev_matched/accuracy"] + res.metrics["dev_mismatched/accuracy"]) / 2
    assert res.metrics["accuracy"] == pytest.approx(mean, abs=1e-12)


# ----------------------------------------------------------------------------- the real model learns


@pytest.mark.slow
def test_pretrained_minilm_learns_sst2(glue_dir, cache):
    """The packaged pre-trained MiniLM at its default learning rate, 1000 real SST-2 rows, one epoch
    (32 steps): well above chance.

    Measured: accuracy 0.757 on these 300 dev rows at 1e-4 (0.767 at 3e-4). MiniLM (all-MiniLM-L6-v2,
    trained for mean-pooled sentence embeddings) needs a higher rate than BERT's 2e-5..5e-5: at 5e-5 it
    is still at chance (0.52) after 25 steps. 0.70 leaves margin; a majority guess scores 0.51 here.
    """
    torch.set_num_threads(DEFAULT_THREADS)
    data = Data(MINILM, "sst2", glue_dir, cache, n_train=1000, n_dev=300, max_seq_length=64)
    model = data.model()
    lr = default_learning_rate(MINILM)
    res = data.finetune(model, TrainConfig(learning_rate=lr, epochs=1, batch_size=32, eval_batch_size=100))
    assert res.steps == 32
    assert res.metrics["accuracy"] >= 0.70, res.metrics
