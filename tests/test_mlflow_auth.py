"""The MLflow source against a real `mlflow server --app-name basic-auth` (MLflow's own auth app, its user store and
permission checks): points are read with a username/password from a Secret or from MLflow's env vars and equal
`MlflowClient.get_metric_history`; a wrong password (401), no credentials (401) and a user without permission on the
experiment (403) each give an `Unauthorized` health error that says which of the three it is and where the
credentials came from, and never carries the password."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from trainscope.collector.sources.base import SourceContext, SourceError
from trainscope.collector.sources.mlflow import MlflowSource

from mlflowfixtures import MlflowServer, log_points, same, truth

T0 = 1_700_000_000_000  # ms
ADMIN = ("admin", "admin-pass-0123456789")  # MLflow wants 12+ characters
READER, READER_PW = "ada", "ada-reads-0123456789"
WRONG_PW = "not-adas-password-42"
OUTSIDER, OUTSIDER_PW = "bob", "bob-is-outside-01234"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, str, str]]:
    """The auth app with a logged run, a reader (default permission READ) and a user denied the experiment."""
    with pytest.MonkeyPatch.context() as mp, \
            MlflowServer(tmp_path_factory.mktemp("mlflow-auth"), app_name="basic-auth", admin=ADMIN) as s:
        from mlflow.server import get_app_client

        mp.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])  # MLflow's client (and its auth client) read these
        mp.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
        auth = get_app_client("basic-auth", tracking_uri=s.url)
        auth.create_user(READER, READER_PW)
        auth.create_user(OUTSIDER, OUTSIDER_PW)
        c = s.client()
        exp = c.create_experiment("guarded")
        auth.grant_user_permission(OUTSIDER, "experiment", exp, "DENY")
        rid = c.create_run(exp, run_name="sft").info.run_id
        log_points(c, rid, "loss", ((i, T0 + i, 1.0 / (i + 1)) for i in range(3000)))
        want = truth(c, [rid])
        mp.delenv("MLFLOW_TRACKING_USERNAME")
        mp.delenv("MLFLOW_TRACKING_PASSWORD")
        s.want = want  # type: ignore[attr-defined]
        yield s, exp, rid


def secrets(user: str, password: str) -> Any:
    async def resolve(ref: dict[str, str]) -> str:
        assert ref["name"] == "mlflow-login"
        return {"username": user, "password": password + "\n"}[ref["key"]]  # a Secret made from a file
    return resolve


async def poll(config: dict[str, Any], resolve: Any = None) -> Any:
    src = MlflowSource(config, SourceContext(max_batch_points=100_000, resolve_secret=resolve))
    try:
        return await src.poll(None)
    finally:
        await src.aclose()


def stored(batch: Any) -> dict[tuple[str, str, int], tuple[float, float]]:
    return {(p.run, p.metric, p.step): (p.ts, p.value) for p in batch.points}


async def test_basic_auth_from_a_secret_reads_every_point(server: tuple[MlflowServer, str, str]) -> None:
    s, exp, _ = server
    batch = await poll({"trackingUri": s.url, "experimentId": exp, "basicAuthSecretRef": {"name": "mlflow-login"}},
                       secrets(READER, READER_PW))
    got, want = stored(batch), s.want  # type: ignore[attr-defined]
    assert got.keys() == want.keys() and all(same(got[k][1], want[k][1]) and got[k][0] == want[k][0] for k in want)
    assert not batch.more


async def test_basic_auth_from_mlflows_env_vars(server: tuple[MlflowServer, str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    s, _, rid = server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", READER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", READER_PW)
    batch = await poll({"trackingUri": s.url, "runId": rid})
    assert stored(batch).keys() == s.want.keys()  # type: ignore[attr-defined]


async def test_a_wrong_password_no_credentials_and_no_permission_say_which(
        server: tuple[MlflowServer, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    s, exp, rid = server
    by_secret = {"trackingUri": s.url, "experimentId": exp, "basicAuthSecretRef": {"name": "mlflow-login"}}

    with pytest.raises(SourceError) as wrong:
        await poll(by_secret, secrets(READER, WRONG_PW))
    assert wrong.value.reason == "Unauthorized" and wrong.value.retry_after == 300
    assert str(wrong.value) == (f"MLflow at {s.url} rejected the username and password from Secret 'mlflow-login' "
                                "(HTTP 401 to runs/search): wrong username or password, or an invalid token")

    with pytest.raises(SourceError) as none:
        await poll({"trackingUri": s.url, "runId": rid})
    assert none.value.reason == "Unauthorized"
    assert "requires authentication (HTTP 401 to runs/get) and no credentials are set: set basicAuthSecretRef" \
        in str(none.value)

    with pytest.raises(SourceError) as denied:
        await poll(by_secret, secrets(OUTSIDER, OUTSIDER_PW))
    assert denied.value.reason == "Unauthorized"
    # runs/search answers a denied experiment with no runs; the source asks experiments/get why
    assert str(denied.value) == (f"MLflow at {s.url} denied experiments/get (HTTP 403) to the user of the username "
                                 "and password from Secret 'mlflow-login': it has no permission to read this "
                                 "experiment or run")
    with pytest.raises(SourceError, match=r"denied runs/get \(HTTP 403\)"):
        await poll({"trackingUri": s.url, "runId": rid, "basicAuthSecretRef": {"name": "mlflow-login"}},
                   secrets(OUTSIDER, OUTSIDER_PW))

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", READER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", WRONG_PW)
    with pytest.raises(SourceError) as env_wrong:
        await poll({"trackingUri": s.url, "runId": rid})
    assert "rejected the username and password from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD" \
        in str(env_wrong.value)
    for e in (wrong, none, denied, env_wrong):
        assert not any(pw in str(e.value) for pw in (WRONG_PW, READER_PW, OUTSIDER_PW, ADMIN[1]))
