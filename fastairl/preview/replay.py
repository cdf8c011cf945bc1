"""The folder loader's parameters: its workers' random streams replayed through a recording pipeline.

Why a replay: torchvision draws the folder loader's parameters in DataLoader worker
processes, where nothing can read them. The preview replays each batch in this process:
a shallow copy of the loader's own dataset, whose ImageFolder runs the same transform
pipeline (:func:`fastairl.data.folder.view_transform`) with recording hooks (one per op,
:mod:`fastairl.preview.ops`), is indexed with the batch's sample indices on the random
streams of the worker that made the batch (the DataLoader's base seed,
``base + worker_id``, its ``worker_init_fn``; a dataset that seeds each sample itself
needs none of that and gets the same treatment). The replayed view must equal the
loader's bit for bit, or the preview stops with an error rather than caption a view with
parameters that did not make it.
"""
from __future__ import annotations

import copy
import random
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from fastairl.data.recipes import ViewRecipe
from fastairl.preview.ops import folder_hook, folder_params
from fastairl.preview.result import Batch


class RecordingView:
    """The folder loader's torchvision pipeline for one view, with hooks that note each draw.

    The pipeline is built by the same function the loader uses
    (:func:`fastairl.data.folder.view_transform`); the hooks change no random draw and no
    pixel: crop and jitter parameters are caught where the transforms ask for them
    (their ``get_params``), random-apply decisions by whether the wrapped op ran,
    grayscale and flip by whether the transform returned a new image, and the blur sigma
    by reading the value the blur is about to draw from Python's ``random`` (state saved
    and restored around the read).
    """

    def __init__(self, v: ViewRecipe, size: int) -> None:
        from torchvision import transforms as T

        from fastairl.data.folder import view_transform

        self._T = T
        self.rec: dict[str, Any] = {}
        self.compose = view_transform(v, size)
        self.compose.transforms = [self._wrap(t) for t in self.compose.transforms]

    def __call__(self, img) -> tuple[torch.Tensor, dict[str, Any]]:
        self.rec = {}
        out = self.compose(img)
        return out, self.rec

    def _note(self, **drawn) -> None:
        self.rec.update(drawn)

    def _wrap(self, t):
        T = self._T
        if isinstance(t, T.RandomApply):
            t.transforms = [folder_hook(inner, self._note) for inner in t.transforms]
            return t
        if isinstance(t, (T.ToTensor, T.Normalize)):
            return t
        return folder_hook(t, self._note)


class RecordingMultiView:
    """Stands in for the loader's per-sample transform: every view's recording pipeline,
    plus the decoded source image, kept for the caller after each call."""

    def __init__(self, views: list[RecordingView]) -> None:
        self.views = views
        self.records: list[dict[str, Any]] = []
        self.source: np.ndarray | None = None

    def __call__(self, img) -> list[torch.Tensor]:
        self.source = np.asarray(img)
        outs, self.records = [], []
        for v in self.views:
            out, rec = v(img)
            outs.append(out)
            self.records.append(rec)
        return outs


def recording_dataset(dataset, transform: RecordingMultiView):
    """A shallow copy of the folder loader's dataset whose images go through ``transform``.

    Everything else (sample list, image loading, any per-sample seeding or replacement of
    unreadable files the dataset does) is the loader's own code, so calling the copy in
    this process does what a worker does. The transform lives on the ImageFolder, either
    the dataset itself or the one it wraps (``.base``).
    """
    clone = copy.copy(dataset)
    if hasattr(clone, "samples") and hasattr(clone, "transform"):
        clone.transform = transform
        return clone
    inner = getattr(clone, "base", None)
    if inner is not None and hasattr(inner, "samples") and hasattr(inner, "transform"):
        inner = copy.copy(inner)
        inner.transform = transform
        clone.base = inner
        return clone
    raise RuntimeError(f"fastairl.preview cannot find the ImageFolder inside the folder loader's dataset "
                       f"({type(dataset).__name__}); update fastairl/preview/replay.py (recording_dataset)")


class GlobalRNG:
    """Save and restore the process-global torch CPU, Python and numpy random states."""

    def __enter__(self) -> "GlobalRNG":
        self.saved = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        return self

    def __exit__(self, *exc) -> None:
        t, p, n = self.saved
        torch.set_rng_state(t)
        random.setstate(p)
        np.random.set_state(n)


