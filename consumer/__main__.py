"""The process entry: ``python -m consumer`` and the ``consumer`` console script.

Start-up builds about 75,000 objects that live as long as the process (pyarrow, botocore's service
model, every module). Collecting cycles while they are being built walks them again and again:
0.1-0.2 CPU-seconds of a run's ~1.7 s start-up, with nothing to free. So the cycle collector is
off from the first import until :func:`consumer.cli.main` knows the command: a run turns it back
on once its start-up is over (:func:`consumer.cli.settled_heap`), every other command at once.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    gc.disable()
    from consumer.cli import main as cli_main

    return cli_main(argv, collector_paused=True)


if __name__ == "__main__":
    raise SystemExit(main())
