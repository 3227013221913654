"""The ingress deployment: one HTTP request in, every member asked at once, the logits that
arrive before the deadline merged into one answer.

Why the deadline lives here: an ensemble can answer from the members that made it in time
(each member alone is a model; the merge of m of them is the m-member ensemble, whose AUC
docs/serving.md measures), so a slow or dead member costs a little AUC, not the answer.
Nothing here waits without a deadline: a member that does not answer in time is left out,
its call cancelled; a member whose replica died fails its call and is left out too (Serve
restarts the replica meanwhile); fewer than ``min_members`` answers is HTTP 503 with the
reason of each missing member.

The HTTP contract (``POST /``, JSON body: ``recsys.serve.ray_parse``):

- 200 ``{"probability": [B floats], "members_used": m, "members": [names used],
  "missing": {name: reason}, "member_logits": {name: [B floats]}}`` (the last only when the
  request asked ``"member_logits": true``); ``probability = sigmoid(mean of the m logits)``;
- 400 ``{"error": "<one line naming the field>"}``: not JSON, unknown key, wrong field count,
  a non-numeric dense value, an id outside its table, too many rows, a too-large body;
- 501: a raw request to a server without a vocabulary; 503: too few members in time.
- ``GET /``: the members, the deadline and the limits (a health and discovery answer).

Example::

    ingress = serve.deployment(EnsembleIngress).options(ray_actor_options={"num_cpus": 0.25})
    app = ingress.bind(member_apps, names, spec, "data/demo/criteo", MergeOptions(deadline_s=0.5))
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Mapping, Sequence

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse

from recsys.errors import one_line
from recsys.serve.ray_parse import BodyParser, RawUnsupported
from recsys.serve.request import RequestError, RequestSpec, ServeError

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

__all__ = ["EnsembleIngress", "MergeOptions", "gather_by_deadline", "merge_probability"]


@dataclass(frozen=True)
class MergeOptions:
    """``deadline_s``: a request's budget from its arrival at the ingress (a request may ask for
    less with ``deadline_ms``); ``min_members``: the fewest member answers merged into a reply
    (fewer: HTTP 503); ``max_body_bytes``: the largest body read (larger: HTTP 400)."""

    deadline_s: float = 1.0
    min_members: int = 1
    max_body_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if not (isinstance(self.deadline_s, (int, float)) and 0 < self.deadline_s < math.inf):
            raise ServeError(f"deadline_s must be a number of seconds > 0, got {self.deadline_s!r}")
        if isinstance(self.min_members, bool) or not isinstance(self.min_members, int) or self.min_members < 1:
            raise ServeError(f"min_members must be an integer >= 1, got {self.min_members!r}")
        if isinstance(self.max_body_bytes, bool) or not isinstance(self.max_body_bytes, int) \
                or self.max_body_bytes < 1:
            raise ServeError(f"max_body_bytes must be an integer >= 1, got {self.max_body_bytes!r}")


def merge_probability(logits: np.ndarray) -> np.ndarray:
    """``sigmoid(mean logit)`` [B] of member logits [B, m], in float64 (the evaluation merge)."""
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64).mean(axis=1)))


async def gather_by_deadline(calls: Mapping[str, Awaitable[Any]], timeout_s: float
                             ) -> tuple[dict[str, Any], dict[str, str]]:
    """Awaits every call at once for at most ``timeout_s``: ``(answers, missing)``, where
    ``answers`` maps a name to its result and ``missing`` a name to one line saying why it has
    none (late: cancelled; failed: its error).  Never waits longer than ``timeout_s``."""
    tasks = {name: asyncio.ensure_future(call) for name, call in calls.items()}
    done, _ = await asyncio.wait(tasks.values(), timeout=max(0.0, timeout_s)) if tasks else (set(), set())
    answers: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for name, task in tasks.items():
        if task not in done:
            task.cancel()
            missing[name] = f"no answer in the {max(0.0, timeout_s) * 1e3:.0f} ms left before the deadline"
        elif (exc := task.exception()) is not None:
            missing[name] = f"{type(exc).__name__}: {one_line(exc)[:300]}"
        else:
            answers[name] = task.result()
    return answers, missing


def _error(status: int, line: str) -> JSONResponse:
    return JSONResponse({"error": one_line(line)}, status_code=status)


class EnsembleIngress:
    """Parses, checks, fans out, merges.  ``members``: one deployment handle per member (in
    ``names`` order); ``spec``: the request contract; ``data_dir``: where ``vocab/`` is, for raw
    requests (None: ids only); ``merge``: deadline and minimum."""

    def __init__(self, members: Sequence[DeploymentHandle], names: Sequence[str], spec: RequestSpec,
                 data_dir: str | None, merge: MergeOptions) -> None:
        if len(members) != len(names) or not names:
            raise ServeError(f"{len(members)} member handles for {len(names)} names")
        self.members = dict(zip(names, members))
        self.spec = spec
        self.merge = merge
        self.parser = BodyParser.for_data(spec, Path(data_dir) if data_dir else None, merge.deadline_s * 1e3)

    async def warmup(self, timeout_s: float) -> dict[str, str]:
        """Sends one row of id 0 (inside every table) to every member and waits up to
        ``timeout_s``; returns the members that did not answer, with why.  The first call
        through a handle sets up its routing (~1 s), which would otherwise make the first
        user request miss its deadline; ``start_app`` calls this before returning."""
        dense = np.zeros((1, len(self.spec.dense_names)), np.float32)
        ids = np.zeros((1, len(self.spec.sparse_names)), np.int64)
        _, missing = await gather_by_deadline({n: h.logits.remote(dense, ids) for n, h in self.members.items()},
                                              timeout_s)
        return missing

    async def __call__(self, request: Request) -> JSONResponse:
        t0 = time.monotonic()
        if request.method == "GET":
            return JSONResponse({"members": list(self.members), **asdict(self.merge),
                                 "max_batch_rows": self.spec.max_batch_rows,
                                 "sparse_fields": list(self.spec.sparse_names),
                                 "dense_fields": list(self.spec.dense_names)})
        if request.method != "POST":
            return _error(405, f"{request.method} is not served; POST a JSON body (GET describes the server)")
        try:
            return await self._predict(request, t0)
        except RequestError as e:
            return _error(400, str(e))
        except RawUnsupported as e:
            return _error(501, str(e))
        except ServeError as e:
            return _error(503, str(e))

    async def _predict(self, request: Request, t0: float) -> JSONResponse:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.merge.max_body_bytes:
            raise RequestError(f"the body has {length} bytes, more than max_body_bytes = "
                               f"{self.merge.max_body_bytes}; split the request")
        raw = await request.body()
        if len(raw) > self.merge.max_body_bytes:
            raise RequestError(f"the body has {len(raw)} bytes, more than max_body_bytes = "
                               f"{self.merge.max_body_bytes}; split the request")
        parsed = self.parser.parse(raw)
        dense, ids = self.spec.validate(parsed.dense, parsed.ids)
        budget = self.merge.deadline_s if parsed.deadline_ms is None else parsed.deadline_ms / 1e3
        calls = {name: h.logits.remote(dense, ids) for name, h in self.members.items()}
        answers, missing = await gather_by_deadline(calls, budget - (time.monotonic() - t0))
        for name in missing:
            calls[name].cancel()
        if len(answers) < self.merge.min_members:
            why = "; ".join(f"{n}: {r}" for n, r in missing.items())
            raise ServeError(f"{len(answers)} of {len(self.members)} members answered within "
                             f"{budget * 1e3:g} ms, fewer than min_members = {self.merge.min_members} ({why})")
        used = [n for n in self.members if n in answers]
        logits = np.stack([np.asarray(answers[n], np.float32).reshape(-1) for n in used], axis=1)  # [B, m]
        if logits.shape[0] != ids.shape[0]:
            raise ServeError(f"a member answered {logits.shape[0]} logits for {ids.shape[0]} rows")
        body: dict[str, Any] = {"probability": merge_probability(logits).tolist(), "members_used": len(used),
                                "members": used, "missing": missing}
        if parsed.member_logits:
            body["member_logits"] = {n: logits[:, i].tolist() for i, n in enumerate(used)}
        return JSONResponse(body)
