"""BCE auth v1: trainscope's signer agrees with Baidu's own (bce-python-sdk), and the fake Qianfan server checks
signatures the way Baidu does, accepting the SDK's requests and refusing wrong ones."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from baidubce import protocol as bce_protocol
from baidubce import utils as bce_utils
from baidubce.auth import bce_v1_signer
from baidubce.auth.bce_credentials import BceCredentials
from baidubce.bce_client_configuration import BceClientConfiguration
from baidubce.exception import BceHttpClientError, BceServerError
from baidubce.http import bce_http_client, handler
from baidubce.retry.retry_policy import NoRetryPolicy
from hypothesis import given, settings
from hypothesis import strategies as st

from trainscope.collector.sources.bce_auth import Credentials, authorization, canonical_time, uri_encode

from fakes.qianfan_server import JOB_DETAIL, FakeQianfan, serve

AK, SK = "ak0123456789abcdefSIGN", "sk/+=0123456789abcdefSIGN"
T = 1_695_130_633  # 2023-09-19T13:37:13Z


def official(method: str, path: str, headers: dict[str, str], params: dict[str, str], *, ak: str = AK,
             sk: str = SK, timestamp: int = T, expiration: int = 1800, signed: list[str] | None = None) -> str:
    """Baidu's signer, called the way its own clients call it: the path already encoded with append_uri's rule."""
    result = bce_v1_signer.sign(
        BceCredentials(ak, sk), method.encode(), bce_utils.normalize_string(path.encode("utf-8"), False),
        {k.encode(): v.encode("utf-8") for k, v in headers.items()},
        {k.encode("utf-8"): v.encode("utf-8") for k, v in params.items()},
        timestamp=timestamp, expiration_in_seconds=expiration,
        headers_to_sign=None if signed is None else [s.encode() for s in signed])
    return result.decode()


CASES: list[dict[str, Any]] = [
    # the Qianfan jobDetail request as this source sends it
    {"method": "POST", "path": "/wenxinworkshop/finetune/jobDetail", "params": {},
     "headers": {"Host": "qianfan.baidubce.com", "Content-Type": "application/json",
                 "x-bce-date": "2023-09-19T13:37:13Z"},
     "signed": ["content-type", "host", "x-bce-date"], "body": b'{"taskId":7263,"jobId":4612}'},
    # the seed's curl example signs host;x-bce-date only
    {"method": "POST", "path": "/wenxinworkshop/finetune/jobDetail", "params": {},
     "headers": {"Host": "qianfan.baidubce.com", "x-bce-date": "2023-09-19T13:37:10Z",
                 "Content-Type": "application/json"},
     "signed": ["host", "x-bce-date"], "body": b'{"taskId": 7263, "jobId": 4612}'},
    # V2-style query strings, a port in Host
    {"method": "GET", "path": "/v2/finetuning", "params": {"Action": "DescribeFineTuningTasks", "pageSize": "10"},
     "headers": {"Host": "qianfan.baidubce.com:8443", "x-bce-date": "2023-09-19T13:37:13Z"},
     "signed": ["host", "x-bce-date"], "body": b""},
    # reserved and non-ASCII characters everywhere
    {"method": "PUT", "path": "/v1/数据集/a b+c/~user/(1)!*'@:$,;=&?/ü%", "params": {
        "a b": "c/d", "q": "=&?#", "empty": "", "ключ": "значение", "tilde~": "x.y-z_"},
     "headers": {"Host": "bj.bcebos.com", "x-bce-date": "2023-09-19T13:37:13Z", "x-bce-meta-名字": " 值 ",
                 "Content-Type": "text/plain; charset=utf-8"},
     "signed": ["content-type", "host", "x-bce-date", "x-bce-meta-名字"], "body": b"hello"},
    # mixed-case names, values with spaces around them, the body covered through content-length and content-md5
    {"method": "POST", "path": "/", "params": {"Authorization2": "x"},
     "headers": {"HOST": "  127.0.0.1:8080 ", "X-Bce-Date": "2023-09-19T13:37:13Z",
                 "Content-Length": "2", "Content-MD5": "mZFLkyvTelC5g8XnyQrpOw==",
                 "X-BCE-Request-Id": "4a5f-ø"},
     "signed": ["content-length", "content-md5", "host", "x-bce-date", "x-bce-request-id"], "body": b"{}"},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['method']} {c['path'][:24]}")
@pytest.mark.parametrize(("expiration", "timestamp"), [(1800, T), (300, 1_700_000_000), (180000, 86_400)])
def test_authorization_equals_the_official_signer(case: dict[str, Any], expiration: int, timestamp: int):
    mine = authorization(Credentials(AK, SK), case["method"], case["path"], headers=case["headers"],
                         params=case["params"], timestamp=timestamp, expiration=expiration,
                         signed_headers=case["signed"])
    theirs = official(case["method"], case["path"], case["headers"], case["params"], timestamp=timestamp,
                      expiration=expiration, signed=case["signed"])
    assert mine == theirs
    assert mine.startswith(f"bce-auth-v1/{AK}/{canonical_time(timestamp)}/{expiration}/{';'.join(case['signed'])}/")


def test_the_body_is_not_signed_unless_a_header_covers_it():
    base = CASES[0]
    a = authorization(Credentials(AK, SK), "POST", base["path"], headers=base["headers"], timestamp=T,
                      signed_headers=base["signed"])
    assert a == official("POST", base["path"], base["headers"], {}, signed=base["signed"])
    other_key = authorization(Credentials(AK, SK + "x"), "POST", base["path"], headers=base["headers"], timestamp=T,
                              signed_headers=base["signed"])
    assert other_key != a and other_key.rsplit("/", 1)[0] == a.rsplit("/", 1)[0]  # only the signature differs


def test_uri_encoding_matches_the_sdk_over_every_byte():
    every = "".join(chr(i) for i in range(1, 128)) + "é中😀"
    assert uri_encode(every) == bce_utils.normalize_string(every.encode()).decode()
    assert uri_encode(every, keep_slash=True) == bce_utils.normalize_string(every.encode(), False).decode()


def test_credentials_never_show_their_keys():
    creds = Credentials(AK, SK)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert AK not in text and SK not in text


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12)


@settings(max_examples=150, deadline=None, database=None)  # no .hypothesis/ folder in the repo
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       path=st.lists(_text, max_size=4).map(lambda parts: "/" + "/".join(parts)),
       params=st.dictionaries(_text.filter(lambda k: k.lower() != "authorization"), _text, max_size=4),
       extra=st.dictionaries(st.from_regex(r"[Xx]-[Bb][Cc][Ee]-[A-Za-z0-9-]{1,8}", fullmatch=True),
                             _text.filter(lambda v: v.strip(" \t\x0b\x0c") != ""), max_size=3)
       .filter(lambda d: len({k.lower() for k in d}) == len(d)),  # one header per name
       timestamp=st.integers(1, 4_000_000_000), expiration=st.integers(1, 10**6))
def test_random_requests_agree_with_the_official_signer(method: str, path: str, params: dict[str, str],
                                                        extra: dict[str, str], timestamp: int, expiration: int):
    headers = {"Host": "qianfan.baidubce.com", "x-bce-date": canonical_time(timestamp), **extra}
    signed = sorted({"host", "x-bce-date", *(k.lower() for k in extra)})
    mine = authorization(Credentials(AK, SK), method, path, headers=headers, params=params, timestamp=timestamp,
                         expiration=expiration, signed_headers=signed)
    assert mine == official(method, path, headers, params, timestamp=timestamp, expiration=expiration, signed=signed)


# ---- the fake server checks signatures as Baidu does -----------------------------------------------------------

JOB = {"id": 4612, "taskId": 7263, "taskName": "sft", "trainStatus": "RUNNING", "progress": 10, "runTime": 60,
       "trainTime": 30, "startTime": "2023-09-19 21:00:00", "finishTime": "0000-00-00 00:00:00"}
BODY = json.dumps({"taskId": 7263, "jobId": 4612}).encode()


@pytest.fixture
def fake() -> Iterator[FakeQianfan]:
    f = FakeQianfan(keys={AK: SK})
    f.set_job(7263, 4612, [JOB])
    with serve(f):
        yield f


def sdk_signed_headers(url: str, *, ak: str = AK, sk: str = SK, path: str = JOB_DETAIL) -> dict[str, str]:
    """Headers signed exactly as the Qianfan SDK's iam_sign does: Baidu's signer over content-type, host, x-bce-date."""
    now = int(time.time())
    headers = {"Content-Type": "application/json", "Host": httpx.URL(url).netloc.decode(),
               "x-bce-date": bce_utils.get_canonical_time(now).decode()}
    auth = bce_v1_signer.sign(BceCredentials(ak, sk), b"POST", path.encode(),
                              {k.encode(): v for k, v in headers.items()}, {}, timestamp=now,
                              expiration_in_seconds=300, headers_to_sign={k.lower().encode() for k in headers})
    return {**headers, "Authorization": auth.decode()}


def test_fake_accepts_a_request_signed_by_the_official_signer(fake: FakeQianfan):
    resp = httpx.post(fake.url + JOB_DETAIL, content=BODY, headers=sdk_signed_headers(fake.url))
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"]["taskName"] == "sft"
    assert [s.verdict for s in fake.seen] == ["ok"]


@pytest.mark.parametrize(("ak", "sk", "status", "code"), [
    (AK, SK + "-wrong", 400, "SignatureDoesNotMatch"),
    ("some-other-ak", SK, 403, "InvalidAccessKeyId"),
])
def test_fake_refuses_a_wrong_key(fake: FakeQianfan, ak: str, sk: str, status: int, code: str):
    resp = httpx.post(fake.url + JOB_DETAIL, content=BODY, headers=sdk_signed_headers(fake.url, ak=ak, sk=sk))
    assert resp.status_code == status and resp.json()["code"] == code
    assert "result" not in resp.json()
    assert [s.verdict for s in fake.seen] == [code]


def test_fake_refuses_tampered_requests(fake: FakeQianfan):
    good = sdk_signed_headers(fake.url)
    tampered = [
        ("POST", fake.url + JOB_DETAIL + "?taskId=1", good),  # a query string that was not signed
        ("POST", fake.url + JOB_DETAIL.upper(), good),  # another path
        ("POST", fake.url + JOB_DETAIL, {**good, "Content-Type": "text/plain"}),  # a signed header changed
        ("POST", fake.url + JOB_DETAIL, {**good, "x-bce-date": "2020-01-01T00:00:00Z"}),
        ("POST", fake.url + JOB_DETAIL, {k: v for k, v in good.items() if k != "Authorization"}),
    ]
    for method, url, headers in tampered:
        resp = httpx.request(method, url, content=BODY, headers=headers)
        assert resp.status_code in (400, 403), (url, headers, resp.text)
    assert [s.verdict for s in fake.seen] == ["SignatureDoesNotMatch"] * 4 + ["InvalidHTTPAuthHeader"]


def test_fake_refuses_an_expired_signature():
    f = FakeQianfan(keys={AK: SK}, clock_offset=3600)  # the server's clock is an hour ahead
    f.set_job(7263, 4612, [JOB])
    with serve(f):
        resp = httpx.post(f.url + JOB_DETAIL, content=BODY, headers=sdk_signed_headers(f.url))
    assert resp.status_code == 400 and resp.json()["code"] == "RequestExpired"


def _send_with_the_sdk_client(url: str, sk: str) -> Any:
    """The SDK's own HTTP client (http.client, its signer, default signed headers) against the fake."""
    config = BceClientConfiguration(credentials=BceCredentials(AK, sk), endpoint=httpx.URL(url).netloc,
                                    protocol=bce_protocol.HTTP, connection_timeout_in_mills=5000)
    config.retry_policy = NoRetryPolicy()
    return bce_http_client.send_request(config, bce_v1_signer.sign, [handler.parse_error, handler.parse_json],
                                        b"POST", JOB_DETAIL.encode(), BODY,
                                        {b"Content-Type": b"application/json"}, {})


def test_fake_accepts_the_sdk_http_client_and_refuses_its_wrong_key(fake: FakeQianfan):
    response = _send_with_the_sdk_client(fake.url, SK)
    assert response.result.task_name == "sft"  # the SDK turns camelCase into snake_case
    with pytest.raises(BceHttpClientError) as err:
        _send_with_the_sdk_client(fake.url, "not-the-key")
    refused = err.value.last_error
    assert isinstance(refused, BceServerError)
    assert refused.code == "SignatureDoesNotMatch" and refused.status_code == 400
    assert [s.verdict for s in fake.seen] == ["ok", "SignatureDoesNotMatch"]
    assert fake.seen[0].headers["authorization"].split("/")[4] == ""  # the SDK client names no signed headers
