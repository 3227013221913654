"""Ray Serve (recsys/serve/ray_*.py): an HTTP answer is the offline merge of the checkpointed
members; a member that misses the deadline is left out; a killed member replica never hangs a
request; every bad request gets its 400.

One Ray for the module, started as a user starts a cluster (``ray start --head``, 2 CPUs) and
joined by this process through its address, the multi-node path; one application of the 3 toy
members on it."""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (scripts/setup_env.sh installs ray[serve])")
requests = pytest.importorskip("requests")

from ray import serve  # noqa: E402

from recsys.serve.ray_app import APP_NAME, RayServeOptions, member_deployment_name, start_app  # noqa: E402
from recsys.serve.ray_ingress import MergeOptions  # noqa: E402
from recsys.serve.ray_member import BatchOptions  # noqa: E402
from tests.test_serve import trained  # noqa: E402,F401  (the module-scoped checkpoint fixture)

SLOW = 777.0  # a dense value that makes member m1_fnn sleep (slow_marker_hook)
ROOT = Path(__file__).resolve().parents[1]


def slow_marker_hook(name: str, dense: np.ndarray, ids: np.ndarray) -> None:
    """Run in each member replica before its forward: m1_fnn takes 3 s on a batch holding SLOW."""
    if name == "m1_fnn" and dense.size and bool((dense == SLOW).any()):
        time.sleep(3.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sigmoid_mean(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-logits.astype(np.float64).mean(1)))


