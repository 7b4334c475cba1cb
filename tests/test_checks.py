"""Every exercise checker: the finished version passes, deliberately wrong versions fail with a
message that names the problem, and a stub's NotImplementedError is reported as such."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from ldm_mini import checks
from ldm_mini.autoencoder import DiagonalGaussianDistribution
from ldm_mini.checks import EXERCISES, ExerciseCheckFailed, ExerciseNotImplemented
from ldm_mini.diffusion import NoiseSchedule
from ldm_mini.inpainting import blend_step, inpainting_condition, latent_mask, paste
from ldm_mini.layouts import LayoutTokenizer, label_map_condition
from ldm_mini.ldm import slerp
from ldm_mini.losses import hinge_d_loss
from ldm_mini.superres.concat import unet_input
from ldm_mini.superres.degradations import gaussian_kernel, resize
from ldm_mini.unet import timestep_embedding


def _per_example(values, ndim):
    return rearrange(values, "b -> b" + " 1" * (ndim - 1))


# --- correct versions, written from the formulas (not by calling the package) -------------


def kl(mean, logvar):
    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))


def reparameterize(mean, logvar, eps):
    return mean + torch.exp(0.5 * logvar) * eps


def hinge(real, fake):
    return 0.5 * (torch.relu(1 - real).mean() + torch.relu(1 + fake).mean())


def nearest_codes(z, codebook):
    flat = rearrange(z, "b c h w -> (b h w) c")
    distances = torch.cdist(flat, codebook)
    return rearrange(distances.argmin(1), "(b h w) -> b h w", b=z.shape[0], h=z.shape[2])


def quantize(z, codebook, beta=0.25):
    z_q = rearrange(codebook[nearest_codes(z.detach(), codebook)], "b h w c -> b c h w")
    loss = F.mse_loss(z_q, z.detach()) + beta * F.mse_loss(z, z_q.detach())
    return z + (z_q - z).detach(), loss


def q_sample(x0, t, noise, alphas_cumprod):
    abar = _per_example(alphas_cumprod[t], x0.ndim).to(x0.dtype)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def x0_from_eps(x_t, t, eps, alphas_cumprod):
    abar = _per_example(alphas_cumprod[t], x_t.ndim).to(x_t.dtype)
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def v_target(x0, eps, t, alphas_cumprod):
    abar = _per_example(alphas_cumprod[t], x0.ndim).to(x0.dtype)
    return abar.sqrt() * eps - (1 - abar).sqrt() * x0


def ddpm_step(schedule, x_t, t, eps_hat, noise, variance="posterior"):
    beta = schedule.betas[t].item()
    abar, abar_prev = schedule.alphas_cumprod[t].item(), schedule.alphas_cumprod_prev[t].item()
    mean = (x_t - beta / math.sqrt(1 - abar) * eps_hat) / math.sqrt(1 - beta)
    var = beta * (1 - abar_prev) / (1 - abar) if variance == "posterior" else beta
    return mean + math.sqrt(var) * noise


def ddim_step(schedule, x_t, t, t_prev, eps_hat):
    abar = schedule.alphas_cumprod[t].item()
    abar_prev = schedule.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
    x0 = (x_t - math.sqrt(1 - abar) * eps_hat) / math.sqrt(abar)
    return math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev) * eps_hat


def embedding(t, dim, max_period=10000.0):
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def film(h, params):
    scale, shift = rearrange(params, "b c -> b c 1 1").chunk(2, dim=1)
    return h * (1 + scale) + shift


def attention(q, k, v, mask=None):
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask[..., None, :], float("-inf"))
    return logits.softmax(-1) @ v


def scale_factor(latents):
    return float(1 / latents.double().std(unbiased=False))


def ldm_loss(autoencoder, unet, alphas_cumprod, s, x, labels, t, noise):
    z0 = s * autoencoder.encode_latent(x)
    abar = rearrange(alphas_cumprod[t].to(z0.dtype), "b -> b 1 1 1")
    z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
    return ((noise - unet(z_t, t, class_labels=labels)) ** 2).mean()


def my_slerp(a, b, alphas):
    fa, fb = a.flatten().double(), b.flatten().double()
    theta = torch.arccos((fa @ fb / (fa.norm() * fb.norm())).clamp(-1, 1))
    alphas = alphas.double()[:, None]
    mixed = (torch.sin((1 - alphas) * theta) * fa + torch.sin(alphas * theta) * fb) / torch.sin(
        theta
    )
    return mixed.reshape(-1, *a.shape).to(a.dtype)


def cross_attention(x, context, mask, layer):
    q = rearrange(layer.to_q(x), "b n (h d) -> b h n d", h=layer.heads)
    k = rearrange(layer.to_k(context), "b m (h d) -> b h m d", h=layer.heads)
    v = rearrange(layer.to_v(context), "b m (h d) -> b h m d", h=layer.heads)
    out = attention(q, k, v, rearrange(mask, "b m -> b 1 m"))
    return layer.to_out(rearrange(out, "b h n d -> b n (h d)"))


def guided(unet, z_t, t, cond, null, w):
    eps_cond, eps_null = unet(z_t, t, **cond), unet(z_t, t, **null)
    return eps_null + w * (eps_cond - eps_null)


def drop(captions, p, generator):
    draws = torch.rand(len(captions), generator=generator)
    return ["" if d < p else c for c, d in zip(captions, draws.tolist(), strict=True)]


def concat(z_t, low):
    if low.shape[-2:] != z_t.shape[-2:]:
        low = resize(low, tuple(z_t.shape[-2:]), "bicubic")
    return torch.cat([z_t, low], dim=1)


def kernel(sigma_x, sigma_y, angle, size):
    r = size // 2
    coords = torch.arange(-r, r + 1, dtype=torch.float64)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    u = math.cos(angle) * x + math.sin(angle) * y
    v = -math.sin(angle) * x + math.cos(angle) * y
    k = torch.exp(-(u**2) / (2 * sigma_x**2) - v**2 / (2 * sigma_y**2))
    return (k / k.sum()).float()


# --- (checker, correct version, [(wrong version, words the message must contain), ...]) ---

def _box_tokens(layouts, grid):
    return LayoutTokenizer(grid, layouts.shape[1]).encode(layouts)[0]


def _one_hot(maps):
    return rearrange(F.one_hot(maps, 19).float(), "b h w c -> b c h w")


CASES = {
    "kl": (
        kl,
        [
            (lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).mean(dim=(1, 2, 3)), "sum"),
            (lambda m, lv: (m**2 + lv.exp() - 1 - lv).sum(dim=(1, 2, 3)), "1/2 is missing"),
            (lambda m, lv: 0.5 * (m**2 + lv - 1 - lv.exp()).sum(dim=(1, 2, 3)), "swapped"),
        ],
    ),
    "reparameterize": (
        reparameterize,
        [
            (lambda m, lv, e: m + lv.exp() * e, "variance"),
            (lambda m, lv, e: (m + torch.exp(0.5 * lv) * e).detach(), "no gradient"),
        ],
    ),
    "hinge_d_loss": (
        hinge,
        [
            (lambda r, f: hinge(f, r), "swapped"),
            (lambda r, f: 0.5 * ((1 - r).mean() + (1 + f).mean()), "relu is missing"),
            (lambda r, f: torch.relu(1 - r).mean() + torch.relu(1 + f).mean(), "1/2"),
        ],
    ),
    "nearest_codes": (
        nearest_codes,
        [
            (
                lambda z, cb: rearrange(
                    torch.cdist(rearrange(z, "b c h w -> (b h w) c"), cb).argmax(1),
                    "(b h w) -> b h w",
                    b=z.shape[0],
                    h=z.shape[2],
                ),
                "farthest",
            ),
            (lambda z, cb: torch.cdist(rearrange(z, "b c h w -> (b h w) c"), cb).argmin(1), "flat"),
            (lambda z, cb: rearrange(nearest_codes(z, cb), "b h w -> b w h"), "swapped"),
        ],
    ),
    "quantize": (
        quantize,
        [
            (
                lambda z, cb, beta: (lambda zq, loss: (zq.detach(), loss))(*quantize(z, cb, beta)),
                "straight-through",
            ),
            (lambda z, cb, beta: quantize(z, cb, 1.0), "beta"),
            (
                lambda z, cb, beta: (
                    quantize(z, cb, beta)[0],
                    F.mse_loss(
                        rearrange(cb[nearest_codes(z.detach(), cb)], "b h w c -> b c h w"), z
                    )
                    * (1 + beta),
                ),
                "commitment",
            ),
        ],
    ),
    "q_sample": (
        q_sample,
        [
            (
                lambda x0, t, n, ac: (
                    _per_example(ac[t], x0.ndim).to(x0.dtype) * x0
                    + (1 - _per_example(ac[t], x0.ndim).to(x0.dtype)) * n
                ),
                "square roots",
            ),
            (lambda x0, t, n, ac: q_sample(x0, (t - 1).clamp(min=0), n, ac), "off by one"),
            (lambda x0, t, n, ac: q_sample(n, t, x0, ac), "swapped"),
        ],
    ),
    "x0_from_eps": (
        x0_from_eps,
        [
            (lambda x, t, e, ac: x0_from_eps(x, t, -e, ac), "sign"),
            (
                lambda x, t, e, ac: (
                    (x - (1 - _per_example(ac[t], x.ndim).to(x.dtype)) * e)
                    / _per_example(ac[t], x.ndim).to(x.dtype)
                ),
                "square roots",
            ),
        ],
    ),
    "v_target": (
        v_target,
        [
            (lambda x0, e, t, ac: v_target(e, x0, t, ac), "swapped"),
            (lambda x0, e, t, ac: -v_target(x0, e, t, ac), "this is -v"),
            (
                lambda x0, e, t, ac: (
                    _per_example(ac[t], x0.ndim).to(x0.dtype) * e
                    - (1 - _per_example(ac[t], x0.ndim).to(x0.dtype)) * x0
                ),
                "square roots",
            ),
        ],
    ),
    "ddpm_step": (
        ddpm_step,
        [
            (lambda s, x, t, e, n: ddpm_step(s, x, t, e, n, variance="beta"), "beta~"),
            (lambda s, x, t, e, n: ddpm_step(s, x, t, e, 0 * n), "noise term"),
        ],
    ),
    "ddim_step": (
        ddim_step,
        [
            (lambda s, x, t, tp, e: ddim_step(s, x, t, t, e), "level t"),
            (lambda s, x, t, tp, e: ddim_step(s, x, t, max(tp, 0), e), "t_prev = -1"),
        ],
    ),
    "timestep_embedding": (
        embedding,
        [
            (lambda t, d: embedding(t, d).roll(d // 2, dims=1), "cosines first"),
            (lambda t, d: embedding(t, d, max_period=1000.0), "wrong"),
        ],
    ),
    "film": (
        film,
        [
            (
                lambda h, p: (lambda s, b: h * s + b)(*rearrange(p, "b c -> b c 1 1").chunk(2, 1)),
                "(1 + scale)",
            ),
            (lambda h, p: film(h, torch.cat(p.chunk(2, 1)[::-1], 1)), "first half"),
        ],
    ),
    "attention": (
        attention,
        [
            (lambda q, k, v, m=None: (q @ k.transpose(-2, -1)).softmax(-1) @ v, "1 / sqrt(d)"),
            (lambda q, k, v, m=None: attention(q, k, v, None), "mask is ignored"),
        ],
    ),
    "scale_factor": (
        scale_factor,
        [
            (lambda z: float(z.double().std(unbiased=False)), "std itself"),
            (lambda z: float(1 / z.double().std()), "N - 1"),
            (lambda z: 1 / z.double().flatten(2).std(dim=(0, 2), unbiased=False), "per channel"),
        ],
    ),
    "ldm_loss": (
        ldm_loss,
        [
            (lambda ae, u, ac, s, x, y, t, n: ldm_loss(ae, u, ac, 1.0, x, y, t, n), "scale factor"),
            (lambda ae, u, ac, s, x, y, t, n: ldm_loss(ae, u, ac, s, x, y, t, n) * 2, "expected"),
        ],
    ),
    "slerp": (
        my_slerp,
        [
            (
                lambda a, b, al: (
                    (1 - al.view(-1, *[1] * a.ndim)) * a + al.view(-1, *[1] * a.ndim) * b
                ),
                "straight line",
            ),
            (lambda a, b, al: my_slerp(b, a, al), "swapped"),
        ],
    ),
    "cross_attention": (
        cross_attention,
        [
            (
                lambda x, c, m, layer: cross_attention(x, c, torch.ones_like(m), layer),
                "mask is ignored",
            ),
            (lambda x, c, m, layer: cross_attention(x, c, m, layer) * 1.01, "1/sqrt(head_dim)"),
        ],
    ),
    "guided_eps": (
        guided,
        [
            (
                lambda u, z, t, c, n, w: guided(u, z, t, c, n, w) + u(z, t, **c) - u(z, t, **n),
                "start from eps(z_t, y)",
            ),
            (lambda u, z, t, c, n, w: guided(u, z, t, n, c, w), "plain conditional prediction"),
        ],
    ),
    "drop_captions": (
        drop,
        [
            (
                lambda cs, p, g: [
                    "" if d >= p else c
                    for c, d in zip(cs, torch.rand(len(cs), generator=g).tolist(), strict=True)
                ],
                "1 - p",
            ),
            (
                lambda cs, p, g: drop(cs, p, torch.Generator().manual_seed(0)),
                "generator you are given",
            ),
            # not random at all: the first p of the captions
            (
                lambda cs, p, g: ["" if i < p * len(cs) else c for i, c in enumerate(cs)],
                "generator",
            ),
        ],
    ),
    "unet_input": (
        concat,
        [
            (lambda z, y: concat(z, y).roll(y.shape[1], dims=1), "order"),
            (
                lambda z, y: torch.cat([z, F.interpolate(y, size=z.shape[-2:], mode="nearest")], 1),
                "nearest",
            ),
        ],
    ),
    "gaussian_kernel": (
        kernel,
        [
            (lambda sx, sy, a, n: kernel(sx, sy, a, n).T.contiguous(), "swapped"),
            (lambda sx, sy, a, n: kernel(sx, sy, 0.0, n), "not rotated"),
            (lambda sx, sy, a, n: kernel(sx, sy, a, n) * 2, "sums to 1"),
        ],
    ),
    "inpainting_condition": (
        inpainting_condition,
        [
            (lambda e, x, m, size: torch.cat([e(x), latent_mask(m, size)], 1), "masked image"),
            (lambda e, x, m, size: torch.cat([e(x * m), latent_mask(m, size)], 1), "x * (1 - m)"),
            (
                lambda e, x, m, size: torch.cat(
                    [e(x * (1 - m)), F.interpolate(m, size=size, mode="nearest")], 1
                ),
                "max-pooling",
            ),  # fmt: skip
            (lambda e, x, m, size: torch.cat([latent_mask(m, size), e(x * (1 - m))], 1), "order"),
        ],
    ),
    "paste": (
        paste,
        [
            (lambda c, x, m: (1 - m) * c + m * x, "the hole takes the model's pixels"),
            (lambda c, x, m: c, "put the known pixels back"),
        ],
    ),
    "blend_step": (
        blend_step,
        [
            (lambda zm, zk, k, a, n: k * zk + (1 - k) * zm, "noised to this step's level"),
            (lambda zm, zk, k, a, n: k * (a * zk + (1 - a) * n) + (1 - k) * zm, "square roots"),
            (
                lambda zm, zk, k, a, n: (
                    (1 - k) * (math.sqrt(a) * zk + math.sqrt(1 - a) * n) + k * zm
                ),
                "keep is 1",
            ),
        ],
    ),
    "box_tokens": (
        _box_tokens,
        [
            (lambda layouts, grid: _box_tokens(layouts[..., [0, 2, 1, 4, 3]], grid), "swapped"),
            (lambda layouts, grid: _box_tokens(layouts.clamp(min=0), grid), "padding"),
            (lambda layouts, grid: _box_tokens(layouts, grid)[:, 1:], "expected (3, 7)"),
        ],
    ),
    "label_map_input": (
        label_map_condition,
        [
            (lambda maps, size: _one_hot(maps)[..., :: maps.shape[-1] // size,
                                               :: maps.shape[-1] // size], "nearest"),
            (lambda maps, size: F.adaptive_max_pool2d(_one_hot(maps), size), "max-pool"),
            (lambda maps, size: F.adaptive_avg_pool2d(F.one_hot(maps, 19).float(), size),
             "channel axis"),
        ],
    ),
}


def test_every_exercise_has_cases_and_every_notebook_two_to_four():
    assert set(CASES) == set(EXERCISES)
    per_notebook: dict[str, int] = {}
    for notebook, _ in EXERCISES.values():
        per_notebook[notebook] = per_notebook.get(notebook, 0) + 1
    assert sorted(per_notebook) == [
        "01_perceptual_autoencoder",
        "02_vector_quantization",
        "03_forward_diffusion",
        "04_reverse_diffusion",
        "05_unet",
        "06_latent_diffusion",
        "07_cross_attention_conditioning",
        "08_super_resolution",
        "10_inpainting",
        "11_layouts_and_semantic_maps",
    ]
    assert all(2 <= count <= 4 for count in per_notebook.values()), per_notebook


@pytest.mark.parametrize("name", list(CASES))
def test_the_finished_version_passes(name, capsys):
    correct, _ = CASES[name]
    EXERCISES[name][1](correct)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, index",
    [(name, index) for name, (_, wrongs) in CASES.items() for index in range(len(wrongs))],
)
def test_a_wrong_version_fails_naming_the_problem(name, index):
    wrong, words = CASES[name][1][index]
    with pytest.raises(ExerciseCheckFailed) as failure:
        EXERCISES[name][1](wrong)
    assert words.lower() in str(failure.value).lower(), str(failure.value)


@pytest.mark.parametrize("name", list(CASES))
def test_a_stub_is_reported_as_not_implemented(name):
    def stub(*args, **kwargs):
        raise NotImplementedError("write the exercise")

    with pytest.raises(ExerciseNotImplemented, match="not implemented yet"):
        EXERCISES[name][1](stub)


def test_the_package_versions_pass_too():
    """The package's own functions, adapted to the exercises' signatures, pass the checkers."""
    checks.check_kl(lambda m, lv: DiagonalGaussianDistribution(torch.cat([m, lv], 1)).kl())
    checks.check_hinge_d_loss(hinge_d_loss)
    checks.check_q_sample(
        lambda x0, t, n, ac: NoiseSchedule(1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])).q_sample(
            x0, t, n
        )
    )
    checks.check_timestep_embedding(timestep_embedding)
    checks.check_slerp(slerp)
    checks.check_unet_input(unet_input)
    checks.check_gaussian_kernel(gaussian_kernel)
    checks.check_inpainting_condition(inpainting_condition)
    checks.check_paste(paste)
    checks.check_blend_step(blend_step)
    checks.check_box_tokens(_box_tokens)
    checks.check_label_map_input(label_map_condition)
