"""Quick experiment (issue 13; results/experiments/dense_teacher.md): the bootstrap's crop term and an LSeg-style dense
term through a CNN+ViT dense head on the clip split, dense zero-shot on val. Not part of the pipeline; run from the
repository root with the project's venv after the world exists (data/world, or the dataset given by --data)."""
import sys, time, math, json, argparse
from pathlib import Path
REPO = Path(__file__).resolve().parents[2]
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, str(REPO / "src"))
from open_clip.loss import ClipLoss
from text4point.scene import Dataset, FrameDefect
from text4point.clip.load import build_model, wrap_model, normalize_images
from text4point.clip.crops import collect_crops, caption, color_name, EXTRA_TEMPLATES, cell_classes
from text4point.clip.dense import _vit_dense, template_mean, decode_color
from text4point.clip.bootstrap import _augment, _param_groups, STORE_SCALE, BALANCE_POWER
from text4point.training import warmup_cosine

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=300)
p.add_argument("--frames", type=int, default=8)
p.add_argument("--crop-bs", type=int, default=64)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--width", type=int, default=64)
p.add_argument("--no-vit", action="store_true")
p.add_argument("--size", type=int, nargs=2, default=[120, 160])
p.add_argument("--dense-weight", type=float, default=1.0)
p.add_argument("--cw", type=float, default=0.5)
p.add_argument("--eval-every", type=int, default=0)
p.add_argument("--hue", type=float, default=0.0)
p.add_argument("--gray", type=float, default=0.0)
p.add_argument("--zoom", type=float, default=1.0)
p.add_argument("--plain", action="store_true")
p.add_argument("--deep", action="store_true")
p.add_argument("--data", default=str(REPO / "data" / "world"))
a = p.parse_args()
torch.manual_seed(0); torch.set_num_threads(int(__import__("os").environ.get("T", "2")))
root = str(Path(a.data).resolve())
ds = Dataset(root); ls = ds.label_set; K = len(ls.classes)
model = build_model("t4p-tiny")
base = wrap_model(model, "t4p-tiny", {"model": "t4p-tiny"}, "cpu", freeze=False)
H, W = a.size; S = 4; gh, gw = H // S, W // S
bcfg = {"min_crop_pixels": 300, "max_crops_per_frame": 8, "workers": 2}
t = time.time()
tr = collect_crops(root, "clip", ls, 64, bcfg, 0, train=True, dense={"size": (H, W), "grid": (gh, gw)})
va = collect_crops(root, "val", ls, 48, bcfg, 0, train=False)
print("collect", time.time() - t, tr["frame_images"].shape, flush=True)

