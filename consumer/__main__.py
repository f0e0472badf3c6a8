"""The process entry: ``python -m consumer`` and the ``consumer`` console script.

Start-up builds about 75,000 objects that live as long as the process (pyarrow, botocore's service
model, every module). Collecting cycles while they are being built walks them again and again:
0.1-0.2 CPU-seconds of a run's ~1.7 s start-up, with nothing to free. So the cycle collector is
off from the first import until :func:`consumer.cli.main` knows the command: a run turns it back
on once its start-up is over (:func:`consumer.cli.settled_heap`), every other command at once.

The same heap is frozen again when the command returns, just before the interpreter exits: its
shutdown otherwise runs full collections over every object of the process, only for the memory to
go back to the operating system a moment later (0.15-0.2 CPU-s at the end of every run; 3 % of a
1M-record run). Modules are still torn down and their finalizers run as before; only cycles among
objects that lived the whole process are left to the process's exit.

A crash in native code (librdkafka, pyarrow, the decoder) prints every thread's Python stack to
stderr (:mod:`faulthandler`) before the process dies, so a status of -11 says where it happened.
Not on librdkafka's own threads: they block every signal, and a fault there ends the process at
once with nothing printed (consumer.group_requests has the one such crash seen).

``kill -USR1`` asks any command where it is (consumer.signals) from here on, before the second or
two of imports: a ``verify`` of a large output or a run still starting answers it too, where its
default action ended the process.
"""

from __future__ import annotations

import faulthandler
import gc
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    faulthandler.enable()
    gc.disable()
    from consumer.signals import dump_stacks_on_request

    dump_stacks_on_request()  # every command, from its first import on (SIGUSR1 ended it before)
    from consumer.cli import main as cli_main

    try:
        return cli_main(argv, collector_paused=True)
    finally:
        gc.freeze()


if __name__ == "__main__":
    raise SystemExit(main())
