"""TLS and basic authentication for `pymemcg export`, configured as every
Prometheus exporter is: a web-config.yml file (exporter-toolkit's format).

    tls_server_config:
      cert_file: /etc/pymemcg/tls.crt      # relative paths: to this file's directory
      key_file: /etc/pymemcg/tls.key
      client_ca_file: /etc/pymemcg/ca.crt  # optional: clients must show a certificate
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12                   # TLS10 ... TLS13; default TLS12
      max_version: TLS13
    basic_auth_users:
      prometheus: $2b$12$...               # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')

Needs the `web` extra (`pip install 'pymemcg[web]'`: PyYAML, bcrypt).
Keys this module does not implement (cipher_suites, curve_preferences,
http_server_config, ...) are refused with an error, never ignored: a
setting that silently did nothing would weaken what the file asks for.

`load(path)` reads and checks the file; `WebConfig.ssl_context()` is the
server's ssl.SSLContext (None without TLS); `WebConfig.authorized(header)`
checks an Authorization header; `secure(server, config)` applies both to
the exporter's bound HTTP server (pymemcg.prometheus.make_server).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import ssl
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Optional, Set, Tuple

from . import forksafe
from .errors import quoted
# importable from here as they always were
from .errors import WebConfigError as WebConfigError
from .errors import WebConfigExtraMissing as WebConfigExtraMissing

if TYPE_CHECKING:
    from .http_server import BoundedHTTPServer


#: client_auth_type -> what ssl verifies (exporter-toolkit's names)
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Go's RequestClientCert / RequireAnyClientCert take a certificate without
# verifying it: Python's ssl module cannot, so they are refused
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
            "max_version"}
TOP_KEYS = {"tls_server_config", "basic_auth_users"}

#: a valid bcrypt hash compared against when the user is unknown, so that an
#: unknown user costs the same time as a wrong password
_DUMMY_HASH = b"$2b$10$" + b"." * 53


def _imports() -> Tuple[Any, Any]:
    try:
        import bcrypt
        import yaml
    except ImportError as e:
        raise WebConfigExtraMissing(
            f"--web-config needs PyYAML and bcrypt ({e}): install the extra with "
            f"`pip install 'pymemcg[web]'`") from None
    return yaml, bcrypt


@dataclass
class TlsConfig:
    """tls_server_config, with paths made absolute."""

    cert_file: str
    key_file: str
    client_ca_file: Optional[str] = None
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: Optional[ssl.TLSVersion] = None


@dataclass
class WebConfig:
    """A loaded web config: TLS (None: plain HTTP) and basic-auth users
    (name -> bcrypt hash; empty: no authentication)."""

    path: str
    tls: Optional[TlsConfig] = None
    users: Dict[str, bytes] = field(default_factory=dict)
    _ok: Dict[Tuple[str, bytes], bool] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        forksafe.renew_in_child(self, "_lock")

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        """The server's TLS context (None without tls_server_config)."""
        if self.tls is None:
            return None
        t = self.tls
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = t.min_version
        if t.max_version is not None:
            ctx.maximum_version = t.max_version
        try:
            ctx.load_cert_chain(t.cert_file, t.key_file)
            if t.client_ca_file is not None:
                ctx.load_verify_locations(cafile=t.client_ca_file)
        except (OSError, ssl.SSLError) as e:
            raise WebConfigError(
                f"{self.path}: tls_server_config: cannot load the certificate "
                f"{t.cert_file}, key {t.key_file}"
                f"{' or CA ' + t.client_ca_file if t.client_ca_file else ''} ({e}): "
                f"give PEM files this process can read, the key matching the "
                f"certificate") from None
        ctx.verify_mode = t.client_auth
        return ctx

    def authorized(self, header: Optional[str]) -> bool:
        """Whether an Authorization header value lets the request in: always
        when no user is configured, else HTTP Basic with a configured user and
        the password its bcrypt hash was made from."""
        known = self.authorized_cached(header)
        if known is not None:
            return known
        credentials = _credentials(header)
        if credentials is None:  # authorized_cached refused it already
            return False
        user, password = credentials
        _, bcrypt = _imports()
        hashed = self.users.get(user)
        try:
            ok = bcrypt.checkpw(password.encode(), hashed if hashed is not None else _DUMMY_HASH)
        except ValueError:      # bcrypt refuses passwords over 72 bytes
            return False
        ok = ok and hashed is not None
        if ok:
            with self._lock:
                self._ok[_remembered(user, password)] = True
        return ok

    def authorized_cached(self, header: Optional[str]) -> Optional[bool]:
        """authorized(header) when it is known without a bcrypt check (no
        users, a malformed header, credentials that passed before); None when
        the password must be checked against its hash."""
        if not self.users:
            return True
        credentials = _credentials(header)
        if credentials is None:
            return False
        # bcrypt is slow on purpose (its cost factor sets how slow): remember what
        # passed, by a digest of the password, as exporter-toolkit does
        with self._lock:
            if self._ok.get(_remembered(*credentials)):
                return True
        return None


