"""Entry point: ``python -m index_service``."""

import os

# Before numpy loads: OpenBLAS threads fighting the event loop for 2 cores cost ms of p99.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from index_service.server import main  # noqa: E402

main()
