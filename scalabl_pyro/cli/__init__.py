"""Command line: ``scalabl {fetch,demo,train,evaluate,data,compare,diagnose,benchmark}``.

One module per command (:mod:`.fetch`, :mod:`.demo`, :mod:`.train`, :mod:`.evaluate`,
:mod:`.data`, :mod:`.compare`, :mod:`.diagnose`, :mod:`.benchmark`), each with
``register(subparsers)`` and ``run(args)``; :mod:`.app` builds the one parser from them
and runs a command; :mod:`.options` and :mod:`.checks` hold what the commands share, and
:mod:`.launch` what a command needs under ``accelerate launch`` (several processes).

Every problem with the input ends the command with one line
``error: <problem>; <fix>`` on stderr and exit status 2, without a traceback.
The checks run cheapest first, so a mistake costs a fraction of a second, not
a model load:

1. each option as it is parsed: its type and documented range
   (:data:`~scalabl_pyro.cli.options.RANGES`), reported under the flag the user typed;
2. combinations of options: an option the mode ignores, or one that would
   change nothing, is refused rather than dropped;
3. files: the output location (never replace what this library did not
   write; creatable and writable), then the data file, read and validated in
   full (:mod:`scalabl_pyro.data.local`);
4. only then torch, the model, and training or prediction.

Library warnings and logs are shown only with ``-v``, and progress bars only
on a terminal (see :mod:`scalabl_pyro.utils.logging_utils`), so a failing command
prints its one line. Run it as ``scalabl`` or ``python -m scalabl_pyro.cli``.
"""

from scalabl_pyro.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