def _credentials(header: Optional[str]) -> Optional[Tuple[str, str]]:
    """(user, password) of an HTTP Basic Authorization header, None if it is not one."""
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True) \
            .decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _remembered(user: str, password: str) -> Tuple[str, bytes]:
    return user, hashlib.sha256(password.encode()).digest()


def load(path: str) -> WebConfig:
    """Read and check a web-config.yml (see the module docstring). Raises
    WebConfigError naming the key and the remedy; WebConfigExtraMissing
    without PyYAML/bcrypt. Certificates are loaded (and so checked) here."""
    yaml, bcrypt = _imports()
    try:
        # bytes: the YAML reader decodes them (UTF-8 or a BOM's) and reports
        # what does not decode as a YAML error
        with open(path, "rb") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise WebConfigError(f"--web-config {path}: cannot read it ({e.strerror or e}): give "
                             f"the path of a readable web-config.yml") from None
    except yaml.YAMLError as e:
        raise WebConfigError(f"--web-config {path}: not valid YAML ({e}): fix the file") from None
    except RecursionError:
        raise WebConfigError(f"--web-config {path}: nested deeper than a web config is: fix "
                             f"the file") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise WebConfigError(f"{path}: the top level must be a mapping with "
                             f"{sorted(TOP_KEYS)}, not {type(doc).__name__}")
    _no_unknown(path, "", doc, TOP_KEYS)
    base = os.path.dirname(os.path.abspath(path))
    config = WebConfig(path=path)
    tls = doc.get("tls_server_config")
    if tls is not None:
        config.tls = _tls(path, base, tls)
    users = doc.get("basic_auth_users")
    if users is not None:
        config.users = _users(path, users, bcrypt)
    config.ssl_context()   # load the certificates now: a bad one fails at start, not per request
    return config


def _key(key: Any) -> str:
    """A key as a message names it: a plain name as it is, else its repr, cut."""
    if isinstance(key, str) and key.isprintable() and len(key) <= 40:
        return key
    return quoted(key, 40)


def _no_unknown(path: str, where: str, doc: Dict[Any, Any], allowed: Set[str]) -> None:
    unknown = sorted(set(doc) - allowed, key=repr)   # keys of any YAML type
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise WebConfigError(
            f"{path}: {where}{', '.join(map(_key, unknown[:5]))}{more}: not a key pymemcg "
            f"implements (it knows {sorted(allowed)}); remove it: an ignored setting would "
            f"leave the exporter less protected than the file says")


