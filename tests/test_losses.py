import math

import pytest
import torch

from top.errors import UserError
from top.method.losses import lagrangian_loss, lambda_arp2_loss, logit_distillation_loss, rank_distillation_loss


def _arp2_brute_force(scores, relevance, n, sigma=1.0):
    """LambdaLoss ARP-2 (Wang et al. 2018) of one list, summing over ordered pairs with y_i > y_j."""
    total = 0.0
    for i in range(n):
        for j in range(n):
            if relevance[i] > relevance[j]:
                gap = scores[i] - scores[j]
                total += (relevance[i] - relevance[j]) * math.log2(1 + math.exp(-sigma * gap))
    return total


def test_lagrangian_value_and_gradients():
    s = torch.tensor(0.3, requires_grad=True)
    l1 = torch.tensor(0.5, requires_grad=True)
    l2 = torch.tensor(2.0, requires_grad=True)
    loss = lagrangian_loss(s, 0.6, l1, l2)
    assert loss.item() == pytest.approx(0.5 * -0.3 + 2.0 * 0.09)
    loss.backward()
    # Below target: ascending on lambda_1 makes it negative, which then pushes sparsity up.
    assert l1.grad.item() == pytest.approx(-0.3) and l2.grad.item() == pytest.approx(0.09)
    assert s.grad.item() == pytest.approx(0.5 + 2 * 2.0 * -0.3)


def test_logit_distillation_matches_hand_kl():
    torch.manual_seed(0)
    student = torch.randn(4, 3, dtype=torch.float64)
    teacher = torch.randn(4, 3, dtype=torch.float64)
    t = 2.0
    hand = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = sum(math.exp(v / t) for v in s_row)
        zt = sum(math.exp(v / t) for v in t_row)
        for sv, tv in zip(s_row, t_row):
            p, q = math.exp(tv / t) / zt, math.exp(sv / t) / zs
            hand += p * (math.log(p) - math.log(q))
    hand = hand / 4 * t * t
    assert logit_distillation_loss(student, teacher, t).item() == pytest.approx(hand, rel=1e-10)
    assert logit_distillation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-12)


def test_lambda_arp2_matches_brute_force_with_padding_and_ties():
    torch.manual_seed(0)
    scores = torch.randn(3, 6, dtype=torch.float64)
    scores[1, 2] = scores[1, 4]  # a score tie
    relevance = torch.tensor([[3, 0, 2, 2, 1, 5], [1, 1, 0, 4, 2, 2], [0, 1, 2, 3, 9, 9]])
    n = torch.tensor([6, 4, 3])
    got = lambda_arp2_loss(scores, relevance, n, sigma=1.5)
    for b in range(3):
        hand = _arp2_brute_force(scores[b].tolist(), relevance[b].tolist(), int(n[b]), sigma=1.5)
        assert got[b].item() == pytest.approx(hand, rel=1e-10)


def test_lambda_arp2_matches_pytorchltr():
    pytorchltr_loss = pytest.importorskip("pytorchltr.loss")
    torch.manual_seed(0)
    for _ in range(5):
        scores = torch.randn(4, 7)
        relevance = torch.randint(0, 5, (4, 7))
        n = torch.tensor([7, 5, 1, 3])
        ours_in = scores.clone().requires_grad_(True)
        theirs_in = scores.clone().requires_grad_(True)
        ours = lambda_arp2_loss(ours_in, relevance, n)
        theirs = pytorchltr_loss.LambdaARPLoss2()(theirs_in, relevance, n)
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)
        ours.sum().backward()
        theirs.sum().backward()
        assert torch.allclose(ours_in.grad, theirs_in.grad, rtol=1e-4, atol=1e-5)


def _layers(teacher_like, count, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(teacher_like.shape, generator=gen, dtype=torch.float64) for _ in range(count)]


def test_rank_distillation_on_a_hand_worked_batch():
    # Row 0 has 4 real tokens, row 1 has 2; columns exclude [CLS]; topk 3.
    teacher = torch.tensor([[0.1, 0.4, 0.3, 0.2, 0.0], [0.6, 0.4, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    student = torch.tensor([[0.5, 0.2, 0.9, 0.1, 0.7], [0.3, 0.8, 0.4, 0.6, 0.2]], dtype=torch.float64)
    loss = rank_distillation_loss([student], teacher, mask, topk=3, layers=[0])
    # Row 0: teacher ranks (0.4, 0.3, 0.2) -> relevance 4, 3, 2 at columns 1, 2, 3; shifted by the
    # minimum to 2, 1, 0, and, having one zero, lifted to 3, 2, 1.
    row0 = _arp2_brute_force([0.2, 0.9, 0.1], [3, 2, 1], 3)
    # Row 1: relevance 2, 1, 0 (the third a padding column: its score is zeroed), lifted to 3, 2, 1.
    row1 = _arp2_brute_force([0.3, 0.8, 0.0], [3, 2, 1], 3)
    assert loss.item() == pytest.approx((row0 + row1) / 2 / 9, rel=1e-10)


def test_rank_distillation_with_several_padding_columns_keeps_zero_relevance():
    teacher = torch.tensor([[0.5, 0.3, 0.2, 0.1], [0.9, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    student = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.5, 0.6, 0.8]], dtype=torch.float64)
    loss = rank_distillation_loss([student], teacher, mask, topk=3, layers=[0])
    row0 = _arp2_brute_force([0.1, 0.2, 0.3], [3, 2, 1], 3)
    # Row 1: relevance 1, 0, -1 -> clamped 1, 0, 0: two zeros, so no shift and no lift.
    row1 = _arp2_brute_force([0.7, 0.0, 0.0], [1, 0, 0], 3)
    assert loss.item() == pytest.approx((row0 + row1) / 2 / 9, rel=1e-10)


def test_rank_distillation_default_layers_and_gradients():
    torch.manual_seed(0)
    teacher = torch.rand(3, 8, dtype=torch.float64)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 5:] = 0
    students = [s.requires_grad_(True) for s in _layers(teacher, 12, seed=1)]
    loss = rank_distillation_loss(students, teacher, mask, topk=4)
    expected = sum(rank_distillation_loss(students, teacher, mask, topk=4, layers=[i]) for i in (1, 2, 3))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    loss.backward()
    assert all(students[i].grad is not None and students[i].grad.abs().sum() > 0 for i in (1, 2, 3))
    assert all(students[i].grad is None for i in (0, 4, 11))


def test_rank_distillation_prefers_the_teacher_order():
    torch.manual_seed(0)
    teacher = torch.rand(4, 10, dtype=torch.float64)
    mask = torch.ones(4, 10, dtype=torch.long)
    same = rank_distillation_loss([teacher.clone()], teacher, mask, topk=5, layers=[0])
    reversed_order = rank_distillation_loss([-teacher], teacher, mask, topk=5, layers=[0])
    assert same.item() < reversed_order.item()


def test_rank_distillation_rejects_bad_topk():
    with pytest.raises(UserError):
        rank_distillation_loss([torch.rand(1, 3)], torch.rand(1, 3), torch.ones(1, 3), topk=0, layers=[0])