def bn(c): return nn.BatchNorm2d(c)
def cbr(i, o, s=1): return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), bn(o), nn.ReLU(inplace=True))
class Head(nn.Module):
    def __init__(s, tok, emb, w):
        super().__init__()
        s.s2 = nn.Sequential(cbr(3, w // 2, 2), cbr(w // 2, w // 2))
        s.s4 = nn.Sequential(cbr(w // 2, w, 2), cbr(w, w))
        s.s8 = nn.Sequential(cbr(w, 2 * w, 2), cbr(2 * w, 2 * w))
        s.tok = nn.Sequential(nn.Conv2d(tok, 2 * w, 1, bias=False), bn(2 * w), nn.ReLU(inplace=True))
        s.f8 = cbr(4 * w if not a.no_vit else 2 * w, 2 * w)
        if a.deep:
            s.s16 = nn.Sequential(cbr(2 * w, 4 * w, 2), cbr(4 * w, 4 * w), cbr(4 * w, 4 * w))
            s.s32 = nn.Sequential(cbr(4 * w, 4 * w, 2), cbr(4 * w, 4 * w))
            s.u16 = cbr(8 * w, 2 * w)
            s.u8 = cbr(4 * w, 2 * w)
        s.f4 = nn.Sequential(cbr(3 * w, w), nn.Conv2d(w, emb, 1))
    def forward(s, x, tokens):
        x4 = s.s4(s.s2(x)); x8 = s.s8(x4)
        if tokens is not None:
            t = s.tok(tokens.permute(0, 3, 1, 2))
            t = F.interpolate(t, size=x8.shape[-2:], mode="bilinear", align_corners=False)
            x8 = torch.cat([x8, t], 1)
        x8 = s.f8(x8)
        if a.deep:
            x16 = s.s16(x8); x32 = s.s32(x16)
            x16 = s.u16(torch.cat([x16, F.interpolate(x32, size=x16.shape[-2:], mode="bilinear", align_corners=False)], 1))
            x8 = s.u8(torch.cat([x8, F.interpolate(x16, size=x8.shape[-2:], mode="bilinear", align_corners=False)], 1))
        u = F.interpolate(x8, size=x4.shape[-2:], mode="bilinear", align_corners=False)
        return s.f4(torch.cat([x4, u], 1)).permute(0, 2, 3, 1)
head = Head(128, 128, a.width)
class Cos(nn.Module):
    def __init__(s):
        super().__init__(); s.w = nn.Parameter(torch.randn(K, 128) * 0.1)
    def forward(s, d): return model.logit_scale.exp() * F.normalize(d, dim=-1) @ F.normalize(s.w, dim=-1).T
plain = Cos()
if a.plain: head.plain = plain
print("head params", sum(p.numel() for p in head.parameters()))
params = _param_groups(model, 0.1) + [{"params": list(head.parameters()), "weight_decay": 1e-4}]
opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.98), eps=1e-6)
sched = warmup_cosine(a.lr, a.steps, a.steps // 10)
loss_fn = ClipLoss()
rng = np.random.default_rng(0); gen = torch.Generator().manual_seed(0)
templates = tuple(dict.fromkeys(["a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a photo of the {}.", "a rendering of a {}."] + list(EXTRA_TEMPLATES)))
crops = torch.from_numpy(tr["crops"]); classes = tr["classes"]; names = [color_name(c) for c in tr["colours"]]
cnt = np.bincount(classes, minlength=K).astype(float); wts = cnt[classes] ** -0.5; wts /= wts.sum()
fimg = torch.from_numpy(tr["frame_images"]); cells = torch.from_numpy(tr["cells"])
pix = cells.float().sum((0, 1, 2)); cwts = torch.where(pix > 0, pix.clamp_min(1e-6) ** -a.cw, torch.zeros(()))
cwts = cwts / (cwts * pix).sum() * pix.sum()
tok = base.tokenizer
mean, std = base.mean, base.std

def dense_out(x):
    tokens = None if a.no_vit else _vit_dense(model.visual, x)
    return head(x, tokens)

def evaluate(split="val", every=3, maxf=None):
    model.eval(); head.eval()
    with torch.no_grad():
        cl = template_mean(torch.stack([base.model.encode_text(tok([t.format(c) for t in templates[:5]]), normalize=True) for c in ls.classes]))
        conf = np.zeros((K, K), np.int64)
        n = 0
        for sid in ds.split(split):
            sc = ds.scene(sid)
            for f in sc.frame_ids[::every]:
                try:
                    col = decode_color(sc, f); sem = sc.label(f)
                except FrameDefect:
                    continue
                xi = torch.from_numpy(np.array(col)).permute(2, 0, 1)[None].float() / 255
                xi = F.interpolate(xi, size=(H, W), mode="bilinear", antialias=True, align_corners=False)
                d = F.normalize(dense_out(normalize_images(xi, mean, std)), dim=-1)[0]
                cp = (plain(d) if a.plain else d @ cl.T).argmax(-1).numpy()
                Hh, Ww = sem.shape
                r = np.minimum(((np.arange(Hh) + .5) * H / Hh / S).astype(int), gh - 1)
                c = np.minimum(((np.arange(Ww) + .5) * W / Ww / S).astype(int), gw - 1)
                pred = cp[r[:, None], c[None, :]]
                v = sem < K
                conf += np.bincount(sem[v].astype(int) * K + pred[v], minlength=K * K).reshape(K, K)
        tot, cor = conf.sum(1), np.diag(conf); un = tot + conf.sum(0) - cor; seen = un > 0
        res = (cor.sum() / tot.sum(), (cor[seen] / un[seen]).mean(), {ls.classes[c]: round(float(cor[c] / un[c]), 2) for c in range(K) if seen[c]})
    model.train(); head.train()
    return res
model.train(); head.train()
t0 = time.time()
for step in range(a.steps):
    for g in opt.param_groups: g["lr"] = sched(step)
    idx = rng.choice(len(crops), a.crop_bs, p=wts)
    x = normalize_images(_augment(crops[idx], 48, gen), mean, std)
    txt = [caption(rng, ls.classes[classes[i]], names[i], templates) for i in idx]
    lc = loss_fn(model.encode_image(x, normalize=True), model.encode_text(tok(txt), normalize=True), model.logit_scale.exp())
    fr = torch.as_tensor(rng.choice(len(fimg), a.frames, replace=False))
    xf = fimg[fr].permute(0, 3, 1, 2).float() / 255
    tg = cells[fr].float()
    if a.zoom < 1.0:  # random cell-aligned zoom-in crops (scale augmentation), resized back to the input size
        xs, ts = [], []
        for i in range(a.frames):
            sc = float(np.sqrt(rng.uniform(a.zoom, 1.0)))
            ch_, cw_ = max(2, round(gh * sc)), max(2, round(gw * sc))
            r0, c0 = rng.integers(0, gh - ch_ + 1), rng.integers(0, gw - cw_ + 1)
            xi = xf[i:i + 1, :, r0 * S:(r0 + ch_) * S, c0 * S:(c0 + cw_) * S]
            xs.append(F.interpolate(xi, size=(H, W), mode="bilinear", align_corners=False))
            ti = tg[i:i + 1, r0:r0 + ch_, c0:c0 + cw_].permute(0, 3, 1, 2)
            ts.append(F.interpolate(ti, size=(gh, gw), mode="bilinear", align_corners=False).permute(0, 2, 3, 1))
        xf, tg = torch.cat(xs), torch.cat(ts)
    flip = torch.rand(a.frames) < 0.5
    xf = torch.where(flip.view(-1, 1, 1, 1), xf.flip(-1), xf); tg = torch.where(flip.view(-1, 1, 1, 1), tg.flip(2), tg)
    # brightness/contrast jitter
    u = torch.rand(a.frames, 2)
    m = xf.mean((1, 2, 3), keepdim=True)
    xf = ((xf - m) * (1 + 0.15 * (2 * u[:, 0] - 1)).view(-1, 1, 1, 1) + m * (1 + 0.15 * (2 * u[:, 1] - 1)).view(-1, 1, 1, 1)).clamp(0, 1)
    if a.hue > 0:
        import torchvision.transforms.v2.functional as TF
        hs = (torch.rand(a.frames) * 2 - 1) * a.hue
        ss = 1 + (torch.rand(a.frames) * 2 - 1) * 0.5
        xf = torch.stack([TF.adjust_saturation(TF.adjust_hue(xf[i], float(hs[i])), float(ss[i])) for i in range(a.frames)])
    if a.gray > 0:
        g = (torch.rand(a.frames) < a.gray).view(-1, 1, 1, 1)
        xf = torch.where(g, xf.mean(1, keepdim=True).expand_as(xf), xf)
    d = F.normalize(dense_out(normalize_images(xf, mean, std)), dim=-1)
    if a.plain:
        logp = F.log_softmax(plain(d), -1)
    else:
        ct = model.encode_text(tok([caption(rng, c, None, templates) for c in ls.classes]), normalize=True)
        logp = F.log_softmax(model.logit_scale.exp() * d @ ct.T, -1)
    tg = tg * cwts
    ld = -(tg * logp).sum() / tg.sum().clamp_min(1e-6)
    loss = lc + a.dense_weight * ld
    opt.zero_grad(); loss.backward()
    torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()), 1.0)
    opt.step()
    with torch.no_grad(): model.logit_scale.clamp_(0, math.log(100))
    if step % 25 == 0 or step == a.steps - 1:
        if a.eval_every and step and step % a.eval_every == 0:
            v = evaluate(); t_ = evaluate("clip", every=10)
            print(f"EVAL step {step} val pixacc {v[0]:.3f} miou {v[1]:.3f} | clip-train pixacc {t_[0]:.3f} miou {t_[1]:.3f}", flush=True)
        print(f"step {step} crop {lc.item():.3f} dense {ld.item():.3f} scale {model.logit_scale.exp().item():.1f} {time.time()-t0:.0f}s", flush=True)
print("train s", time.time() - t0)
model.eval(); head.eval()
with torch.no_grad():
    cl = template_mean(torch.stack([base.model.encode_text(tok([t.format(c) for t in templates[:5]]), normalize=True) for c in ls.classes]))
    xc = torch.from_numpy(va["crops"]).permute(0, 3, 1, 2).float() / 255
    pr = (model.encode_image(normalize_images(xc, mean, std), normalize=True) @ cl.T).argmax(1).numpy()
    print("crop top1", (pr == va["classes"]).mean())
v = evaluate(); t_ = evaluate("clip", every=10)
print(f"FINAL val pixacc {v[0]:.3f} miou {v[1]:.3f} | clip-train pixacc {t_[0]:.3f} miou {t_[1]:.3f}")
print(v[2])
