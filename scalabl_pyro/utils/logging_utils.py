"""Logging for one command-line run: our messages on stderr, everyone else's only with -v.

The libraries under the CLI speak on stderr in three ways: ``warnings.warn``
(peft, arviz, torch), their own logging handlers (transformers, datasets and
huggingface_hub each attach a stream handler to their root logger), and
progress bars (transformers' "Loading weights", hub downloads). A failing
command must print one ``error:`` line and nothing else, so for the duration
of :func:`cli_logging`:

* one handler on the root logger prints ``LEVEL name: message``; the
  ``scalabl_pyro`` loggers log at WARNING (INFO with ``-v``); the handler
  passes any other logger's records only with ``-v`` (WARNING and up), so a
  library missing from :data:`THIRD_PARTY_LOGGERS` (bitsandbytes warns at
  import) cannot add a line either;
* ``warnings.warn`` goes to the ``py.warnings`` logger
  (:func:`logging.captureWarnings`);
* third-party loggers are silenced (shown from WARNING up with ``-v``), and
  the libraries' own handlers are taken off so their records reach the root
  handler; libraries imported later read their verbosity from the
  environment (``TRANSFORMERS_VERBOSITY`` and friends, set only where the
  user has not set them), and their handlers are taken off as soon as they
  are imported (an import hook installed for the block, so no command has to
  ask for it);
* library progress bars are off when ``progress`` is false
  (``HF_HUB_DISABLE_PROGRESS_BARS``, ``HF_DATASETS_DISABLE_PROGRESS_BARS``).

This is the CLI's business only: the library itself never configures
logging. What the library does for its Python API (no progress bars or
third-party warnings while loading, bitsandbytes' import-time messages held
until quantisation is asked for) is at the end of this module.
Everything :func:`cli_logging` sets is put back when the block exits, so
calling ``scalabl_pyro.cli.main()`` in-process leaves the caller's logging as
it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

THIRD_PARTY_LOGGERS: tuple[str, ...] = (
    "py.warnings",
    "transformers",
    "datasets",
    "huggingface_hub",
    "peft",
    "accelerate",
    "torch",
    "pyro",
    "arviz",
    "matplotlib",
    "PIL",
    "filelock",
    "fsspec",
    "urllib3",
    "httpx",
    "httpx2",
    "httpcore",
    "safetensors",
    "tokenizers",
)
"""Loggers shown only with ``-v`` (names are prefixes: their children follow)."""

_OWN_HANDLER_LIBRARIES = ("transformers", "datasets", "huggingface_hub")
_VERBOSITY_ENV = ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY", "HF_HUB_VERBOSITY")
_FORMAT = "%(levelname)s %(name)s: %(message)s"
_QUIET = logging.CRITICAL + 1
_OWN = "scalabl_pyro"


class _OwnOrVerbose(logging.Filter):
    """Pass this library's records; anyone else's only with ``-v`` and from WARNING up."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == _OWN or record.name.startswith(_OWN + "."):
            return True
        return self.verbose and record.levelno >= logging.WARNING


class _Routing:
    """What :func:`cli_logging` changed, so that it can be put back.

    While the block runs it is also a meta-path finder: when transformers, datasets
    or huggingface_hub (or one of their submodules, which attach the library's
    handler lazily) finishes importing, their handlers are taken off at once, so no
    command has to remember to do it after importing the heavy stack.
    """

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.third_party_level = logging.WARNING if verbose else _QUIET
        self.adopted: dict[str, tuple[list[logging.Handler], bool]] = {}

    def adopt(self) -> None:
        """Take the libraries' own handlers off, so their records use the root handler."""
        for name in _OWN_HANDLER_LIBRARIES:
            if name not in sys.modules:
                continue
            lib = logging.getLogger(name)
            if name not in self.adopted:
                self.adopted[name] = ([], lib.propagate)
                lib.setLevel(self.third_party_level)
            for handler in list(lib.handlers):
                self.adopted[name][0].append(handler)
                lib.removeHandler(handler)
            lib.propagate = True

    def restore(self) -> None:
        for name, (handlers, propagate) in self.adopted.items():
            lib = logging.getLogger(name)
            for handler in handlers:
                lib.addHandler(handler)
            lib.propagate = propagate

    def find_spec(self, fullname: str, path=None, target=None):
        """Wrap the loader of the libraries' modules so that :meth:`adopt` runs after each."""
        if fullname.partition(".")[0] not in _OWN_HANDLER_LIBRARIES:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _AdoptingLoader(spec.loader, self)
        return spec


