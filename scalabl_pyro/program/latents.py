"""The latent family: which quantities of a LoRA-adapted model are random.

A latent family is the extension point of the Pyro program (as TyXe's
``Prior`` decides which weights are random, and peft's ``LoraVariant`` adds a
kind of LoRA without forking the layer). It owns

* its **sites**: names and event shapes of the random quantities;
* its **prior** per site;
* its **initialisation** (the guides' initial location);
* **how draws reach the layers**: only inside :meth:`LatentFamily.use`, a
  scope that leaves every module exactly as it was when it exits. Outside any
  scope the layers use the family's *point*: the posterior median of the
  guide handed to :meth:`LatentFamily.follow` (the initial values before);
* its **export**: a plain peft adapter (and a merged model) equal to the
  point model.

ScalaBL's family is :class:`~scalabl_pyro.program.adapters.SubspaceLoRA`, an
r-vector ``s`` per adapted layer; BLoB's Gaussian over ``A`` is a second
family of the same kind.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Mapping

import pyro.distributions as dist
import torch

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.settings import pyro_settings

Draws = Mapping[str, torch.Tensor]


class LatentFamily:
    """Base class: scoped draws, the point outside any scope and the site bookkeeping.

    Subclasses fill :attr:`init_values` (site name -> initial location) and
    implement :meth:`prior`, :meth:`adapter_state` and :meth:`merge_and_unload`.
    """

    init_values: dict[str, torch.Tensor]

    def __init__(self) -> None:
        self._scopes: list[_Scope] = []
        self._retained: list[list] = []  # [scope depth at entry, kept scope or None]
        self._point_guide: weakref.ref | None = None

    # --------------------------------------------------------------- sites
    @property
    def site_names(self) -> list[str]:
        """Pyro site names, in a fixed order."""
        return list(self.init_values)

    def event_shape(self, name: str) -> torch.Size:
        """Event shape of one site (``(r,)`` for ``s``; ``(r, d_in)`` for BLoB's ``A``)."""
        return self.init_values[name].shape

    #: Whether a question's prefix may run once for all its answers (shared-prefix
    #: choice scoring). False for a family that draws noise per input row or
    #: per example inside a scope (BLoB's flipout): the prefix pass and the
    #: answer pass would see different noise for the same example.
    shares_prefix: bool = True

    @property
    def num_latents(self) -> int:
        """Total latent dimension D."""
        return sum(v.numel() for v in self.init_values.values())

    def prior(self, name: str) -> dist.Distribution:
        """The prior of one site."""
        raise NotImplementedError

    # ------------------------------------------------------------- scoping
    def follow(self, guide) -> None:
        """Use ``guide``'s posterior median as the point outside any scope (None: initial values).

        ``guide`` is anything with a ``median()`` that returns one tensor per
        site (every Pyro autoguide). It is passed in by whoever builds the
        guide, and held by a weak reference: the family keeps no guide alive
        and closes no reference cycle.
        """
        self._point_guide = None if guide is None else weakref.ref(guide)

    def point(self) -> dict[str, torch.Tensor]:
        """The point values used outside any scope."""
        guide = self._point_guide() if self._point_guide is not None else None
        if guide is None:
            return dict(self.init_values)
        with pyro_settings():
            median = guide.median()
        return {name: median[name].detach() for name in self.site_names}

    @contextlib.contextmanager
    def use(self, draws: Draws, groups: torch.Tensor | None = None) -> Iterator[None]:
        """Run the block with these draws: each site (event,) or (rows, event) for per-row draws.

        ``groups`` (rows,) names the example each input row belongs to (the
        choice format has one row per answer): a family that adds its own
        per-example noise to a shared draw (BLoB's flipout) shares it within a
        group. Scopes nest; on exit the previous state is back exactly.
        """
        missing = [n for n in self.site_names if n not in draws]
        if missing:
            raise ScalaBLError(
                f"draws missing for {len(missing)} latent sites (e.g. {missing[0]!r}); "
                "pass one tensor per site"
            )
        self._scopes.append(_Scope(draws, groups))
        try:
            yield
        finally:
            popped = self._scopes.pop()
            # keep the first scope that closes at the retaining block's own depth
            # (an inner, nested scope, e.g. a shared-prefix pass, is not kept)
            ret = self._retained[-1] if self._retained else None
            if ret is not None and ret[1] is None and len(self._scopes) == ret[0]:
                ret[1] = popped

    @contextlib.contextmanager
    def retained(self) -> Iterator[None]:
        """Keep the draws of a finished :meth:`use` block until this block exits.

        Gradient checkpointing recomputes layer outputs during ``backward()``,
        after the model's own scope has closed; the trainer wraps forward and
        backward in this block so that the recomputation sees the same draws.
        """
        self._retained.append([len(self._scopes), None])
        try:
            yield
        finally:
            self._retained.pop()

    @property
    def in_scope(self) -> bool:
        """Whether draws are active (inside :meth:`use` or a retaining block)."""
        return bool(self._scopes) or any(r[1] is not None for r in self._retained)

    def _active(self) -> _Scope | None:
        if self._scopes:
            return self._scopes[-1]
        for _, kept in reversed(self._retained):
            if kept is not None:
                return kept
        return None

    def current(self, name: str) -> torch.Tensor:
        """The value of one site that a layer should use now."""
        scope = self._active()
        if scope is not None:
            return scope.draws[name]
        return self.point()[name]

    def current_groups(self) -> torch.Tensor | None:
        """The row -> example map of the active scope (None: every row is its own example)."""
        scope = self._active()
        return None if scope is None else scope.groups

    def scope_cache(self) -> dict:
        """A dict that lives exactly as long as the active scope (empty outside any scope).

        Noise a family draws inside a scope (flipout signs) is kept here, so a
        gradient-checkpointing recomputation inside :meth:`retained` sees the
        same noise.
        """
        scope = self._active()
        return {} if scope is None else scope.cache

    # -------------------------------------------------------------- export
    def adapter_state(self, point: Draws):
        """A plain peft adapter (state dict, LoraConfig) equal to the model at ``point``."""
        raise NotImplementedError

    def merge_and_unload(self, point: Draws):
        """The base model with the point model's weights merged in (consumes the family)."""
        raise NotImplementedError


class _Scope:
    """The draws of one :meth:`LatentFamily.use` block, its row groups and its noise cache."""

    __slots__ = ("cache", "draws", "groups")

    def __init__(self, draws: Draws, groups: torch.Tensor | None) -> None:
        self.draws = draws
        self.groups = groups
        self.cache: dict = {}
