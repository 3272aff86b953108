"""Model pieces of Text4Point: the 3D backbones (f3D/g3D), the TQM and the contrastive losses."""

import math

import pytest
import torch

from text4point.errors import InputError
from text4point.losses import info_nce
from text4point.models import BACKBONES, Backbone, BackboneOutput, Encoded, build_backbone
from text4point.tqm import Aggregation, FCExpand, TextQueryingModule

SIZES = (600, 900)  # two clouds of unequal size, packed PyG-style
D_PRIME, OUT = 24, 16


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cloud():
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    pos = torch.rand(n, 3, generator=g) * torch.tensor([2.0, 2.0, 1.0])
    x = torch.rand(n, 3, generator=g)  # rgb in [0, 1]
    batch = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(SIZES)])
    return x, pos, batch


def make(name: str, width: int = 8, **kw) -> Backbone:
    torch.manual_seed(0)
    return build_backbone(name, in_channels=3, width=width, bottleneck_dim=D_PRIME, out_dim=OUT, **kw)


# ---------------------------------------------------------------- backbones

@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_shapes(name, cloud):
    x, pos, batch = cloud
    model = make(name).eval()
    with torch.no_grad():
        out = model(x, pos, batch)
    assert isinstance(out, BackboneOutput)
    # three fps levels of ratio 0.25: ceil at each level, per cloud
    expected = []
    for s in SIZES:
        for _ in range(3):
            s = math.ceil(s * 0.25)
        expected.append(s)
    assert out.batch_b.tolist() == sum(([i] * s for i, s in enumerate(expected)), [])
    n_b = sum(expected)
    assert out.h.shape == (n_b, D_PRIME) and out.pos_b.shape == (n_b, 3)
    assert out.z.shape == (sum(SIZES), OUT)
    assert torch.isfinite(out.z).all() and torch.isfinite(out.h).all()
    # bottleneck points are input points of the same cloud
    same = (out.pos_b[:, None, :] == pos[None, :, :]).all(dim=2)  # [N_b, N]
    assert same.any(dim=1).all() and (batch[same.float().argmax(dim=1)] == out.batch_b).all()
    # each input point maps to a bottleneck point of its own cloud
    index = out.encoded.bottleneck_index()
    assert index.shape == (sum(SIZES),) and (out.batch_b[index] == batch).all()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_encode_decode_with_modified_bottleneck(name, cloud):
    x, pos, batch = cloud
    model = make(name).eval()
    with torch.no_grad():
        enc = model.encode(x, pos, batch)
        assert isinstance(enc, Encoded) and len(enc.xs) == 4
        z = model.decode(enc, enc.h)
        assert torch.equal(z, model(x, pos, batch).z)  # deterministic, and forward = decode(encode)
        # a modified bottleneck (as h3D_aggr would be) changes z3D, only in the cloud it touches
        h = enc.h.clone()
        h[enc.batch_b == 0] += torch.randn_like(h[enc.batch_b == 0])
        z2 = model.decode(enc, h)
    changed = (z2 - z).abs().amax(dim=1) > 1e-6
    assert changed[batch == 0].float().mean() > 0.9
    assert not changed[batch == 1].any()
    with pytest.raises(ValueError, match="bottleneck"):
        model.decode(enc, enc.h[:, :-1])


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_gradients_reach_every_parameter(name, cloud):
    x, pos, batch = cloud
    model = make(name).train()
    out = model(x, pos, batch)
    (out.z.square().mean() + out.h.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_two_widths_build_and_scale(name, cloud):
    x, pos, batch = cloud
    counts = []
    for width in (8, 16):
        model = make(name, width=width).eval()
        with torch.no_grad():
            assert model(x, pos, batch).z.shape == (sum(SIZES), OUT)
        counts.append(sum(p.numel() for p in model.parameters()))
    assert counts[1] > 1.5 * counts[0]


def test_batch_none_means_one_cloud(cloud):
    x, pos, _ = cloud
    model = make("pointnet2").eval()
    with torch.no_grad():
        out = model(x[:500], pos[:500])
    assert out.z.shape == (500, OUT) and (out.batch_b == 0).all()


def test_unknown_backbone_and_bad_radii_are_one_line_input_errors():
    with pytest.raises(InputError) as err:
        build_backbone("pointnet3", in_channels=3)
    msg = str(err.value)
    assert "\n" not in msg and "pointnet3" in msg and "point_transformer" in msg and "pointnet2" in msg
    with pytest.raises(InputError, match="radii"):
        build_backbone("pointnet2", in_channels=3, ratios=(0.25, 0.25), radii=(0.1,))


def test_wrong_input_channels_are_rejected(cloud):
    x, pos, batch = cloud
    with pytest.raises(ValueError, match="x: expected shape"):
        make("pointnet2").encode(torch.cat([x, x], dim=1), pos, batch)


# ---------------------------------------------------------------- TQM

def test_tqm_shapes_and_attention_rows():
    torch.manual_seed(0)
    tqm = TextQueryingModule(dim=32, heads=4).eval()
    q, text = torch.randn(50, 32), torch.randn(7, 32)
    h, attn = tqm(q, text)
    assert h.shape == (50, 32) and attn.shape == (50, 7)
    assert (attn >= 0).all() and torch.allclose(attn.sum(dim=1), torch.ones(50), atol=1e-5)
    hb, attnb = tqm(torch.stack([q, q + 1]), text)  # per-batch queries, shared text
    assert hb.shape == (2, 50, 32) and attnb.shape == (2, 50, 7)
    assert torch.allclose(hb[0], h, atol=1e-5)
    hb2, attnb2 = tqm(torch.stack([q, q]), torch.stack([text, text.flip(0)]))  # per-batch text
    assert torch.allclose(attnb2[1], attn.flip(1), atol=1e-5) and torch.allclose(hb2[1], h, atol=1e-5)


@pytest.mark.parametrize("heads", [1, 4])
def test_tqm_query_attends_to_its_own_text_embedding(heads):
    """With identity query/key projections, a point whose ĥ3D is a scaled copy of one text
    embedding t_j (plus noise) must put most of its attention on t_j, whatever the scale."""
    g = torch.Generator().manual_seed(1)
    d, k = 64, 10
    tqm = TextQueryingModule(dim=d, heads=heads).eval()
    with torch.no_grad():
        for lin, scale in ((tqm.to_q, 8.0), (tqm.to_k, 1.0)):
            lin.weight.copy_(scale * torch.eye(d))
            lin.bias.zero_()
    text = torch.randn(k, d, generator=g)
    target = torch.randint(0, k, (40,), generator=g)
    scales = torch.rand(40, 1, generator=g) * 20 + 0.5
    q = scales * (text[target] + 0.1 * torch.randn(40, d, generator=g))
    with torch.no_grad():
        _, attn = tqm(q, text)
    assert torch.equal(attn.argmax(dim=1), target)
    on_target = attn[torch.arange(40), target]
    assert on_target.mean() > 0.95 and on_target.min() > 0.75


def test_tqm_is_equivariant_to_the_order_of_text_and_independent_across_points():
    torch.manual_seed(0)
    tqm = TextQueryingModule(dim=32, heads=4).eval()
    q, text = torch.randn(20, 32), torch.randn(6, 32)
    perm = torch.randperm(6)
    with torch.no_grad():
        h, attn = tqm(q, text)
        h_p, attn_p = tqm(q, text[perm])
        h_q, _ = tqm(torch.cat([q[:10], torch.randn(10, 32)]), text)
        h_t, _ = tqm(q, text + torch.randn_like(text))
    assert torch.allclose(attn_p, attn[:, perm], atol=1e-6) and torch.allclose(h_p, h, atol=1e-5)
    assert torch.allclose(h_q[:10], h[:10], atol=1e-6)  # a point attends to text, not to other points
    assert not torch.allclose(h_t, h, atol=1e-3)        # the output depends on the text


def test_aggregation_learnable_and_fixed():
    h, ht = torch.randn(5, 8), torch.randn(5, 8)
    fixed = Aggregation(alpha=0.7, beta=0.3, learnable=False)
    assert list(fixed.parameters()) == []
    assert set(fixed.state_dict()) == {"alpha", "beta"}
    assert torch.allclose(fixed(h, ht), 0.7 * h + 0.3 * ht)

    learn = Aggregation(alpha=0.7, beta=0.3, learnable=True)
    assert {n for n, _ in learn.named_parameters()} == {"alpha", "beta"}
    learn(h, ht).sum().backward()
    assert torch.isclose(learn.alpha.grad, h.sum()) and torch.isclose(learn.beta.grad, ht.sum())
    with pytest.raises(ValueError):
        fixed(h, ht[:, :4])


def test_text4point_bottleneck_flow_through_a_backbone(cloud):
    """ĥ3D = FC(h3D) → TQM → FC → α·h3D + β·ĥ3D_text → g3D: shapes fit, gradients reach the TQM."""
    x, pos, batch = cloud
    d = 32
    model = make("pointnet2").train()
    fc_in, fc_out = FCExpand(D_PRIME, d), FCExpand(d, D_PRIME)
    tqm, aggr = TextQueryingModule(d, heads=4), Aggregation(1.0, 0.5, learnable=True)
    enc = model.encode(x, pos, batch)
    h_text, attn = tqm(fc_in(enc.h), torch.randn(5, d))
    z = model.decode(enc, aggr(enc.h, fc_out(h_text)))
    assert z.shape == (sum(SIZES), OUT) and attn.shape == (enc.h.size(0), 5)
    z.square().mean().backward()
    for module in (fc_in, fc_out, tqm, aggr):
        assert all(p.grad is not None for p in module.parameters())


# ---------------------------------------------------------------- losses

def _pairs(m=64, d=32, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, d, generator=g)
    return a, a + noise * torch.randn(m, d, generator=g), g


def test_info_nce_value_on_a_hand_example():
    e = torch.eye(2)
    assert torch.isclose(info_nce(e, e, 1.0), torch.tensor(math.log(1 + math.exp(-1))))
    assert info_nce(torch.randn(1, 4), torch.randn(1, 4), 0.1) == 0


def test_aligned_pairs_beat_shuffled_pairs_by_a_margin():
    a, b, g = _pairs()
    perm = torch.randperm(len(b), generator=g)
    aligned, shuffled = info_nce(a, b, 0.1), info_nce(a, b[perm], 0.1)
    assert torch.isfinite(aligned) and torch.isfinite(shuffled)
    assert shuffled - aligned > 3.0
    assert aligned < 0.1 * math.log(len(a))


def test_lower_temperature_widens_the_gap():
    a, b, g = _pairs(noise=0.5)
    perm = torch.randperm(len(b), generator=g)
    gaps = [info_nce(a, b[perm], t) - info_nce(a, b, t) for t in (0.5, 0.1, 0.05)]
    assert gaps[0] < gaps[1] < gaps[2]


def test_info_nce_is_symmetric_and_finite():
    a, b, _ = _pairs(noise=1.0)
    assert torch.isclose(info_nce(a, b, 0.07), info_nce(b, a, 0.07))
    one_way = info_nce(a, b, 0.07, symmetric=False), info_nce(b, a, 0.07, symmetric=False)
    assert torch.isclose(info_nce(a, b, 0.07), (one_way[0] + one_way[1]) / 2)
    assert not torch.isclose(one_way[0], one_way[1])
    # scale-free (features are L2-normalised inside), finite at extreme scales and a tiny τ
    assert torch.isclose(info_nce(1e4 * a, 1e-4 * b, 0.07), info_nce(a, b, 0.07), atol=1e-5)
    big = info_nce(1e30 * a, b, 1e-3)
    zero = info_nce(torch.zeros_like(a), b, 0.07)
    assert torch.isfinite(big) and torch.isfinite(zero)
    assert torch.isfinite(info_nce(a.half(), b.half(), 0.07))


def test_info_nce_gradients_and_duplicate_masking():
    a, b, _ = _pairs(m=8)
    a.requires_grad_(True), b.requires_grad_(True)
    info_nce(a, b, 0.1).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    # pixels of one patch share h2D: without ids they are false negatives of one another
    a2, b2 = a.detach().clone(), b.detach().clone()
    a2[1] = a2[0]
    b2[1] = b2[0]
    ids = torch.arange(8)
    ids[1] = 0
    # unmasked, rows/columns 0 and 1 each see their positive twice: ≈ log 2 on 4 of 16 terms
    assert info_nce(a2, b2, 0.1, ids_a=ids) < info_nce(a2, b2, 0.1) - 0.5 * math.log(2) * 4 / 16
    with pytest.raises(ValueError, match="temperature"):
        info_nce(a2, b2, 0.0)
    with pytest.raises(ValueError, match="equal shapes"):
        info_nce(a2, b2[:3], 0.1)


def test_cpu_fps_samples_each_cloud_like_torch_cluster_with_the_same_coverage():
    """The CPU sampler (fpsample) keeps torch_cluster's contract: ceil(n·ratio) indices per cloud, inside that
    cloud, deterministic, with the same max–min covering distance (greedy FPS quality)."""
    import torch_cluster

    from text4point.models.sampling import fps

    g = torch.Generator().manual_seed(0)
    pos = torch.rand(3001, 3, generator=g)
    batch = torch.cat([torch.zeros(1000, dtype=torch.long), torch.ones(2001, dtype=torch.long)])
    ours = fps(pos, batch, 0.25)
    ref = torch_cluster.fps(pos, batch, ratio=0.25, random_start=False)
    assert len(ours) == len(ref) == 250 + 501 and len(set(ours.tolist())) == len(ours)
    assert (batch[ours] == 0).sum() == 250 and bool((ours[:250] < 1000).all()) and bool((ours[250:] >= 1000).all())

    def cover(idx):  # largest distance from a point of the cloud to its nearest sample
        return max(float(torch.cdist(pos[batch == c], pos[idx[batch[idx] == c]]).min(1).values.max()) for c in (0, 1))

    assert cover(ours) == pytest.approx(cover(ref), rel=0.1)
    assert torch.equal(fps(pos, batch, 0.25), ours)  # deterministic
    assert torch.equal(fps(pos[:5], None, 1.0), torch.arange(5))
