"""Published weights of a zoo model: which file they are, the input they expect, and reading them from the cache.

:func:`published_weights` names the weights ``--pretrained`` starts a ``--model_type`` from (no file is
read), :func:`read_published_state` reads them as a ``{name: tensor}`` state dict that
:func:`model.pretrained.load_state` adapts and loads, the one path of every source of weights.

- ``timm/<name>[.<tag>]``: timm's pretrained config of that tag (timm's default tag without one). Its
  weights are the file of the Hugging Face repo ``hf_hub_id`` (``model.safetensors``, else
  ``pytorch_model.bin``), read from the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``,
  else ``~/.cache/huggingface/hub``); a tag with a URL only: the file in ``$TORCH_HOME/hub/checkpoints``.
- ``resnet18``, ``resnet50``, ``swin_t``, ``vit_b_16``: torchvision's ``DEFAULT`` weights enum of the
  model; the file ``<name>-<hash prefix>.pth`` of its URL in ``$TORCH_HOME/hub/checkpoints`` (default
  ``~/.cache/torch/hub/checkpoints``), as ``torchvision.models.<name>(weights="DEFAULT")`` caches it.
- ``vit_ti_16``, ``vit_s_16``: no published weights; :data:`TIMM_TWINS` names the timm model of the
  same architecture that has some.

A cached file is read without any network access. A missing one is downloaded (timm's
``load_state_dict_from_hf``, torch's ``load_state_dict_from_url``) unless ``HF_HUB_OFFLINE`` is set, which
here means no download of any kind; either way, a file that cannot be had is one line
(:class:`base.errors.CheckpointError`) naming the file, the cache folder it goes in and how to fetch it on
a machine with a network. The cache folders and ``HF_HUB_OFFLINE`` are read from the environment at each
call (huggingface_hub reads them once, when imported).

The file's tensors are taken as they are stored: timm's checkpoint filters, which convert some foreign
layouts while timm loads them (OpenCLIP files, original JAX ``.npz``), are not run, so such weights fit
too few of the model's tensors and :func:`model.pretrained.load_state` refuses them in one line. The
``timm/`` repos of the hub hold timm's own layout.
"""

import logging
import os
from typing import NamedTuple

from base.errors import CheckpointError, ConfigError

__all__ = [
    "TIMM_TWINS",
    "TORCHVISION_WEIGHTS",
    "Weights",
    "hf_hub_cache",
    "load_published_weights",
    "published_weights",
    "read_published_state",
]

#: The zoo's own ViT sizes (torchvision's ``VisionTransformer``) -> the timm model of the same architecture
#: (DeiT sizes: 12 blocks, width 192 / 384, patch 16) whose weights are published.
TIMM_TWINS = {
    "vit_ti_16": "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "vit_s_16": "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
}
#: The zoo names that start from torchvision's ``DEFAULT`` weights (``torchvision.models.get_model_weights``).
TORCHVISION_WEIGHTS = ("resnet18", "resnet50", "swin_t", "vit_b_16")
log = logging.getLogger(__name__)
_HF_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's order: the safetensors file first


class Weights(NamedTuple):
    """Published weights of a zoo model and the input they were trained on.

    Attributes:
        name: what they are, in messages and provenance (``"timm/resnet18.a1_in1k"``,
            ``"torchvision ResNet18_Weights.IMAGENET1K_V1"``).
        mean, std: per-channel statistics of [0, 1] pixels (3 values for RGB weights).
        image_size: the side H = W of their training input (pixels).
        crop_pct: the evaluation centre crop's share of the resized side.
        interpolation: their resize filter (``"bilinear"``, ``"bicubic"``), for messages: this pipeline
            always resizes bilinear.
        patch_size: the patch side of a torchvision ViT's weights, else ``None``.
        hub_id: the Hugging Face repo of the file (``"timm/resnet18.a1_in1k"``) or ``None``.
        hub_files: the file names looked for in that repo, in order.
        url: the file's URL (torch.hub cache), when there is no ``hub_id``.
        fetch: the Python line that caches them on a machine with a network.
    """

    name: str
    mean: tuple
    std: tuple
    image_size: int
    crop_pct: float
    interpolation: str
    patch_size: int | None
    hub_id: str | None
    hub_files: tuple
    url: str | None
    fetch: str