def worker_streams(dl, base_seed: int) -> list[list]:
    """The (torch, python) random states each DataLoader worker starts an epoch with.

    torch's worker loop seeds ``random`` and torch with ``base_seed + worker_id`` (numpy
    too) and then calls ``worker_init_fn(worker_id)``; the same steps run here, in this
    process, with the global states saved and restored around them. (With no workers
    there is one stream: the one this process runs the transforms on.)
    """
    n = max(1, int(dl.num_workers))
    streams = []
    with GlobalRNG():
        for w in range(n):
            seed = base_seed + w
            random.seed(seed)
            torch.default_generator.manual_seed(seed)
            np.random.seed(seed % 2**32)
            if dl.num_workers > 0 and dl.worker_init_fn is not None:
                dl.worker_init_fn(w)
            streams.append([torch.get_rng_state(), random.getstate()])
    return streams


def replay(stream: list, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a worker's random streams (advancing them), leaving the global ones as found."""
    with GlobalRNG():
        torch.set_rng_state(stream[0])
        random.setstate(stream[1])
        out = fn()
        stream[0], stream[1] = torch.get_rng_state(), random.getstate()
    return out


def folder_batches(loader, recipe: Sequence[ViewRecipe], spec, start_epoch: int,
                   meta: dict) -> Iterator[tuple[int, Batch]]:
    """Batches of the reference-style loader, with the parameters its workers drew.

    Each batch is replayed in this process: a copy of the loader's dataset with a
    recording transform is indexed with the batch's sample indices while the random
    streams are those of the worker that produced the batch (batch ``k`` goes to worker
    ``k % workers``, in order). A dataset that seeds every sample itself makes the
    streams irrelevant; one that relies on the worker's streams gets exactly them. The
    replayed views must equal the loader's bit for bit.
    """
    dl = loader.loader
    recorder = RecordingMultiView([RecordingView(v, spec.image_size) for v in recipe])
    meta["crop_source"] = ["folder loader, replayed in the preview (checked bit-exact)"] * len(recipe)
    meta["flip_source"] = list(meta["crop_source"])
    meta["colour_source"] = ["torchvision transforms of the folder loader, replayed (checked bit-exact)"] * len(recipe)
    b = spec.batch_size
    epoch = start_epoch
    while True:
        loader.set_epoch(epoch)
        clone = recording_dataset(loader.dataset, recorder)  # after set_epoch: per-epoch state is copied
        # The DataLoader draws its workers' base seed from its generator (or the global
        # stream) when iteration starts; draw the same number from a copy of that state.
        g = torch.Generator()
        g.set_state(dl.generator.get_state() if dl.generator is not None else torch.get_rng_state())
        base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=g).item())
        streams = worker_streams(dl, base_seed)
        if dl.num_workers == 0:
            # Transforms run in this process on the global streams: start them where the
            # replay starts (after the base-seed draw, if that comes from the global stream).
            torch.set_rng_state(streams[0][0])
            random.setstate(streams[0][1])
            if dl.generator is None:
                replay(streams[0], lambda: torch.empty((), dtype=torch.int64).random_())
        order = loader.sampler.indices()
        it = iter(loader)
        try:
            for k, (views, labels) in enumerate(it):
                ids = order[k * b:(k + 1) * b]
                cpu_views = [v.detach().to("cpu", torch.float32) for v in views]
                labels = labels.detach().cpu()

                def run(ids=ids):
                    got = []
                    for i in ids:
                        item = clone[i]
                        got.append((item[0], int(item[1]), recorder.records, recorder.source))
                    return got

                got = replay(streams[k % len(streams)], run)
                same_labels = [g_[1] for g_ in got] == [int(t) for t in labels]
                for v in range(len(recipe)):
                    replayed = torch.stack([g_[0][v] for g_ in got])
                    if not (same_labels and torch.equal(replayed, cpu_views[v])):
                        raise RuntimeError(
                            f"fastairl.preview: replaying the folder loader does not reproduce view {v + 1} of "
                            f"batch {k} in epoch {epoch}, so its parameters cannot be reported; the loader's "
                            f"seeding or a transform's random draws changed; update fastairl/preview/replay.py")
                params = [folder_params([g_[2][v] for g_ in got]) for v in range(len(recipe))]
                yield epoch, Batch(cpu_views, params, labels, torch.as_tensor(ids, dtype=torch.int64),
                                   [(lambda a=g_[3]: a) for g_ in got])
        finally:
            it.close()
        epoch += 1