class _AdoptingLoader:
    """Delegates to a module's own loader; takes the library handlers off once it ran."""

    def __init__(self, loader, routing: _Routing) -> None:
        self._loader = loader
        self._routing = routing

    def __getattr__(self, name: str):
        if name in ("_loader", "_routing"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            self._loader.exec_module(module)
        finally:
            self._routing.adopt()


@contextmanager
def cli_logging(verbose: bool, *, progress: bool = True) -> Iterator[None]:
    """Route all logging and warnings of one CLI command (see the module docs)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(_OwnOrVerbose(verbose))
    saved_root_level = root.level
    own = logging.getLogger("scalabl_pyro")
    saved_levels = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    saved_own_level = own.level
    env = {name: "warning" if verbose else "error" for name in _VERBOSITY_ENV}
    if not progress:
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        env["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    saved_env = {name: os.environ.get(name) for name in env}
    routing = _Routing(verbose)

    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    own.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(routing.third_party_level)
    for name, value in env.items():
        os.environ.setdefault(name, value)
    showwarning = warnings.showwarning
    logging.captureWarnings(True)
    we_capture = warnings.showwarning is not showwarning  # False if the caller already did
    routing.adopt()
    sys.meta_path.insert(0, routing)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(routing)
        routing.restore()
        if we_capture:
            logging.captureWarnings(False)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        own.setLevel(saved_own_level)
        root.setLevel(saved_root_level)
        root.removeHandler(handler)


# ------------------------------------------------------------ the Python API
#
# The library itself never configures logging (no handlers, no levels), but the
# third-party calls it makes on the user's behalf must not print either: no
# progress bars while a model loads, no deprecation warnings from peft's use of
# transformers, no message from bitsandbytes unless quantisation was asked for.

_DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


@contextmanager
def quiet_library_calls(logger: logging.Logger, *, progress: bool = False) -> Iterator[None]:
    """Run third-party calls (model loading, peft wrapping) without printing.

    * transformers' and the hub's progress bars ("Loading weights", downloads)
      are off unless ``progress`` is true or the user set
      ``HF_HUB_DISABLE_PROGRESS_BARS=0``;
    * ``warnings.warn`` calls made inside the block are re-logged on
      ``logger``: deprecations (``FutureWarning`` and friends, about the
      libraries' use of each other, which a user cannot act on) at INFO (shown
      by the CLI's ``-v``), any other warning at WARNING. The warning filters
      in force still apply.

    Everything is put back when the block exits.
    """
    bars_wanted = progress or os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").strip() in (
        "0",
        "false",
        "False",
    )
    tf_logging = sys.modules.get("transformers.utils.logging")
    restore_tf = False
    hub_off = None
    if not bars_wanted:
        if tf_logging is not None and getattr(tf_logging, "_tqdm_active", False):
            tf_logging._tqdm_active = False  # read at every bar; the public switch is global
            restore_tf = True
        try:
            from huggingface_hub.utils import disable_progress_bars
        except ImportError:  # pragma: no cover - the hub client comes with transformers
            pass
        else:
            hub_off = disable_progress_bars()  # re-enables on exit only what it turned off
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as recorded:
            try:
                yield
            finally:
                caught = list(recorded)
    finally:
        if restore_tf:
            tf_logging._tqdm_active = True
        if hub_off is not None:
            hub_off.__exit__(None, None, None)
        for w in caught:
            level = logging.INFO if issubclass(w.category, _DEPRECATIONS) else logging.WARNING
            logger.log(
                level,
                "%s: %s (%s:%s)",
                w.category.__name__,
                w.message,
                os.path.basename(w.filename),
                w.lineno,
            )


# peft imports bitsandbytes whenever it is installed (``peft/helpers.py``), so
# importing peft cannot avoid importing it; on some CPUs bitsandbytes then logs
# a WARNING at import time about an optional 4-bit CPU kernel, which Python's
# last-resort handler prints when the application has not configured logging.
# Its import-time records are held instead and handed to its loggers when
# quantisation is asked for (:func:`release_bitsandbytes_logs`), where they
# concern the user. Only a first import that happens after ``scalabl_pyro`` was
# imported, and before quantisation was asked for, is held.

_BNB = "bitsandbytes"
_held_bnb_records: list[logging.LogRecord] = []
_bnb_wanted = False


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.NOTSET)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


class _HoldingLoader:
    """Delegates to bitsandbytes' own loader; holds its log records while it executes."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str):
        if name == "_loader":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        _uninstall_bnb_finder()
        if _bnb_wanted:
            self._loader.exec_module(module)
            return
        lib = logging.getLogger(_BNB)
        handler, propagate = _Collect(_held_bnb_records), lib.propagate
        lib.addHandler(handler)
        lib.propagate = False
        try:
            self._loader.exec_module(module)
        finally:
            lib.removeHandler(handler)
            lib.propagate = propagate


class _BnbFinder:
    """A meta-path finder for the top-level ``bitsandbytes`` package only."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != _BNB or _bnb_wanted:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _HoldingLoader(spec.loader)
        return spec


_bnb_finder: _BnbFinder | None = None


def hold_bitsandbytes_import_logs() -> None:
    """Hold the log records of bitsandbytes' first import (called by ``scalabl_pyro``)."""
    global _bnb_finder
    if _bnb_finder is not None or _BNB in sys.modules or _bnb_wanted:
        return
    _bnb_finder = _BnbFinder()
    sys.meta_path.insert(0, _bnb_finder)


def _uninstall_bnb_finder() -> None:
    global _bnb_finder
    if _bnb_finder is not None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(_bnb_finder)
        _bnb_finder = None


def release_bitsandbytes_logs() -> None:
    """Quantisation was asked for: hand bitsandbytes' held import-time records to logging."""
    global _bnb_wanted
    _bnb_wanted = True
    _uninstall_bnb_finder()
    records, _held_bnb_records[:] = list(_held_bnb_records), []
    for record in records:
        logging.getLogger(record.name).handle(record)