def published_weights(model_type):
    """The :class:`Weights` ``--pretrained`` loads into ``model_type``; reads no weights file.

    Raises:
        ConfigError: ``model_type`` has no published weights (the zoo's own ViT sizes: the message names
            the timm model to use instead), timm has none for the name, or timm converts them with its
            own code (``custom_load``); each names ``--pretrained`` and the model.
    """
    where = f"--pretrained: --model_type {model_type}"
    if model_type in TIMM_TWINS:
        raise ConfigError(
            f"{where} has no published weights (the zoo's own size); the same architecture with weights: "
            f"--model_type {TIMM_TWINS[model_type]}"
        )
    if model_type in TORCHVISION_WEIGHTS:
        return _torchvision_weights(model_type)
    if not model_type.startswith("timm/"):
        raise ConfigError(f"{where}: no published weights (choices: {', '.join(TORCHVISION_WEIGHTS)}, timm/<name>)")
    import timm  # here, not at import: only timm/ names pay for importing it

    name = model_type[len("timm/") :]
    try:
        cfg = timm.models.get_pretrained_cfg(name)  # the tag's, or the name's default tag
    except RuntimeError as exc:  # a tag the model does not have
        raise ConfigError(f"{where}: {exc} (see timm.list_pretrained())") from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ConfigError(f"{where}: timm has no pretrained weights for it (see timm.list_pretrained())")
    if not cfg.hf_hub_id and cfg.custom_load:
        raise ConfigError(
            f"{where}: timm converts these weights with its own loader ({os.path.basename(cfg.url)}); "
            f"pick a tag whose weights are on the Hugging Face hub (see timm.list_pretrained())"
        )
    tagged = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    return Weights(
        name=f"timm/{tagged}",
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        image_size=int(cfg.input_size[-1]),
        crop_pct=float(cfg.crop_pct),
        interpolation=str(cfg.interpolation),
        patch_size=None,
        hub_id=cfg.hf_hub_id or None,
        hub_files=(cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HF_FILES,
        url=None if cfg.hf_hub_id else cfg.url,
        fetch=f"import timm; timm.create_model('{tagged}', pretrained=True)",
    )


def _torchvision_weights(model_type):
    from torchvision.models import get_model_weights  # here, not at import: --help should not pay for it

    weights = get_model_weights(model_type).DEFAULT
    tf = weights.transforms()  # the evaluation preprocessing the weights were published with
    return Weights(
        name=f"torchvision {weights}",
        mean=tuple(tf.mean),
        std=tuple(tf.std),
        image_size=int(tf.crop_size[0]),
        crop_pct=tf.crop_size[0] / tf.resize_size[0],
        interpolation=tf.interpolation.value,
        patch_size=16 if model_type.startswith("vit_") else None,
        hub_id=None,
        hub_files=(),
        url=weights.url,
        fetch=f"import torchvision; torchvision.models.{model_type}(weights='DEFAULT')",
    )


def hf_hub_cache():
    """The Hugging Face hub cache folder, as huggingface_hub resolves it, from the environment now:
    ``$HF_HUB_CACHE``, ``$HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``, ``$XDG_CACHE_HOME/huggingface/hub``,
    ``~/.cache/huggingface/hub``."""
    env = os.environ
    folder = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not folder:
        cache = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(env.get("HF_HOME") or os.path.join(cache, "huggingface"), "hub")
    return os.path.expandvars(os.path.expanduser(folder))


def _offline():
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub reads it, from the environment now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def read_published_state(weights, flag="--pretrained"):
    """``(state, path)``: the ``{name: tensor}`` state dict of ``weights`` and the file it was read from.

    A cached file is read with :func:`model.pretrained.read_state_dict` (no network); a missing one is
    downloaded into its cache first, unless ``HF_HUB_OFFLINE`` is set (see the module docstring).

    Raises:
        CheckpointError: the file is not cached and cannot be downloaded (offline, no network, no such
            file): one line naming the file, its cache folder and the line that fetches it; or it is
            unreadable (see :func:`model.pretrained.read_state_dict`).
    """
    from model.pretrained import read_state_dict

    where = f"{flag} {weights.name}"
    path, folder, wanted = _cached(weights)
    if path is None:
        why = "HF_HUB_OFFLINE is set" if _offline() else _download(weights)
        if why:
            raise CheckpointError(
                f"{where}: {wanted} is not in the cache {folder} and {why}; on a machine with a network run "
                f'python -c "{weights.fetch}" and copy {_copy_hint(weights, folder)}'
            )
        path = _cached(weights)[0]
        if path is None:  # a download that went elsewhere than the cache looked in
            raise CheckpointError(f"{where}: downloaded, but {wanted} is not in the cache {folder}")
    return read_state_dict(path, f"{where}:"), path


def _cached(weights):
    """``(path or None, cache folder, what is looked for)``; looks at files only."""
    if weights.hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = weights.hub_id.partition("@")
        folder = hf_hub_cache()
        for name in weights.hub_files:
            path = try_to_load_from_cache(repo, name, cache_dir=folder, revision=revision or None)
            if isinstance(path, str) and os.path.isfile(path):  # (a sentinel object marks "known missing")
                return path, folder, None
        return None, folder, f"{' or '.join(weights.hub_files)} of the Hugging Face repo {repo}"
    import torch.hub

    folder = os.path.join(torch.hub.get_dir(), "checkpoints")  # $TORCH_HOME/hub/checkpoints, read now
    name = os.path.basename(weights.url.split("?")[0])
    path = os.path.join(folder, name)
    return (path if os.path.isfile(path) else None), folder, name


def _download(weights):
    """Download ``weights`` into its cache; ``""`` on success, else why not (a phrase)."""
    try:
        if weights.hub_id:
            from timm.models import load_state_dict_from_hf

            filename = weights.hub_files[0] if len(weights.hub_files) == 1 else "pytorch_model.bin"
            load_state_dict_from_hf(weights.hub_id, filename, cache_dir=hf_hub_cache())  # tries safetensors first
        else:
            import torch.hub

            torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=False, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - no network, no such file, a proxy's page: all mean "not had"
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"the download failed ({type(exc).__name__}: {detail})"
    return ""


def _copy_hint(weights, folder):
    if weights.hub_id:
        repo = weights.hub_id.partition("@")[0]
        return f"its ~/.cache/huggingface/hub/models--{repo.replace('/', '--')} folder into {folder}"
    return f"~/.cache/torch/hub/checkpoints/{os.path.basename(weights.url)} into {folder} (or download {weights.url})"


def load_published_weights(model, model_type, flag="--pretrained"):
    """Load the published weights of ``model_type`` into ``model`` (built for the data: any classes,
    channels and ViT image size) with :func:`model.pretrained.load_state`, which adapts the stem and the
    position embedding, leaves a head of another number of classes as initialised and logs each of
    these in one line, as for ``--pretrained_path``.

    Returns:
        a :class:`model.pretrained.LoadReport`.

    Raises:
        ConfigError: ``model_type`` has no published weights (see :func:`published_weights`).
        CheckpointError: the file cannot be had or read (see :func:`read_published_state`), or fits fewer
            than half of ``model``'s tensors.
    """
    from model.pretrained import load_state

    weights = published_weights(model_type)
    state, path = read_published_state(weights, flag)
    log.info("%s %s: reading %s", flag, weights.name, path)
    return load_state(model, state, f"{flag} {weights.name}")
