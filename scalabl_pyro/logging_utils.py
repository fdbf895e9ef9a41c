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
  user has not set them) and :func:`adopt_library_loggers` takes their
  handlers off once they are imported;
* library progress bars are off when ``progress`` is false
  (``HF_HUB_DISABLE_PROGRESS_BARS``, ``HF_DATASETS_DISABLE_PROGRESS_BARS``).

This is the CLI's business only: the library itself never configures
logging. Everything set here is put back when the block exits, so calling
``scalabl_pyro.cli.main`` in-process leaves the caller's logging as it was.
"""

from __future__ import annotations

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
    """What :func:`cli_logging` changed, so that it can be put back."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.third_party_level = logging.WARNING if verbose else _QUIET
        self.adopted: dict[str, tuple[list[logging.Handler], bool]] = {}

    def adopt(self) -> None:
        """Take the libraries' own handlers off, so their records use the root handler."""
        for name in _OWN_HANDLER_LIBRARIES:
            if name in self.adopted or name not in sys.modules:
                continue
            lib = logging.getLogger(name)
            self.adopted[name] = (list(lib.handlers), lib.propagate)
            for handler in list(lib.handlers):
                lib.removeHandler(handler)
            lib.propagate = True
            lib.setLevel(self.third_party_level)

    def restore(self) -> None:
        for name, (handlers, propagate) in self.adopted.items():
            lib = logging.getLogger(name)
            for handler in handlers:
                lib.addHandler(handler)
            lib.propagate = propagate


_active: _Routing | None = None


def adopt_library_loggers() -> None:
    """Route libraries imported since :func:`cli_logging` began (no-op outside it)."""
    if _active is not None:
        _active.adopt()


@contextmanager
def cli_logging(verbose: bool, *, progress: bool = True) -> Iterator[None]:
    """Route all logging and warnings of one CLI command (see the module docs)."""
    global _active
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
    previous, _active = _active, routing
    routing.adopt()
    try:
        yield
    finally:
        _active = previous
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
