"""The HTTP server of `pymemcg export`: bounded in time, connections and
memory, whatever its clients do.

One thread runs an event loop (selectors: epoll) that does every
connection's I/O: accept, the TLS handshake, reading the request, writing
the answer. A scrape runs in one worker thread, a password check (bcrypt,
slow on purpose) in another. So a client costs a socket and a few KiB,
never a thread, and the process has three threads however many clients
connect.

The bounds (class Limits):

- read_timeout: seconds a connection has, from its accept or the end of
  its previous answer, to deliver a complete request head, the TLS
  handshake included. A client that sends nothing, part of a request line,
  or never finishes its handshake is closed then.
- write_timeout: seconds an answer may take, while it is made and again
  while it is written: a client that reads slowly is closed then.
- max_connections: connections open at once. When a new one arrives at
  the cap, the connection that has waited longest in its current step
  (its request, or the reading of its answer) is closed to make room: a
  scraper that sends its request at once and reads its answer promptly is
  served while idle or slow clients hold every other slot.
- MAX_REQUEST_HEAD bytes of request line and headers per connection
  (bigger: 431).
- MAX_HELD_BODIES: the bodies of at most two tree reads are held for
  clients at once. A client still reading the text of an older read when
  a third one is answered is closed, so slow readers cannot each keep a
  large tree's text alive.

Requests are HTTP/1.1 (or 1.0) GET and HEAD, with keep-alive; bodies are
not read (a request that carries one is answered, then the connection is
closed).
"""

from __future__ import annotations

import collections
import email.message
import email.utils
import errno
import http
import http.client
import io
import logging
import os
import resource
import selectors
import socket
import ssl
import struct
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import (Any, Callable, Counter, Deque, List, Optional, Protocol, Sequence, Set,
                    Tuple, Union)

from .errors import BadServerLimit
from .server_limits import Limits

_log = logging.getLogger(__name__)

#: request line and headers, bytes; a scrape request is a few hundred
MAX_REQUEST_HEAD = 8192
#: distinct answer bodies (tree reads' texts) held for clients at once
MAX_HELD_BODIES = 2
#: file descriptors kept free beyond the clients' (the reader's BPF links and
#: iterator sessions, memory.stat files of the text backend, the selector)
FD_RESERVE = 64
#: the listening socket's accept queue (the kernel caps it at net.core.somaxconn):
#: room for a burst of clients reconnecting at once
BACKLOG = 4096
#: connections accepted per wake-up of the loop (others wait for the next turn)
ACCEPT_BATCH = 64
#: bytes given to one send(): one TLS record at a time over TLS (a retried
#: SSL_write must be given the same bytes), bigger pieces in the clear
TLS_PIECE = 16384
PLAIN_PIECE = 262144

# a connection's steps
HANDSHAKE, READ, AUTH, WORK, WRITE = "handshake", "read", "auth", "work", "write"
#: what _io returns when the socket cannot go on now
_BLOCKED = object()
#: SO_LINGER on, 0 seconds: close() resets the connection
_RESET = struct.pack("ii", 1, 0)


@dataclass
class Request:
    """A parsed request head."""

    method: str
    target: str
    version: str
    headers: email.message.Message


@dataclass
class Response:
    """An answer: status, headers (Content-Length, Date and Connection are
    added), body pieces written in order. `held`: the object that owns the
    body's memory, shared by every answer that sends the same body (e.g. one
    tree read's text); the server holds at most MAX_HELD_BODIES of them for
    clients at once."""

    status: int
    headers: List[Tuple[str, str]] = field(default_factory=list)
    body: Sequence[bytes] = ()
    held: Any = None


class Authorizer(Protocol):
    """What the server asks of a basic-auth configuration
    (pymemcg.web_config.WebConfig)."""

    def authorized_cached(self, header: Optional[str]) -> Optional[bool]:
        """True/False when known without a password hash check, None otherwise."""

    def authorized(self, header: Optional[str]) -> bool:
        """The full check (may take a bcrypt check: a large fraction of a second)."""


