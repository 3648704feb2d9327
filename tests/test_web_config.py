"""--web-config: TLS and basic auth for `pymemcg export`, in exporter-toolkit's
web-config.yml format, with a real TLS client (the ssl module) against a
running exporter and a throwaway certificate made by `openssl req`."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import ssl
import subprocess
import sys
import urllib.parse

import pytest

from conftest import require_module  # noqa: E402

bcrypt = require_module("bcrypt")
require_module("yaml")
require_module("prometheus_client")

import pymemcg  # noqa: E402
from pymemcg import web_config  # noqa: E402
from pymemcg.web_config import WebConfigError, load  # noqa: E402

from test_prometheus import start_exporter  # noqa: E402

USER, PASSWORD = "prometheus", "correct horse battery staple"


def make_cert(directory: str, name: str = "tls") -> tuple:
    """A self-signed certificate for 127.0.0.1 / localhost: (cert, key) paths."""
    cert, key = os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = make_cert(str(d))
    other_cert, other_key = make_cert(str(d), "other")
    return {"dir": str(d), "cert": cert, "key": key, "other_cert": other_cert,
            "other_key": other_key}


def write(tmp_path, text: str) -> str:
    path = tmp_path / "web-config.yml"
    path.write_text(text)
    return str(path)


def hashed(password: str = PASSWORD) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- the file ---

def test_a_full_config_loads(tmp_path, tls_files):
    # relative paths are relative to the config file, as exporter-toolkit reads them
    rel_cert = os.path.relpath(tls_files["cert"], tmp_path)
    rel_key = os.path.relpath(tls_files["key"], tmp_path)
    cfg = load(write(tmp_path, f"tls_server_config:\n  cert_file: {rel_cert}\n"
                               f"  key_file: {rel_key}\n  min_version: TLS13\n"
                               f"basic_auth_users:\n  {USER}: '{hashed()}'\n"))
    assert cfg.tls.cert_file == tls_files["cert"]
    ctx = cfg.ssl_context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3 and ctx.verify_mode == ssl.CERT_NONE
    assert set(cfg.users) == {USER}


def test_an_empty_config_is_plain_http_without_auth(tmp_path):
    cfg = load(write(tmp_path, ""))
    assert cfg.ssl_context() is None and cfg.authorized(None)


@pytest.mark.parametrize("text, match", [
    (": : :\n  - [", "not valid YAML"),
    ("- a list\n", "top level must be a mapping"),
    ("tls_config:\n  cert_file: x\n", "tls_config: not a key pymemcg implements"),
    ("tls_server_config:\n  cert_file: c\n  key_file: k\n  cipher_suites: [X]\n",
     "cipher_suites: not a key"),
    ("tls_server_config:\n  cert_file: c\n", "key_file is required"),
    ("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAnyClientCert\n",
     "unverified certificates"),
    ("tls_server_config:\n  cert_file: c\n  key_file: k\n"
     "  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
    ("tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: SSL3\n",
     "not one of"),
    ("tls_server_config:\n  cert_file: nonexistent.crt\n  key_file: nonexistent.key\n",
     "cannot load the certificate"),
    ("basic_auth_users:\n  prometheus: plaintext-password\n", "not a bcrypt hash"),
    ("basic_auth_users: [prometheus]\n", "must map user names"),
    ("http_server_config:\n  http2: false\n", "http_server_config: not a key"),
])
def test_bad_files_are_clean_errors(tmp_path, text, match):
    with pytest.raises(WebConfigError, match=match) as e:
        load(write(tmp_path, text))
    assert isinstance(e.value, pymemcg.Error)


def test_a_key_that_does_not_match_its_certificate(tmp_path, tls_files):
    with pytest.raises(WebConfigError, match="key matching"):
        load(write(tmp_path, f"tls_server_config:\n  cert_file: {tls_files['cert']}\n"
                             f"  key_file: {tls_files['other_key']}\n"))


def test_a_missing_file(tmp_path):
    with pytest.raises(WebConfigError, match="cannot read"):
        load(str(tmp_path / "nope.yml"))


def test_authorization_header_checks(tmp_path):
    cfg = load(write(tmp_path, f"basic_auth_users:\n  {USER}: '{hashed()}'\n"))
    assert cfg.authorized(basic(USER, PASSWORD))
    assert cfg.authorized(basic(USER, PASSWORD))              # from the cache of successes
    for header in (None, "", basic(USER, "wrong"), basic("mallory", PASSWORD),
                   "Bearer " + PASSWORD, "Basic !!!not-base64", "Basic " +
                   base64.b64encode(b"no-colon").decode(), basic(USER, "x" * 100)):
        assert not cfg.authorized(header), header


def test_without_the_web_extra_is_a_clean_error(tmp_path):
    code = ("import sys; sys.modules['yaml'] = None\n"
            "import pymemcg.web_config as w\n"
            "try:\n"
            "    w.load(sys.argv[1])\n"
            "except w.WebConfigExtraMissing as e:\n"
            "    print('missing', e)\n")
    out = subprocess.run([sys.executable, "-c", code, write(tmp_path, "")],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("missing") and "pymemcg[web]" in out.stdout, out


# --- a running exporter ---

def get(url: str, context: ssl.SSLContext, auth=None) -> tuple:
    """(status, body) of a GET over TLS."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=context, timeout=20)
    try:
        conn.request("GET", u.path, headers={"Authorization": auth} if auth else {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.fixture
def tls_exporter(bpf_ok, cgroups, tmp_path, tls_files):
    cfg = write(tmp_path, f"tls_server_config:\n  cert_file: {tls_files['cert']}\n"
                          f"  key_file: {tls_files['key']}\n"
                          f"basic_auth_users:\n  {USER}: '{hashed()}'\n")
    proc, url = start_exporter("--listen", "127.0.0.1:0", "--backend", "bpf", "--stats", "usage",
                               "--web-config", cfg, cgroups.base)
    try:
        yield url, cgroups.base
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "Traceback" not in err, err


def test_tls_and_basic_auth_with_a_real_client(tls_exporter, tls_files):
    url, base = tls_exporter
    assert url.startswith("https://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=tls_files["cert"])
    status, body = get(url, trusting, basic(USER, PASSWORD))
    assert status == 200 and "memcg_usage{" in body
    assert get(url, trusting, basic(USER, "wrong"))[0] == 401
    assert get(url, trusting)[0] == 401
    # a client that does not trust the certificate refuses the server
    with pytest.raises(ssl.SSLCertVerificationError):
        get(url, ssl.create_default_context(cafile=tls_files["other_cert"]), basic(USER, PASSWORD))
    # no TLS: the server answers nothing over plain HTTP
    plain = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(plain.hostname, plain.port, timeout=20)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError,
                        http.client.BadStatusLine)):
        conn.request("GET", "/metrics")
        conn.getresponse()
    conn.close()
    # and still serves after those
    assert get(url, trusting, basic(USER, PASSWORD))[0] == 200


def test_a_bad_web_config_stops_export_before_it_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pymemcg", "export", "--listen", "127.0.0.1:0",
                           "--web-config", write(tmp_path, "basic_auth_users:\n  u: nothash\n")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not a bcrypt hash" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert web_config.WebConfigError.__mro__[1] is pymemcg.Error
