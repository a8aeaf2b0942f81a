"""The cheaper CPU dropout (raytickets/dropout.py) is torch's dropout in distribution: keep probability 1 - p
(to 2**-32), kept values scaled by 1/(1 - p), identity in eval mode, gradient mask/(1 - p); the attention path is
SDPA's math; a model built with it still learns."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raytickets.config import TrainConfig
from raytickets.dropout import ATTENTION, Dropout, dropout, keep_threshold, math_attention
from raytickets.models import load_model, load_tokenizer, tiny_bert
from raytickets.tasks import collate, get_task, tokenized_splits
from raytickets.train import finetune

N = 4_000_000  # keep-rate standard error sqrt(p(1-p)/N): 1.5e-4 at p = 0.1, 2.5e-4 at p = 0.5


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keep_rate_and_scaling_are_torchs(p, dtype):
    torch.manual_seed(0)
    x = torch.rand(N, dtype=torch.float32).add_(0.5).to(dtype)  # no zeros: kept iff the output is nonzero
    out = dropout(x, p, True)
    kept = out != 0
    rate = kept.double().mean().item()
    assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / N), rate
    # kept values are x/(1 - p) rounded once in x's dtype (the scale a float32 scalar, as torch's kernels keep it)
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    assert torch.equal(out[kept], (x[kept].float() * scale).to(dtype))
    # unbiased: E[out] = E[x] (to the sampling error of the mask)
    spread = x.double().std().item() / math.sqrt(N) + x.double().mean().item() * math.sqrt(p / (1 - p) / N)
    assert abs(out.double().mean().item() - x.double().mean().item()) < 5 * spread


def test_the_threshold_is_exact_to_2_pow_minus_32():
    """Not a byte draw's 1/256 grid: every p keeps with probability 1 - p to within half a 31-bit step."""
    for p in (0.1, 0.15, 1 / 3, 0.01, 0.999, 1e-9):
        assert abs(keep_threshold(p) / 2**31 - (1 - p)) <= 2**-32
    bits = torch.tensor([keep_threshold(0.1) - 1, keep_threshold(0.1)], dtype=torch.int32)
    assert torch.lt(bits, keep_threshold(0.1)).tolist() == [True, False]


def test_masks_follow_torch_manual_seed_and_change_call_to_call():
    x = torch.ones(10_000)
    torch.manual_seed(3)
    a, b = dropout(x, 0.2), dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.2), a) and not torch.equal(a, b)


def test_eval_mode_and_p_zero_are_the_identity_and_p_one_drops_all():
    x = torch.randn(64, 32)
    layer = Dropout(0.3).eval()
    assert layer(x) is x and dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    assert torch.count_nonzero(dropout(x, 1.0)) == 0


def test_gradient_is_the_mask_over_one_minus_p():
    x = torch.rand(200_000).add_(0.5).requires_grad_()
    out = Dropout(0.25).train()(x)
    out.backward(torch.full_like(out, 3.0))
    expected = (out.detach() != 0).float() * 3.0 * (1 / 0.75)
    assert torch.allclose(x.grad, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("boolean", [True, False])
def test_math_attention_is_sdpa_without_dropout(boolean):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 16, 16, generator=g)
    mask = mask > 0.3 if boolean else mask.log()
    if boolean:
        mask[..., 0] = True  # no fully masked row (BERT always attends to [CLS])
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3).transpose(1, 2)
    assert torch.allclose(math_attention(q, k, v, mask, 0.0, 0.3), ref, atol=1e-5)


def test_a_loaded_model_uses_it_keeps_padding_masked_and_saves_a_plain_config(tiny_model_dir, tmp_path):
    model = load_model(str(tiny_model_dir), 2, seed=0)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(type(m) is Dropout and m.p == 0.1 for m in drops)
    assert model.config._attn_implementation == ATTENTION
    # from_pretrained returns an eval-mode model: the swapped-in modules keep that mode (a new module starts in
    # training mode, which once made every forward of a freshly loaded model draw dropout masks)
    assert not model.training and not any(m.training for m in drops)
    probe = torch.randint(1000, 2000, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=probe).logits, model(input_ids=probe).logits)
    # training mode, same seed: what sits in padded positions must not matter (the padding mask reaches it)
    ids = torch.randint(1000, 2000, (4, 16), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones(4, 16, dtype=torch.long)
    attention_mask[:, 10:] = 0
    other = ids.clone()
    other[:, 10:] = 7
    model.train()
    outs = []
    for x in (ids, other):
        torch.manual_seed(1)
        outs.append(model(input_ids=x, attention_mask=attention_mask).logits)
    assert torch.equal(outs[0], outs[1])
    model.save_pretrained(tmp_path / "saved")
    assert ATTENTION not in (tmp_path / "saved" / "config.json").read_text()


def test_a_tiny_bert_with_dropout_still_learns(glue_dir, tmp_path):
    """Dropout 0.1 on every hidden state and attention map: the tiny BERT fits 16 real SST-2 rows (its loss
    0.69 -> ~0.08 in 40 steps; one thread: a second only waits on the shared cores for a 32-wide model)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tiny_bert(tmp_path / "tiny")
    task = get_task("sst2")
    tokenizer = load_tokenizer(str(path))
    splits = tokenized_splits(task, tokenizer, str(path), glue_dir, max_seq_length=32, max_train_examples=16,
                              max_dev_examples=16, cache_dir=tmp_path / "cache")
    model = load_model(str(path), 2, seed=0)
    cfg = TrainConfig(learning_rate=3e-3, batch_size=16, max_steps=40, warmup_ratio=0.0, precision="fp32",
                      progress=False)
    try:
        res = finetune(model, task, splits["train"], {"dev": splits["dev"]}, collate(tokenizer), cfg)
    finally:
        torch.set_num_threads(threads)
    assert sum(res.losses[-5:]) / 5 < 0.5 * sum(res.losses[:5]) / 5, res.losses