class _Conn:
    """One client connection and where it is."""

    __slots__ = ("sock", "fd", "tls", "state", "since", "phase", "events", "buf", "request",
                 "close_after", "head_only", "out", "off", "held")

    def __init__(self, sock: socket.socket, tls: bool) -> None:
        self.sock: Optional[socket.socket] = sock
        self.fd = sock.fileno()
        self.tls = tls
        self.state = READ
        self.since = 0.0          # time.monotonic() when the current step began
        self.phase = 0            # counts steps: a worker's late answer is recognised
        self.events = 0           # what the selector waits for on it
        self.buf = bytearray()
        self.request: Optional[Request] = None
        self.close_after = False
        self.head_only = False
        self.out: Deque[bytes] = collections.deque()
        self.off = 0
        self.held: Any = None


# a worker's job: the connection, its phase when submitted, the work; None: stop
_Job = Optional[Tuple[_Conn, int, Callable[[], Any]]]


class _Worker:
    """A thread that runs jobs one at a time and hands each result back to
    the loop (started on the first job, and again in a forked child, which
    inherits no thread)."""

    def __init__(self, name: str, done: Deque[Tuple[_Conn, int, Any]],
                 wake: Callable[[], None]) -> None:
        self.name = name
        self._done = done
        self._wake = wake
        self._thread: Optional[threading.Thread] = None
        self._pid = 0

    def submit(self, conn: _Conn, fn: Callable[[], Any]) -> None:
        if self._thread is None or self._pid != os.getpid():
            # fresh queue and semaphore: a fork may have copied them mid-use
            self._jobs: Deque[_Job] = collections.deque()
            self._queued = threading.Semaphore(0)
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, args=(self._jobs, self._queued),
                                            name=self.name, daemon=True)
            self._thread.start()
        self._jobs.append((conn, conn.phase, fn))
        self._queued.release()

    def _run(self, jobs: Deque[_Job], queued: threading.Semaphore) -> None:
        while True:
            queued.acquire()
            job = jobs.popleft()
            if job is None:
                return
            conn, phase, fn = job
            if conn.sock is None or conn.phase != phase:
                continue      # closed (evicted, timed out) while it waited
            try:
                result = fn()
            except BaseException as e:   # handed to the loop, which answers 500
                result = e
            self._done.append((conn, phase, result))
            self._wake()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None and self._pid == os.getpid():
            self._jobs.append(None)
            self._queued.release()
            self._thread.join(timeout)
        self._thread = None


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket; "" is every address (IPv6
    with IPv4 mapped in, where the host has IPv6). Raises OSError."""
    family = socket.AF_INET6 if (":" in host or (host == "" and socket.has_ipv6)) \
        else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG,
                                    dualstack_ipv6=family == socket.AF_INET6 and host == "")
    except OSError:
        if host != "" or family != socket.AF_INET6:
            raise
        sock = socket.create_server(("", port), backlog=BACKLOG)   # a host without IPv6
    sock.setblocking(False)
    return sock


def fit_file_limit(max_connections: int) -> int:
    """The connection cap the open-file limit allows: raises the soft
    RLIMIT_NOFILE towards the hard one when `max_connections` clients (plus
    the files open now and FD_RESERVE) need it, and returns the cap that
    fits, `max_connections` or less. Raises BadServerLimit when not one fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = FD_RESERVE
    need = in_use + FD_RESERVE + max_connections
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(hard, need)
        if raised > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY:
        return max_connections
    room = soft - in_use - FD_RESERVE
    if room < 1:
        raise BadServerLimit(f"the open-file limit (RLIMIT_NOFILE {soft}, hard {hard}) leaves "
                             f"no room for a client beside the {in_use} files open and "
                             f"{FD_RESERVE} kept free: raise it (ulimit -n, LimitNOFILE=)")
    return min(max_connections, room)


