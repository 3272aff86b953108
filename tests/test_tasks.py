"""Fine-tuning heads: shapes, losses (values, and that they fall when overfitting), inference, bad input."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from text4point.geometry import box_iou_3d, nms_3d
from text4point.labels import IGNORE_LABEL, SCANNET20
from text4point.models import BACKBONES, build_backbone
from text4point.tasks._base import seed_values
from text4point.tasks.det import DetectionHead, DetectionOutput
from text4point.tasks.insseg import InstanceHead
from text4point.tasks.semseg import SemanticHead

K = len(SCANNET20.classes)
CHAIR, TABLE, WALL = SCANNET20.index("chair"), SCANNET20.index("table"), SCANNET20.index("wall")
SIZES = (60, 40)  # two clouds, packed PyG-style


pytestmark = pytest.mark.usefixtures("one_thread")


def packed(dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(SIZES)
    z = torch.randn(n, dim, generator=g)
    pos = torch.rand(n, 3, generator=g) * 2
    batch = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(SIZES)])
    labels = torch.randint(0, K, (n,), generator=g)
    labels[::7] = IGNORE_LABEL
    # three instances per cloud (ids restart in each cloud), the rest without one
    instances = torch.cat([torch.randint(0, 4, (s,), generator=g) for s in SIZES])
    return z, pos, batch, labels, instances


# ---------------------------------------------------------------- semantic


def test_semantic_shapes_and_loss_value():
    z, _, _, labels, _ = packed()
    torch.manual_seed(0)
    head = SemanticHead(16, K)
    logits = head(z)
    assert logits.shape == (len(z), K)
    loss = head.loss(logits, labels)
    keep = labels != IGNORE_LABEL
    expected = -torch.log_softmax(logits[keep], 1).gather(1, labels[keep, None]).mean()
    assert torch.isfinite(loss) and torch.allclose(loss, expected)
    # every point ignored: zero, and still differentiable
    none = head.loss(logits, torch.full_like(labels, IGNORE_LABEL))
    none.backward()
    assert none.item() == 0.0
    assert torch.equal(SemanticHead.predict(logits), logits.argmax(1))
    assert SemanticHead(16, K, hidden_dim=8)(z).shape == (len(z), K)


def test_semantic_overfits():
    z, _, _, labels, _ = packed()
    torch.manual_seed(0)
    head = SemanticHead(16, K)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        loss = head.loss(head(z), labels)
        opt.zero_grad(), loss.backward(), opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_semantic_bad_input():
    z, _, _, labels, _ = packed()
    head = SemanticHead(16, K)
    logits = head(z)
    with pytest.raises(ValueError, match=r"^labels: expected an integer tensor of shape \[100\]"):
        head.loss(logits, labels[:-1])
    bad = labels.clone()
    bad[3] = K  # out of range, and not the ignore label
    with pytest.raises(ValueError, match=rf"^labels: expected class ids in \[0, {K}\) or 255.*got {K}$"):
        head.loss(logits, bad)
    bad[3] = -1
    with pytest.raises(ValueError, match="labels: expected class ids"):
        head.loss(logits, bad)
    with pytest.raises(ValueError, match="labels: expected an integer tensor"):
        head.loss(logits, labels.float())
    with pytest.raises(ValueError, match=r"^z: expected a tensor of shape \[N, 16\], got \[100, 8\]$"):
        head(z[:, :8])
    with pytest.raises(ValueError, match=r"^logits: expected a tensor of shape \[N, 20\]"):
        head.loss(logits[:, :5], labels)


# ---------------------------------------------------------------- instance


def perfect_offsets(pos, batch, instances):
    off = torch.zeros_like(pos)
    for b in batch.unique():
        for i in instances[batch == b].unique():
            if i > 0:
                m = (batch == b) & (instances == i)
                off[m] = pos[m].mean(0) - pos[m]
    return off


def test_instance_shapes_and_loss_values():
    z, pos, batch, labels, instances = packed()
    torch.manual_seed(0)
    head = InstanceHead(16, K, hidden_dim=8)
    out = head(z)
    assert out.sem_logits.shape == (len(z), K) and out.offsets.shape == (len(z), 3)
    losses = head.loss(pos, batch, out.sem_logits, out.offsets, labels, instances)
    assert set(losses) == {"loss", "semantic", "offset_l1", "offset_dir"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert torch.allclose(losses["loss"], losses["semantic"] + losses["offset_l1"] + losses["offset_dir"])
    # perfect offsets (to the mean of each instance's points, per cloud): L1 0 and cosine -1; the offsets of
    # points without an instance do not count
    off = perfect_offsets(pos, batch, instances)
    off[instances == 0] = torch.randn(int((instances == 0).sum()), 3)
    perfect = head.loss(pos, batch, out.sem_logits, off, labels, instances)
    assert perfect["offset_l1"].item() < 1e-5
    assert perfect["offset_dir"].item() == pytest.approx(-1.0, abs=1e-5)
    # instance ids are per cloud: the same id in two clouds is two instances
    merged = head.loss(pos, torch.zeros_like(batch), out.sem_logits, off, labels, instances)
    assert merged["offset_l1"].item() > 0.1
    # one unit off along x on every instance point: L1 1 per point
    shifted = head.loss(pos, batch, out.sem_logits, off + torch.tensor([1.0, 0.0, 0.0]), labels, instances)
    assert shifted["offset_l1"].item() == pytest.approx(1.0, abs=1e-5)
    # no instance at all: offset terms are 0
    none = head.loss(pos, batch, out.sem_logits, out.offsets, labels, torch.zeros_like(instances))
    assert none["offset_l1"].item() == 0.0 and none["offset_dir"].item() == 0.0
    none["loss"].backward()


def test_instance_overfits():
    z, pos, batch, labels, instances = packed()
    torch.manual_seed(0)
    head = InstanceHead(16, K, hidden_dim=32)
    opt = torch.optim.Adam(head.parameters(), lr=0.02)
    first = last = None
    for _ in range(30):
        out = head(z)
        losses = head.loss(pos, batch, out.sem_logits, out.offsets, labels, instances)
        opt.zero_grad(), losses["loss"].backward(), opt.step()
        first = first or {k: v.item() for k, v in losses.items()}
        last = {k: v.item() for k, v in losses.items()}
    assert last["semantic"] < 0.5 * first["semantic"]
    assert last["offset_l1"] < 0.6 * first["offset_l1"]
    assert last["offset_dir"] < first["offset_dir"] - 0.3
    assert last["loss"] < first["loss"] - 1.0


def blob(centre, n, g, spread=0.2):
    return torch.tensor(centre) + (torch.rand(n, 3, generator=g) - 0.5) * spread


def test_instance_predict_clusters_shifted_points():
    g = torch.Generator().manual_seed(1)
    # cloud 0: chairs A (30 points) and B (25) 3 m apart, a small chair C (5), a wall (40, a stuff class),
    # shuffled; cloud 1: one table (15 points). Every offset points exactly at its blob's centre.
    parts = [(blob((0, 0, 0), 30, g), CHAIR, 1), (blob((3, 0, 0), 25, g), CHAIR, 2),
             (blob((0, 3, 0), 5, g), CHAIR, 3), (blob((1.5, 0, 0), 40, g, spread=2.0), WALL, 4)]
    pos0 = torch.cat([p for p, _, _ in parts])
    sem0 = torch.cat([torch.full((len(p),), c) for p, c, _ in parts])
    inst0 = torch.cat([torch.full((len(p),), i) for p, _, i in parts])
    perm = torch.randperm(len(pos0), generator=g)
    pos0, sem0, inst0 = pos0[perm], sem0[perm], inst0[perm]
    pos1 = blob((1, 1, 1), 15, g)
    pos = torch.cat([pos0, pos1])
    batch = torch.cat([torch.zeros(len(pos0), dtype=torch.long), torch.ones(15, dtype=torch.long)])
    sem = torch.cat([sem0, torch.full((15,), TABLE)])
    inst = torch.cat([inst0, torch.ones(15, dtype=torch.long)])
    offsets = perfect_offsets(pos, batch, inst)
    logits = torch.zeros(len(pos), K)
    logits[torch.arange(len(pos)), sem] = 2.0  # P(class) = e² / (e² + 19)
    p = math.exp(2) / (math.exp(2) + K - 1)

    head = InstanceHead(8, K)
    preds = head.predict(pos, batch, logits, offsets, SCANNET20.thing_ids, radius=0.05, min_points=10)
    assert len(preds) == 2
    c0 = preds[0]
    assert c0["classes"].tolist() == [CHAIR, CHAIR]
    np.testing.assert_allclose(c0["scores"], [p, p], rtol=1e-6)
    got = sorted(m.tolist() for m in c0["masks"])
    want = sorted(torch.nonzero(inst0 == i).view(-1).tolist() for i in (1, 2))
    assert got == want  # exact point sets (indices within cloud 0); the wall and the 5-point chair give none
    assert preds[1]["classes"].tolist() == [TABLE]
    assert preds[1]["masks"][0].tolist() == list(range(15))  # indices within cloud 1, not global
    # the small chair comes back once min_points allows it; the wall (a stuff class) never does
    small = head.predict(pos, batch, logits, offsets, SCANNET20.thing_ids, radius=0.05, min_points=5)[0]
    assert sorted(len(m) for m in small["masks"]) == [5, 25, 30]
    assert head.predict(pos, batch, logits, offsets, SCANNET20.thing_ids, radius=0.05, min_points=6,
                        num_clouds=3)[2]["masks"] == []
    # without offsets the chairs (0.2 m wide, points ~5 cm apart) fall apart at a 1 cm radius
    raw = head.predict(pos, batch, logits, torch.zeros_like(pos), SCANNET20.thing_ids, radius=0.01, min_points=10)
    assert raw[0]["masks"] == []
    # one higher-confidence point raises its cluster's mean score
    logits2 = logits.clone()
    a0 = torch.nonzero(inst0 == 1).view(-1)[0]
    logits2[a0, CHAIR] = 50.0
    s = head.predict(pos, batch, logits2, offsets, SCANNET20.thing_ids, radius=0.05, min_points=10)[0]
    assert s["scores"][0] == pytest.approx((29 * p + 1.0) / 30, rel=1e-6)
    assert a0.item() in s["masks"][0].tolist()  # highest score first


def test_instance_bad_input():
    z, pos, batch, labels, instances = packed()
    head = InstanceHead(16, K)
    out = head(z)
    with pytest.raises(ValueError, match=r"^offsets: expected a tensor of shape \[100, 3\], got \[99, 3\]$"):
        head.loss(pos, batch, out.sem_logits, out.offsets[:-1], labels, instances)
    with pytest.raises(ValueError, match=r"^instances: expected an integer tensor of shape \[100\]"):
        head.loss(pos, batch, out.sem_logits, out.offsets, labels, instances[:50])
    bad = labels.clone()
    bad[0] = 300
    with pytest.raises(ValueError, match=r"^labels: expected class ids in \[0, 20\) or 255 \(ignored\), got 300$"):
        head.loss(pos, batch, out.sem_logits, out.offsets, bad, instances)
    with pytest.raises(ValueError, match=r"^batch: expected an integer tensor of shape \[100\]"):
        head.loss(pos, batch[:10], out.sem_logits, out.offsets, labels, instances)
    with pytest.raises(ValueError, match=r"^thing_ids: expected class ids in \[0, 20\)"):
        head.predict(pos, batch, out.sem_logits, out.offsets, [2, 20])
    with pytest.raises(ValueError, match="^radius: expected a positive distance"):
        head.predict(pos, batch, out.sem_logits, out.offsets, [2], radius=0.0)
    with pytest.raises(ValueError, match=r"^sem_logits: expected a tensor of shape \[100, 20\]"):
        head.predict(pos, batch, out.sem_logits[:-2], out.offsets, [2])


# ---------------------------------------------------------------- detection

BOX_SIZE = (0.6, 0.8, 1.0)
CENTRES = ([(0.5, 0.5, 0.5), (2.0, 1.5, 0.5)], [(1.0, 1.0, 0.5)])


def det_scene(background=16, seed=0):
    """Seeds of two clouds: 20 inside each GT box (instance ids 1, 2, ...) and some on the floor below (0)."""
    g = torch.Generator().manual_seed(seed)
    poss, batches, insts, gts = [], [], [], []
    for b, centres in enumerate(CENTRES):
        for i, c in enumerate(centres):
            poss.append(blob(c, 20, g, spread=torch.tensor(BOX_SIZE)))
            insts.append(torch.full((20,), i + 1))
        poss.append(torch.rand(background, 3, generator=g) * torch.tensor([3.0, 3.0, 0.0]) - torch.tensor([0, 0, 0.1]))
        insts.append(torch.zeros(background, dtype=torch.long))
        batches.append(torch.full((20 * len(centres) + background,), b))
        gts.append({"centers": torch.tensor(centres), "sizes": torch.tensor([BOX_SIZE] * len(centres)),
                    "classes": torch.arange(len(centres)) + 1, "instances": torch.arange(len(centres)) + 1})
    pos, batch, inst = torch.cat(poss), torch.cat(batches), torch.cat(insts)
    return torch.randn(len(pos), 16, generator=g), pos, batch, inst, gts


def test_detection_shapes_and_losses():
    feat, pos, batch, inst, gts = det_scene()
    torch.manual_seed(0)
    head = DetectionHead(16, 5, num_proposals=8, hidden_dim=32)
    out = head(feat, pos, batch)
    assert out.proposal_pos.shape == (16, 3) and out.proposal_batch.tolist() == [0] * 8 + [1] * 8
    assert out.objectness_logits.shape == (16, 2) and out.class_logits.shape == (16, 5)
    assert out.center.shape == out.log_size.shape == (16, 3) and out.boxes.shape == (16, 6)
    assert out.vote_pos.shape == pos.shape and out.vote_feat.shape == feat.shape
    assert torch.allclose(out.vote_feat.norm(dim=1), torch.ones(len(feat)))
    losses = head.loss(out, gts, inst)
    assert {"loss", "vote", "objectness", "center", "size", "class"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    # the vote loss, by hand: mean L1 between vote and box centre over the 60 seeds in an object
    centres = torch.cat([g["centers"] for g in gts])
    box = {(0, 1): 0, (0, 2): 1, (1, 1): 2}
    m = inst > 0
    target = centres[[box[(int(b), int(i))] for b, i in zip(batch[m], inst[m])]]
    assert torch.allclose(losses["vote"], (out.vote_pos[m] - target).abs().sum(1).mean())
    # the geometric assignment (seed inside a box) gives the same targets here
    assert torch.allclose(head.loss(out, gts)["vote"], losses["vote"])
    # fewer seeds than num_proposals in a cloud: all of them are proposals
    few = DetectionHead(16, 5, num_proposals=50, hidden_dim=32)(feat, pos, batch)
    assert torch.bincount(few.proposal_batch).tolist() == [50, 36]  # the clouds have 56 and 36 seeds
    # a cloud without GT: every proposal of it is negative
    empty = [gts[0], {"centers": torch.zeros(0, 3), "sizes": torch.zeros(0, 3),
                      "classes": torch.zeros(0, dtype=torch.long), "instances": torch.zeros(0, dtype=torch.long)}]
    assert all(torch.isfinite(v) for v in head.loss(out, empty, inst).values())


def test_detection_overfits():
    feat, pos, batch, inst, gts = det_scene()
    torch.manual_seed(0)
    # wide objectness thresholds: the proposals of this tiny scene stay positive while it trains
    head = DetectionHead(16, 5, num_proposals=8, hidden_dim=32, near_threshold=1.0, far_threshold=2.0)
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    first = last = None
    for _ in range(30):
        losses = head.loss(head(feat, pos, batch), gts, inst)
        opt.zero_grad(), losses["loss"].backward(), opt.step()
        first = first or {k: v.item() for k, v in losses.items()}
        last = {k: v.item() for k, v in losses.items()}
    assert last["loss"] < 0.5 * first["loss"]
    assert last["vote"] < 0.6 * first["vote"]
    assert last["size"] < 0.5 * first["size"]


def fixed_box_head(log_size, cls, num_classes=5, **kw):
    """A head whose box MLP ignores its input: objectness 'object', no centre residual, fixed size and class."""
    torch.manual_seed(0)
    head = DetectionHead(16, num_classes, hidden_dim=32, **kw).eval()
    last = head.proposal_mlp.lins[-1]
    with torch.no_grad():
        last.weight.zero_()
        bias = torch.zeros(8 + num_classes)
        bias[:2] = torch.tensor([-4.0, 4.0])
        bias[5:8] = torch.tensor(log_size)
        bias[8 + cls] = 6.0
        last.bias.copy_(bias)
    return head


def test_detection_predict_with_perfect_votes():
    feat, pos, batch, inst, gts = det_scene(background=0)
    centres = torch.cat([g["centers"] for g in gts])
    box = torch.tensor([0] * 20 + [1] * 20 + [2] * 20)
    head = fixed_box_head(np.log(BOX_SIZE), cls=2, num_proposals=8)
    votes = centres[box]  # every seed votes exactly for its object's centre
    out = head.propose(votes, F.normalize(feat, dim=1), batch)
    preds = head.predict(out, iou_threshold=0.25)
    # 8 proposals per cloud, duplicates suppressed; each survivor reported once per class (5)
    assert [len(p["boxes"]) for p in preds] == [2 * 5, 1 * 5]
    obj = 1 / (1 + math.exp(-8.0))
    cls = math.exp(6.0) / (math.exp(6.0) + 4)
    for p, g in zip(preds, gts):
        gt = np.concatenate([g["centers"].numpy(), g["sizes"].numpy()], 1)
        top = p["classes"] == 2
        assert top[:len(gt)].all() and top.sum() == len(gt)  # the confident class ranks first
        iou = box_iou_3d(p["boxes"][top], gt)
        assert (iou.max(0) > 0.99).all() and (iou.max(1) > 0.99).all()
        np.testing.assert_allclose(p["scores"][top], obj * cls, rtol=1e-5)
        np.testing.assert_allclose(p["scores"][~top], obj * (1 - cls) / 4, rtol=1e-5)
    # the loss of these perfect votes and boxes: vote, centre and size 0
    out.seed_pos = pos
    losses = head.loss(out, gts, inst)
    assert losses["vote"].item() == 0.0 and losses["center"].item() < 1e-6 and losses["size"].item() < 1e-6
    assert int(losses["positives"]) == 16
    # the objectness threshold drops every proposal below it (P(object) = 0.99966 here)
    assert all(len(p["boxes"]) == 0 for p in head.predict(out, score_threshold=0.9997))
    assert all(len(p["boxes"]) > 0 for p in head.predict(out, score_threshold=0.9996))


def hand_output(boxes, obj, cls_logits, batch=None):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    p = len(boxes)
    return DetectionOutput(proposal_pos=boxes[:, :3], proposal_batch=torch.zeros(p, dtype=torch.long)
                           if batch is None else torch.tensor(batch), objectness_logits=torch.stack(
                               [torch.zeros(p), torch.tensor(obj, dtype=torch.float32)], 1),
                           center=boxes[:, :3], log_size=boxes[:, 3:].log(),
                           class_logits=torch.tensor(cls_logits, dtype=torch.float32))


def test_nms_removes_lower_scoring_duplicate():
    # A, a shifted copy of A with a lower objectness, and a far box B
    boxes = [[0, 0, 0, 1, 1, 1], [0.1, 0, 0, 1, 1, 1], [3, 0, 0, 1, 1, 1]]
    head = DetectionHead(16, 3, hidden_dim=8)
    out = hand_output(boxes, [5.0, 2.0, 3.0], [[5, 0, 0], [5, 0, 0], [5, 0, 0]])
    p = head.predict(out, iou_threshold=0.25)[0]
    first = p["classes"] == 0  # every proposal's class 0 copy, in objectness order
    np.testing.assert_allclose(p["boxes"][first], np.asarray(boxes, dtype=float)[[0, 2]], atol=1e-6)
    assert len(p["boxes"]) == 2 * 3 and bool(np.all(np.diff(p["scores"]) <= 0))
    # the score of each copy is P(object) · P(class)
    o = 1 / (1 + np.exp(-np.array([5.0, 3.0])))
    q = np.exp([5.0, 0, 0]) / np.exp([5.0, 0, 0]).sum()
    np.testing.assert_allclose(np.sort(p["scores"]), np.sort((o[:, None] * q[None]).reshape(-1)), rtol=1e-6)
    # a higher threshold than their IoU (0.9 / 1.1 = 0.82) keeps the duplicate
    assert len(head.predict(out, iou_threshold=0.9)[0]["boxes"]) == 3 * 3
    # class-aware NMS (default) keeps a duplicate of another arg-max class; class-agnostic removes it
    other = hand_output(boxes, [5.0, 2.0, 3.0], [[5, 0, 0], [0, 5, 0], [5, 0, 0]])
    assert len(head.predict(other)[0]["boxes"]) == 3 * 3
    assert len(head.predict(other, class_aware=False)[0]["boxes"]) == 2 * 3
    # the objectness threshold acts after NMS: the suppressed duplicate does not come back
    assert len(head.predict(out, score_threshold=0.96)[0]["boxes"]) == 1 * 3
    # per cloud: the same box in two clouds is kept in both
    two = hand_output(boxes[:2], [5.0, 2.0], [[5, 0, 0], [5, 0, 0]], batch=[0, 1])
    assert [len(p["boxes"]) for p in head.predict(two)] == [3, 3]
    assert nms_3d(np.asarray(boxes, float), np.array([0.9, 0.5, 0.7]), 0.25).tolist() == [0, 2]


def test_detection_bad_input():
    feat, pos, batch, inst, gts = det_scene()
    head = DetectionHead(16, 5, num_proposals=8, hidden_dim=32)
    with pytest.raises(ValueError, match=r"^seed_pos: expected a tensor of shape \[92, 3\], got \[91, 3\]$"):
        head(feat, pos[:-1], batch)
    with pytest.raises(ValueError, match=r"^seed_feat: expected a tensor of shape \[N, 16\]"):
        head(feat[:, :4], pos, batch)
    with pytest.raises(ValueError, match="^seed_batch: expected a sorted batch vector"):
        head(feat, pos, batch.flip(0))
    out = head(feat, pos, batch)
    with pytest.raises(ValueError, match=r"^gt_boxes: expected one entry per cloud \(2\), got 1$"):
        head.loss(out, gts[:1], inst)
    bad = [gts[0], dict(gts[1], classes=torch.tensor([5]))]
    with pytest.raises(ValueError, match=r"^gt_boxes\[1\]\['classes'\]: expected class ids in \[0, 5\)"):
        head.loss(out, bad, inst)
    bad = [gts[0], dict(gts[1], sizes=torch.ones(2, 3))]
    with pytest.raises(ValueError, match=r"^gt_boxes\[1\]\['sizes'\]: expected shape \[1, 3\], got \[2, 3\]$"):
        head.loss(out, bad, inst)
    with pytest.raises(ValueError, match=r"^gt_boxes\[0\]: expected a mapping with keys"):
        head.loss(out, [{"centers": torch.zeros(1, 3)}, gts[1]], inst)
    with pytest.raises(ValueError, match=r"^seed_instances: expected an integer tensor of shape \[92\]"):
        head.loss(out, gts, inst[:5])


# ---------------------------------------------------------------- on the backbones


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_heads_on_backbone(name):
    """The three heads plug on a backbone's outputs; their losses reach the backbone's parameters."""
    g = torch.Generator().manual_seed(0)
    sizes = (200, 150)
    n = sum(sizes)
    pos = torch.rand(n, 3, generator=g) * torch.tensor([2.0, 2.0, 1.0])
    x = torch.rand(n, 3, generator=g)
    batch = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(sizes)])
    labels = torch.randint(0, K, (n,), generator=g)
    instances = (pos[:, 0] > 1).long() + 1
    torch.manual_seed(0)
    backbone = build_backbone(name, in_channels=3, width=8, bottleneck_dim=16, out_dim=16)
    out = backbone(x, pos, batch)
    sem = SemanticHead(16, K)
    ins = InstanceHead(16, K)
    enc = out.encoded
    det = DetectionHead(enc.xs[1].size(1), K, num_proposals=4, hidden_dim=16)
    io = ins(out.z)
    dout = det(enc.xs[1], enc.poss[1], enc.batches[1])
    seed_inst = seed_values(instances, pos, batch, enc.poss[1], enc.batches[1])
    assert seed_inst.shape == (enc.poss[1].size(0),)
    gts = [{"centers": [[0.5, 1.0, 0.5], [1.5, 1.0, 0.5]], "sizes": [[1.0, 2.0, 1.0]] * 2, "classes": [CHAIR, TABLE],
            "instances": [1, 2]} for _ in sizes]
    total = (sem.loss(sem(out.z), labels)
             + ins.loss(pos, batch, io.sem_logits, io.offsets, labels, instances)["loss"]
             + det.loss(dout, gts, seed_inst)["loss"])
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert grads and any(float(gr.abs().sum()) > 0 for gr in grads)
    preds = ins.predict(pos, batch, io.sem_logits, io.offsets, SCANNET20.thing_ids, min_points=1)
    boxes = det.predict(dout)
    assert len(preds) == len(boxes) == 2