def _tls(path: str, base: str, tls: Any) -> TlsConfig:
    where = "tls_server_config: "
    if not isinstance(tls, dict):
        raise WebConfigError(f"{path}: tls_server_config must be a mapping")
    _no_unknown(path, where, tls, TLS_KEYS)

    def file(key: str, required: bool) -> Optional[str]:
        v = tls.get(key)
        if v is None or v == "":
            if required:
                raise WebConfigError(f"{path}: {where}{key} is required: give the PEM file's path")
            return None
        if not isinstance(v, str) or "\0" in v:
            raise WebConfigError(f"{path}: {where}{key} must be a path, not {quoted(v)}")
        return os.path.normpath(os.path.join(base, v))

    def version(key: str) -> Optional[ssl.TLSVersion]:
        v = tls.get(key)
        if v is None:
            return None
        if not isinstance(v, str) or v not in TLS_VERSIONS:
            raise WebConfigError(f"{path}: {where}{key}: {quoted(v)} is not one of "
                                 f"{sorted(TLS_VERSIONS)}")
        return TLS_VERSIONS[v]

    auth_type = tls.get("client_auth_type", "NoClientCert")
    if not isinstance(auth_type, str) or auth_type not in CLIENT_AUTH:
        raise WebConfigError(f"{path}: {where}client_auth_type: {quoted(auth_type)} is not one of "
                             f"{sorted(CLIENT_AUTH)} (Go's RequestClientCert and "
                             f"RequireAnyClientCert accept unverified certificates, which "
                             f"pymemcg does not)")
    ca = file("client_ca_file", False)
    if CLIENT_AUTH[auth_type] != ssl.CERT_NONE and ca is None:
        raise WebConfigError(f"{path}: {where}client_auth_type {auth_type} needs "
                             f"client_ca_file: give the CA that signs client certificates")
    cert, key = file("cert_file", True), file("key_file", True)
    assert cert is not None and key is not None  # required: file() raised otherwise
    out = TlsConfig(cert, key, ca, CLIENT_AUTH[auth_type])
    out.min_version = version("min_version") or ssl.TLSVersion.TLSv1_2
    out.max_version = version("max_version")
    if out.max_version is not None and out.max_version < out.min_version:
        raise WebConfigError(f"{path}: {where}max_version is below min_version")
    return out


def _users(path: str, users: Any, bcrypt: Any) -> Dict[str, bytes]:
    if not isinstance(users, dict):
        raise WebConfigError(f"{path}: basic_auth_users must map user names to bcrypt hashes")
    out: Dict[str, bytes] = {}
    for user, hashed in users.items():
        if not isinstance(user, str) or ":" in user or not user:
            raise WebConfigError(f"{path}: basic_auth_users: {quoted(user)} is not a user name "
                                 f"(a non-empty string without ':')")
        try:
            raw = hashed.encode() if isinstance(hashed, str) else b""
            bcrypt.checkpw(b"", raw)    # raises ValueError unless a bcrypt hash
        except ValueError:  # UnicodeEncodeError (a lone surrogate) is one too
            raise WebConfigError(f"{path}: basic_auth_users: {_key(user)}'s value is not a bcrypt "
                                 f"hash: make one with `htpasswd -nBC 12 '' | tr -d ':\\n'` "
                                 f"or python -c 'import bcrypt; print(bcrypt.hashpw(b\"PASS\", "
                                 f"bcrypt.gensalt()).decode())'") from None
        out[user] = raw
    return out


# --- applying it to an HTTP server ---

def secure(server: BoundedHTTPServer, config: WebConfig) -> BoundedHTTPServer:
    """Apply `config` to a pymemcg.http_server.BoundedHTTPServer (what
    pymemcg.prometheus.make_server makes), before it serves: TLS on each
    accepted connection, its handshake done by the server's event loop within
    the server's read timeout (a client that never finishes it is closed
    then), and a 401 for a request without valid credentials (a password not
    seen before is checked in the server's own worker thread, never in the
    loop). Returns the server; `server.scheme` says "https" or "http"."""
    ctx = config.ssl_context()
    server.ssl_context = ctx
    server.auth = config if config.users else None
    server.scheme = "https" if ctx is not None else "http"
    return server
