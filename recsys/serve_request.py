"""Deprecated path: the request contract now lives in ``recsys.serve.request`` (this module
re-exports it for one release).

Example::

    from recsys.serve.request import RequestSpec   # was: from recsys.serve_request import RequestSpec
"""
from __future__ import annotations

from recsys.cli import warn_moved

warn_moved("recsys.serve_request", "recsys.serve.request", __name__)

from recsys.serve.request import (DEFAULT_MAX_ABS_DENSE, DEFAULT_MAX_BATCH_ROWS, RequestError, RequestSpec, ServeError,
                                  validate_request)

__all__ = ["DEFAULT_MAX_ABS_DENSE", "DEFAULT_MAX_BATCH_ROWS", "RequestError", "RequestSpec", "ServeError",
           "validate_request"]
