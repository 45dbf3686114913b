"""`aigc serve`: the HTTP API and web page (app.py), worker threads (workers.py), history (history.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def serve(runs: list[str], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          device: str = "auto", slots: int = 16, max_queue: int = 16, history_dir: str | None = "serve-history",
          limits=None, log_level: str = "warning") -> None:
    """Load the runs, start a worker per run, and serve until interrupted."""
    import uvicorn

    from aigc.errors import AigcError
    from aigc.serve.app import Limits, create_app, load_models
    from aigc.serve.history import History
    from aigc.threads import ThreadPolicy
    from aigc.train import pick_device

    api_key = api_key or os.environ.get("AIGC_API_KEY") or None
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", file=sys.stderr)
    policy = ThreadPolicy(reserve=1)      # a core for the event loop that streams the tokens (docs/serve.md)
    policy.start()
    models = load_models([Path(r) for r in runs], pick_device(device), slots, max_queue, policy)
    history = None
    if history_dir:
        try:
            history = History(Path(history_dir))
        except OSError as e:
            raise AigcError(f"cannot keep the history in {history_dir}: {e.strerror or e}") from None
    app = create_app(models, api_key, limits or Limits(), history)
    names = ", ".join(f"{n} ({m.recipe.output})" for n, m in models.items())
    print(f"serving {names} on http://{host}:{port}/ (API: http://{host}:{port}/v1, {policy.threads} CPU threads)",
          file=sys.stderr)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        for m in models.values():
            m.worker.stop()
        if history is not None:
            history.close()