def _body(dense: np.ndarray, ids: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"dense": dense.tolist(), "sparse": ids.tolist(), **extra}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local cluster started as a user starts one (``ray start --head``, 2 CPUs, its own
    processes, stopped with it); its address.  This test process joins it as a driver.

    This Ray turns token authentication on for ``ray start`` by default; a driver that joins
    then needs ``RAY_AUTH_MODE=token`` in its environment before it imports Ray (docs/serving.md,
    "A Ray cluster").  This process imported Ray already, so the test cluster runs without it."""
    port = _free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                                 f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                                 "--disable-usage-stats"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            yield f"127.0.0.1:{port}"
        finally:
            os.killpg(head.pid, signal.SIGTERM)  # the head and every Ray process it started
            try:
                head.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def app(cluster: str, trained) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The 3-member application, deployed from this process onto ``cluster``; its URL."""
    cfg, ckpt, *_ = trained
    deadline = time.monotonic() + 60
    while True:  # the head takes a few seconds to listen
        try:
            ray.init(address=cluster, configure_logging=False, log_to_driver=False)
            break
        except (ConnectionError, RuntimeError, ray.exceptions.AuthenticationError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    # the hook crosses to the replicas by value: they cannot import this test module by name
    ray.cloudpickle.register_pickle_by_value(sys.modules[slow_marker_hook.__module__])
    try:
        opts = RayServeOptions(str(cfg), str(ckpt), hook=slow_marker_hook, max_batch_rows=64,
                               batching=BatchOptions(max_batch_size=8, batch_wait_timeout_s=0.005),
                               merge=MergeOptions(deadline_s=20.0, min_members=1))
        yield start_app(opts, port=_free_port(), address=cluster)
    finally:
        ray.shutdown()  # the cluster fixture stops the head, and Serve with it


@pytest.fixture(scope="module")
def raw_app(app: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path, np.ndarray]:
    """Raw Criteo rows converted with their vocabulary, a 2-member ensemble checkpointed on
    them, and its application under ``/raw`` beside ``app``: ``(url, config, test.tsv, offline
    member logits of the converted test split [N, 2])``."""
    import torch

    from recsys.checkpoint import GroupCheckpointer, TrainState
    from recsys.config import load_config
    from recsys.data.convert import ConvertConfig, convert
    from recsys.data.synth import write_criteo
    from recsys.ensemble import GroupTrain, build_group, member_names
    from recsys.serve.members import forward_members, load_trained_members

    tmp = tmp_path_factory.mktemp("raw_serve")
    train, test = tmp / "train.tsv", tmp / "test.tsv"
    write_criteo(train, 600, seed=1)
    write_criteo(test, 40, seed=2)
    schema = convert(ConvertConfig(dataset="criteo", output=str(tmp / "data"), progress=False,
                                   split_files={"train": [str(train)], "val": [str(test)], "test": [str(test)]}),
                     log=lambda s: None)
    specs = ["fnn:mlp=4,embedding_dim=4,seed=1", "fnn:mlp=4,embedding_dim=4,seed=2"]
    model = GroupTrain(build_group(specs, member_names(specs), [0, 1], schema))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    GroupCheckpointer(tmp / "ckpt" / "group0", None, group_rank=0).save(
        1, model, torch.optim.Adam(model.parameters()), TrainState(step=1, best_auc=0.5, best_step=1), {}, is_best=True)
    cfg = tmp / "c.toml"
    cfg.write_text(f'name = "raw"\ndata_dir = "{tmp / "data"}"\nmembers = {specs!r}\ngroups = [[0, 1]]\n'
                   .replace("'", '"'))
    c = load_config(cfg)
    logits = forward_members(load_trained_members(c, [0, 1], tmp / "ckpt"),
                             np.load(tmp / "data" / "test_dense.npy"),
                             np.load(tmp / "data" / "test_sparse.npy").astype(np.int64), schema.sparse_names)
    url = start_app(RayServeOptions(str(cfg), str(tmp / "ckpt"), merge=MergeOptions(deadline_s=20.0)),
                    port=urlsplit(app).port or 8000, name="raw", route_prefix="/raw")
    return url, cfg, test, logits


def test_raw_criteo_lines_over_http_equal_offline_evaluation(raw_app) -> None:  # type: ignore[no-untyped-def]
    """Raw lines (as in the log files) and raw rows (field: value) through the saved vocabulary
    give the probabilities of the converted test split, offline."""
    url, _, test, logits = raw_app
    lines = test.read_text().splitlines()
    got = requests.post(url, json={"lines": lines, "member_logits": True}, timeout=60).json()
    assert got.get("members_used") == 2, got
    np.testing.assert_allclose(np.array([got["member_logits"][n] for n in got["members"]]).T, logits,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["probability"], _sigmoid_mean(logits), rtol=1e-5)
    names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    rows = [dict(zip(names[1:], line.split("\t")[1:])) for line in lines[:5]]
    got = requests.post(url, json={"rows": rows}, timeout=60).json()
    np.testing.assert_allclose(got["probability"], _sigmoid_mean(logits[:5]), rtol=1e-5)
    unlabeled = [line.split("\t", 1)[1] for line in lines[:3]]
    got = requests.post(url, json={"lines": unlabeled, "labeled": False}, timeout=60).json()
    np.testing.assert_allclose(got["probability"], _sigmoid_mean(logits[:3]), rtol=1e-5)
    # a malformed raw row: 400 naming the row and the field
    bad = lines[:2] + [lines[2].replace("\t", "\tabc\t", 1).rsplit("\t", 1)[0]]
    r = requests.post(url, json={"lines": bad}, timeout=60)
    assert r.status_code == 400 and r.json()["error"].startswith("lines: row 2"), r.text
    r = requests.post(url, json={"rows": [{"I1": 1}]}, timeout=60)
    assert r.status_code == 400 and "row 0: missing field" in r.json()["error"], r.text


def test_cli_ray_engine_refuses_bad_options_in_one_line(trained, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from recsys.serve.cli import main

    cfg, ckpt, *_ = trained
    assert main(["--engine", "ray", "--config", str(cfg), "--checkpoint", str(ckpt), "--members", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --members must be >= 1, got 0\n"
    assert main(["--engine", "ray", "--config", str(cfg), "--checkpoint", str(ckpt), "--max-batch-size", "0"]) == 2
    assert "max_batch_size must be an integer >= 1" in capsys.readouterr().err


def test_http_answer_equals_the_offline_merge(app: str, trained) -> None:  # type: ignore[no-untyped-def]
    _, _, dense, ids, logits = trained
    got = requests.post(app, json=_body(dense, ids, member_logits=True), timeout=30).json()
    assert got["members_used"] == 3 and got["members"] == ["m0_fnn", "m1_fnn", "m2_fnn"] and got["missing"] == {}
    np.testing.assert_allclose(np.array([got["member_logits"][n] for n in got["members"]]).T, logits,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["probability"], _sigmoid_mean(logits), rtol=1e-5)
    assert requests.get(app, timeout=10).json()["members"] == ["m0_fnn", "m1_fnn", "m2_fnn"]
    # concurrent requests are batched in the members, and each gets its own rows' answer
    parts = [(dense[i:i + 5], ids[i:i + 5]) for i in range(0, 30, 5)]
    with cf.ThreadPoolExecutor(len(parts)) as pool:
        answers = list(pool.map(lambda p: requests.post(app, json=_body(*p), timeout=30).json(), parts))
    for i, a in enumerate(answers):
        np.testing.assert_allclose(a["probability"], _sigmoid_mean(logits[5 * i:5 * i + 5]), rtol=1e-5)


def test_deadline_merges_the_members_in_time(app: str, trained) -> None:  # type: ignore[no-untyped-def]
    _, _, dense, ids, logits = trained
    slow = dense[:4].copy()
    slow[0, 0] = SLOW
    t = time.monotonic()
    r = requests.post(app, json=_body(slow, ids[:4], deadline_ms=1000, member_logits=True), timeout=30)
    took = time.monotonic() - t
    got = r.json()
    assert r.status_code == 200 and took < 2.5, (took, got)
    assert got["members"] == ["m0_fnn", "m2_fnn"] and got["members_used"] == 2
    assert "deadline" in got["missing"]["m1_fnn"]
    with_slow = logits[:4].copy()  # the members' logits of the changed row
    with_slow[0, 0] = got["member_logits"]["m0_fnn"][0]
    with_slow[0, 2] = got["member_logits"]["m2_fnn"][0]
    np.testing.assert_allclose(got["probability"], _sigmoid_mean(with_slow[:, [0, 2]]), rtol=1e-5)
    # no member in time (a 1 us deadline): 503 with every member's reason, at once
    r = requests.post(app, json=_body(dense[:2], ids[:2], deadline_ms=0.001), timeout=30)
    assert r.status_code == 503 and "0 of 3 members answered" in r.json()["error"]
    assert "fewer than min_members = 1" in r.json()["error"]
    time.sleep(3)  # m1's replica finishes its slow batch


def _replica_actor(deployment: str) -> Any:
    from ray.util import list_named_actors

    names = [a for a in list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#{deployment}#")]
    assert len(names) == 1, names
    return ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])


def test_killed_member_replica_never_hangs_a_request(app: str, trained) -> None:  # type: ignore[no-untyped-def]
    _, _, dense, ids, logits = trained
    ray.kill(_replica_actor(member_deployment_name("m1_fnn")), no_restart=True)
    t = time.monotonic()
    r = requests.post(app, json=_body(dense, ids, deadline_ms=2000), timeout=30)
    assert time.monotonic() - t < 4.0
    got = r.json()
    if r.status_code == 200:  # answered by the others
        assert got["members"] == ["m0_fnn", "m2_fnn"] and "m1_fnn" in got["missing"]
        np.testing.assert_allclose(got["probability"], _sigmoid_mean(logits[:, [0, 2]]), rtol=1e-5)
    else:
        assert r.status_code == 503 and "m1_fnn" in got["error"]
    deadline = time.monotonic() + 90  # Serve replaces the replica; then all three answer again
    while time.monotonic() < deadline:
        got = requests.post(app, json=_body(dense, ids, deadline_ms=2000), timeout=30).json()
        if got.get("members_used") == 3:
            break
        time.sleep(1)
    assert got.get("members_used") == 3, got
    np.testing.assert_allclose(got["probability"], _sigmoid_mean(logits), rtol=1e-5)


BAD = [  # (body, status, what the one line says)
    (b"{not json", 400, "the body is not JSON"),
    (json.dumps([1, 2]).encode(), 400, "the body must be a JSON object"),
    ({"dense": [[0.5]], "sparse": [[1, 2]]}, 400, r"sparse: row 0 has 2 values, expected 3"),
    ({"dense": [[0.5, 1.0]], "sparse": [[1, 2, 3]]}, 400, r"dense: row 0 has 2 values, expected 1"),
    ({"dense": [["high"]], "sparse": [[1, 2, 3]]}, 400, r"row 0: dense .* 'high' is a str, not a number"),
    ({"dense": [[None]], "sparse": [[1, 2, 3]]}, 400, r"row 0: dense .* None is a NoneType, not a number"),
    ({"dense": [[0.5]], "sparse": [[1, "x", 3]]}, 400, r"row 0: id 'x' of .* is a str, not an integer"),
    ({"dense": [[0.5]], "sparse": [[1, 2.5, 3]]}, 400, r"row 0: id 2.5 of .* is not an integer"),
    ({"dense": [[0.5]], "sparse": [[1, True, 3]]}, 400, r"row 0: id True of .* is a bool, not an integer"),
    ({"dense": [[True]], "sparse": [[1, 2, 3]]}, 400, r"row 0: dense .* True is a bool, not a number"),
    ({"dense": [[0.5]], "sparse": [[1, 99, 3]]}, 400, r"row 0: id 99 of .* is outside its table"),
    ({"dense": [[0.5]], "sparse": "1,2,3"}, 400, "sparse must be a list of rows"),
    ({"dense": [[0.5]] * 65, "sparse": [[1, 2, 3]] * 65}, 400, "65 rows in sparse, more than max_batch_rows = 64"),
    ({"dense": [], "sparse": []}, 400, r"request has no rows"),
    ({"dense": [[0.5]], "sparse": [[1, 2, 3]], "member_logit": True}, 400, "unknown field 'member_logit'"),
    ({"dense": [[0.5]], "sparse": [[1, 2, 3]], "deadline_ms": -1}, 400, "deadline_ms must be a number"),
    ({"dense": [[0.5]]}, 400, r'an ids request needs "sparse"'),
    ({"member_logits": True}, 400, r"exactly one form"),
    ({"lines": ["1\t2\t3"]}, 501, "raw requests need a converted vocab/ directory"),
]


@pytest.mark.parametrize("body,status,match", BAD, ids=[m[:30] for _, _, m in BAD])
def test_each_bad_request_gets_its_one_line_error(app: str, body: Any, status: int, match: str) -> None:
    import re

    r = requests.post(app, **({"data": body} if isinstance(body, bytes) else {"json": body}), timeout=30)
    assert r.status_code == status, r.text
    line = r.json()["error"]
    assert "\n" not in line and re.search(match, line), line


def test_serve_config_file_args_become_the_options() -> None:
    """configs/serve_demo.yaml's ``args`` (``serve run``'s ``app_builder``) read as the CLI's
    options; an unknown key is one line."""
    import yaml

    from recsys.serve.request import ServeError

    doc = yaml.safe_load((ROOT / "configs" / "serve_demo.yaml").read_text())
    app_doc = doc["applications"][0]
    assert app_doc["import_path"] == "recsys.serve.ray_app:app_builder"
    opts = RayServeOptions.from_args(app_doc["args"])
    assert (opts.config, opts.checkpoint, opts.num_cpus, opts.replicas) == ("configs/demo.toml", "checkpoints/demo",
                                                                            0.25, 1)
    assert opts.merge == MergeOptions(deadline_s=1.0, min_members=1)
    assert opts.batching == BatchOptions(max_batch_size=16, batch_wait_timeout_s=0.002)
    with pytest.raises(ServeError, match="unknown serve argument 'deadline'"):
        RayServeOptions.from_args({**app_doc["args"], "deadline": 5})