class BoundedHTTPServer:
    """An HTTP/1.1 server answering every request with `handler(request)`
    (run in a worker thread), bounded by `limits`. Bound and listening when
    made; serve_forever() serves until shutdown() (from another thread) or
    an exception (a signal handler's) stops it; server_close() frees
    everything. `ssl_context` (TLS) and `auth` (basic auth) are set before
    serving (pymemcg.web_config.secure)."""

    def __init__(self, host: str, port: int, handler: Callable[[Request], Response],
                 limits: Limits = Limits()) -> None:
        self.handler = handler
        self.limits = limits
        self.ssl_context: Optional[ssl.SSLContext] = None
        self.auth: Optional[Authorizer] = None
        self.scheme = "http"
        self.socket = listening_socket(host, port)
        try:
            self.max_connections = fit_file_limit(limits.max_connections)
            if self.max_connections < limits.max_connections:
                warnings.warn(f"at most {self.max_connections} connections, not "
                              f"{limits.max_connections}: the open-file limit (RLIMIT_NOFILE "
                              f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}) allows no "
                              f"more; raise it (ulimit -n, LimitNOFILE=) for more")
            self.server_address = self.socket.getsockname()
            self._sel = selectors.DefaultSelector()
            self._wake_r, self._wake_w = os.pipe()
        except BaseException:
            self.socket.close()
            raise
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # open connections, each in one of the two, oldest step first
        self._reading: "collections.OrderedDict[_Conn, None]" = collections.OrderedDict()
        self._answering: "collections.OrderedDict[_Conn, None]" = collections.OrderedDict()
        self._done: Deque[Tuple[_Conn, int, Any]] = collections.deque()
        # kept-alive connections to go on with at the loop's next turn (never
        # from within a write: pipelined requests would recurse)
        self._ready: Deque[Tuple[_Conn, int]] = collections.deque()
        self._held: "collections.OrderedDict[int, Tuple[Any, Set[_Conn]]]" = \
            collections.OrderedDict()
        self._scrapes = _Worker("pymemcg-scrape", self._done, self._wake)
        self._checks = _Worker("pymemcg-auth", self._done, self._wake)
        self._accept_paused_until = 0.0
        self._stop = False
        self._running = threading.Event()
        self._stopped = threading.Event()
        self.counts: Counter[str] = collections.Counter()  # accepted, evicted, timed_out, answered

    # --- running ---

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until shutdown(). poll_interval: seconds between checks of
        the shutdown flag when nothing else wakes the loop."""
        self._stopped.clear()
        self._running.set()
        self._sel.register(self.socket, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        try:
            while not self._stop:
                for key, _ in self._sel.select(self._next_timeout(poll_interval)):
                    conn = key.data
                    if conn is None:
                        self._accept()
                    elif conn is self._wake_r:
                        self._drain_wake()
                    else:
                        self._step(conn)
                self._finish_jobs()
                self._go_on()
                self._expire()
        finally:
            if not self._accept_paused_until:
                self._sel.unregister(self.socket)
            self._accept_paused_until = 0.0
            self._sel.unregister(self._wake_r)
            self._running.clear()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever() (running in another thread) and wait for it."""
        self._stop = True
        self._wake()
        if self._running.is_set():
            self._stopped.wait()

    def server_close(self) -> None:
        """Close every connection, the listening socket and the workers."""
        for conn in list(self._reading) + list(self._answering):
            self._close(conn)
        self._scrapes.stop()
        self._checks.stop()
        self.socket.close()
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1

    def open_connections(self) -> int:
        return len(self._reading) + len(self._answering)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass        # already awake (pipe full) or closed

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # --- time ---

    def _next_timeout(self, poll_interval: float) -> float:
        if self._ready or self._done:
            return 0.0
        now = time.monotonic()
        due = now + poll_interval
        for conns, limit in ((self._reading, self.limits.read_timeout),
                             (self._answering, self.limits.write_timeout)):
            if conns:
                due = min(due, next(iter(conns)).since + limit)
        if self._accept_paused_until:
            due = min(due, self._accept_paused_until)
        return max(0.0, due - now)

    def _expire(self) -> None:
        now = time.monotonic()
        for conns, limit in ((self._reading, self.limits.read_timeout),
                             (self._answering, self.limits.write_timeout)):
            while conns:
                conn = next(iter(conns))
                if conn.since + limit > now:
                    break
                self.counts["timed_out"] += 1
                self._close(conn)
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._sel.register(self.socket, selectors.EVENT_READ, None)

    def _begin(self, conn: _Conn, state: str) -> None:
        """A new step: the clock of its timeout starts now."""
        conn.state = state
        conn.phase += 1
        conn.since = time.monotonic()
        self._reading.pop(conn, None)
        self._answering.pop(conn, None)
        (self._reading if state in (HANDSHAKE, READ) else self._answering)[conn] = None

    def _evict_oldest(self) -> bool:
        """Close the connection that has been longest in its current step."""
        heads = [next(iter(c)) for c in (self._reading, self._answering) if c]
        if not heads:
            return False
        self.counts["evicted"] += 1
        self._close(min(heads, key=lambda c: c.since))
        return True

    # --- connections ---

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                raw, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of files or memory: make room, or rest the listener a moment
                    # (it stays readable: waiting on it would spin)
                    if not self._evict_oldest():
                        self._accept_paused_until = time.monotonic() + 0.1
                        self._sel.unregister(self.socket)
                    return
                continue    # ECONNABORTED and the like: that client is gone
            raw.setblocking(False)
            # an answer is written in pieces (headers, then the body): each goes out
            # at once instead of waiting for the client's delayed ACK
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.counts["accepted"] += 1
            if self.open_connections() >= self.max_connections:
                self._evict_oldest()      # FD_RESERVE covers the one file over the cap
            conn = _Conn(raw, self.ssl_context is not None)
            if conn.tls:
                # TLS state (a handshake's buffers) is made once the client sends
                # something: a silent client costs a socket
                self._begin(conn, HANDSHAKE)
                self._want(conn, selectors.EVENT_READ)
            else:
                self._begin(conn, READ)
                self._read(conn)

    def _want(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if conn.events == 0:
            self._sel.register(conn.fd, events, conn)
        elif events == 0:
            self._sel.unregister(conn.fd)
        else:
            self._sel.modify(conn.fd, events, conn)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        if conn.sock is None:
            return
        self._release(conn)
        self._reading.pop(conn, None)
        self._answering.pop(conn, None)
        self._want(conn, 0)
        try:
            if conn.out:
                # an answer not all written (a slow reader timed out or made room):
                # reset, so that the kernel drops the unsent bytes now instead of
                # keeping them for a client that does not read
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            conn.sock.close()
        except OSError:
            pass
        conn.sock = None
        conn.buf = bytearray()
        conn.out.clear()
        conn.request = None

    def _step(self, conn: _Conn) -> None:
        """Go on with a connection whose socket is ready."""
        if conn.sock is None:
            return      # closed by an earlier event of the same turn
        if conn.state == HANDSHAKE:
            self._handshake(conn)
        elif conn.state == READ:
            self._read(conn)
        elif conn.state == WRITE:
            self._write(conn)
        else:
            self._want(conn, 0)   # a worker has it: wait for its answer

    def _io(self, conn: _Conn, wait_for: int, call: Callable[..., Any], *args: Any) -> Any:
        """call(*args) on the connection's non-blocking socket: its result, or
        _BLOCKED when it cannot go on now (the connection then waits for what
        it needs: `wait_for`, or what TLS asks for) or failed (closed)."""
        try:
            return call(*args)
        except ssl.SSLWantReadError:
            self._want(conn, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            self._want(conn, selectors.EVENT_WRITE)
        except (BlockingIOError, InterruptedError):
            self._want(conn, wait_for)
        except (OSError, ValueError):
            # a reset, a failed handshake (plain HTTP, a bad certificate): drop it
            self._close(conn)
        return _BLOCKED

    def _handshake(self, conn: _Conn) -> None:
        ctx, sock = self.ssl_context, conn.sock
        assert ctx is not None and sock is not None  # an open connection of a TLS server
        if not isinstance(sock, ssl.SSLSocket):
            try:
                # the same file descriptor, so the selector's registration holds
                conn.sock = sock = ctx.wrap_socket(sock, server_side=True,
                                                   do_handshake_on_connect=False)
            except (ssl.SSLError, OSError):
                self._close(conn)
                return
        if self._io(conn, selectors.EVENT_READ, sock.do_handshake) is _BLOCKED:
            return
        conn.state = READ         # the same step: read_timeout covers the handshake too
        self._read(conn)

    def _read(self, conn: _Conn) -> None:
        sock = conn.sock
        assert sock is not None  # an open connection: the loop reads no other
        while True:
            data = self._io(conn, selectors.EVENT_READ, sock.recv, 4096)
            if data is _BLOCKED:
                return
            if not data:
                self._close(conn)
                return
            conn.buf += data
            if self._take_request(conn) or conn.sock is None:
                return
            if len(conn.buf) > MAX_REQUEST_HEAD:
                self._answer(conn, _plain(431, "request head too large"), close=True)
                return

    def _take_request(self, conn: _Conn) -> bool:
        """If the buffer holds a whole request head, take it and answer it."""
        buf = conn.buf
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            end += 4
        else:
            end = buf.find(b"\n\n")
            if end < 0:
                return False
            end += 2
        if end > MAX_REQUEST_HEAD:
            self._answer(conn, _plain(431, "request head too large"), close=True)
            return True
        head = bytes(buf[:end])
        del buf[:end]
        parsed = _parse(head)
        if isinstance(parsed, Response):
            self._answer(conn, parsed, close=True)
            return True
        conn.request = parsed
        conn.head_only = parsed.method == "HEAD"
        connection = [t.strip().lower() for t in parsed.headers.get("Connection", "").split(",")]
        # a body is not read: close after the answer so that it is not taken for a request
        has_body = parsed.headers.get("Transfer-Encoding") is not None or \
            parsed.headers.get("Content-Length", "0").strip() != "0"
        conn.close_after = parsed.version != "HTTP/1.1" or "close" in connection or has_body
        self._authorize(conn)
        return True

    def _authorize(self, conn: _Conn) -> None:
        auth = self.auth
        if auth is None:
            self._dispatch(conn)
            return
        assert conn.request is not None  # _take_request took one
        header = conn.request.headers.get("Authorization")
        ok = auth.authorized_cached(header)
        if ok is None:
            self._begin(conn, AUTH)
            self._want(conn, 0)
            self._checks.submit(conn, lambda: auth.authorized(header))
        elif ok:
            self._dispatch(conn)
        else:
            self._unauthorized(conn)

    def _unauthorized(self, conn: _Conn) -> None:
        response = _plain(401, "unauthorized")
        response.headers.append(("WWW-Authenticate", 'Basic realm="pymemcg"'))
        self._answer(conn, response)

    def _dispatch(self, conn: _Conn) -> None:
        request = conn.request
        assert request is not None  # _take_request took one
        if request.method not in ("GET", "HEAD"):
            response = _plain(405, "only GET and HEAD")
            response.headers.append(("Allow", "GET, HEAD"))
            self._answer(conn, response)
            return
        self._begin(conn, WORK)
        self._want(conn, 0)
        handler = self.handler
        self._scrapes.submit(conn, lambda: handler(request))

    def _finish_jobs(self) -> None:
        while self._done:
            conn, phase, result = self._done.popleft()
            if conn.sock is None or conn.phase != phase:
                continue
            if isinstance(result, BaseException):
                request = conn.request
                _log.error("pymemcg: answering %s %s failed",
                           request.method if request is not None else "-",
                           request.target if request is not None else "-", exc_info=result)
                self._answer(conn, _plain(500, "internal error"), close=True)
            elif conn.state == AUTH:
                if result:
                    self._dispatch(conn)
                else:
                    self._unauthorized(conn)
            else:
                self._answer(conn, result)

    def _answer(self, conn: _Conn, response: Response, close: bool = False) -> None:
        """Start writing `response`."""
        conn.close_after = conn.close_after or close
        body = list(response.body)
        lines = [f"HTTP/1.1 {response.status} {_phrase(response.status)}",
                 *(f"{k}: {v}" for k, v in response.headers),
                 f"Content-Length: {sum(map(len, body))}",
                 f"Date: {email.utils.formatdate(usegmt=True)}"]
        if conn.close_after:
            lines.append("Connection: close")
        conn.out.clear()
        conn.out.append(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        conn.off = 0
        self._begin(conn, WRITE)
        if not conn.head_only:
            conn.out.extend(body)
            if response.held is not None:
                self._hold(conn, response.held)
        self.counts["answered"] += 1
        if conn.sock is not None:
            self._write(conn)

    def _hold(self, conn: _Conn, held: Any) -> None:
        entry = self._held.get(id(held))
        if entry is None:
            entry = self._held[id(held)] = (held, set())
        entry[1].add(conn)
        conn.held = held
        while len(self._held) > MAX_HELD_BODIES:
            _, (_, readers) = next(iter(self._held.items()))
            for reader in list(readers):
                self.counts["evicted"] += 1
                self._close(reader)

    def _release(self, conn: _Conn) -> None:
        if conn.held is None:
            return
        key = id(conn.held)
        conn.held = None
        entry = self._held.get(key)
        if entry is not None:
            entry[1].discard(conn)
            if not entry[1]:
                del self._held[key]

    def _write(self, conn: _Conn) -> None:
        sock, out = conn.sock, conn.out
        assert sock is not None  # an open connection: the loop writes no other
        piece = TLS_PIECE if conn.tls else PLAIN_PIECE
        while out:
            first = out[0]
            sent = self._io(conn, selectors.EVENT_WRITE, sock.send,
                            memoryview(first)[conn.off:conn.off + piece])
            if sent is _BLOCKED:
                return
            conn.off += sent
            if conn.off >= len(first):
                out.popleft()
                conn.off = 0
        self._release(conn)
        if conn.close_after:
            self._close(conn)
            return
        # keep-alive: the next request, maybe already here (pipelined)
        conn.request = None
        conn.head_only = False
        self._begin(conn, READ)
        self._ready.append((conn, conn.phase))

    def _go_on(self) -> None:
        """Kept-alive connections: their next request (those queued before
        this turn; a client that pipelines many waits for later turns)."""
        for _ in range(len(self._ready)):
            conn, phase = self._ready.popleft()
            if conn.sock is None or conn.phase != phase:
                continue
            if not self._take_request(conn) and conn.sock is not None:
                self._read(conn)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def _plain(status: int, text: str) -> Response:
    return Response(status, [("Content-Type", "text/plain; charset=utf-8")],
                    [f"{status} {text}\n".encode()])


def _parse(head: bytes) -> Union[Request, Response]:
    """A request head (up to its blank line) -> Request, or the error Response."""
    line, _, rest = head.partition(b"\n")
    words = line.rstrip(b"\r").decode("latin-1").split()
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        return _plain(400, "bad request line")
    method, target, version = words
    major, dot, minor = version[5:].partition(".")
    if not (major.isdigit() and dot and minor.isdigit()):
        return _plain(400, "bad HTTP version")
    if (int(major), int(minor)) >= (2, 0) or int(major) < 1:
        return _plain(505, "HTTP/1.x only")
    try:
        headers = http.client.parse_headers(io.BytesIO(rest))
    except http.client.HTTPException:
        return _plain(431, "too many or too long headers")
    return Request(method, target, version, headers)
