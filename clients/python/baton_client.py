"""A small Python client for Baton's live market (`baton.v1.MarketService`).

Proof that any language with gRPC and ed25519 can take part: nothing here depends on Rust.

- Stubs are generated from the repository's ``proto/`` at run time with ``grpc_tools.protoc``
  into a cache directory keyed by the protos' content (no generated code is committed).
- Keys are the ledger's key file format (``ledger/src/key.rs``): the 32-byte ed25519 seed as
  64 lowercase hex characters and a newline, mode 0600.
- Signing follows ``proto/baton/v1/market.proto``: serialize the ``Order`` (or the
  ``CancelRequest`` / ``ParticipantQuery``) once, sign exactly those bytes, and send exactly
  those bytes beside the signature. The server verifies the bytes as received and never
  re-encodes them, so the encoder's field order does not matter.
- Quantities and prices stay decimal strings end to end; this module never turns them into
  floats.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "ClientError",
    "MarketClient",
    "NonceSequence",
    "ParticipantKey",
    "Stubs",
    "check_decimal",
    "connect",
    "format_blocks",
    "load_stubs",
    "parse_blocks",
]

#: Largest key file read, bytes: 64 hex characters plus whitespace (the ledger's limit).
KEY_FILE_BYTES_MAX = 256
#: Blocks per order, as the engine allows.
BLOCKS_PER_ORDER_MAX = 16
#: Decimal places the server accepts for quantities (kW) and prices (currency per kWh).
DECIMAL_PLACES_MAX = 6
#: Deadline of one unary call, seconds. An order is acknowledged only once it is in the
#: ledger (one group commit), which takes milliseconds; ten seconds means the server is stuck.
RPC_TIMEOUT_S = 10.0
#: Where the repository keeps its protos, relative to this file.
PROTO_DIR_DEFAULT = Path(__file__).resolve().parent.parent.parent / "proto"

# The server's wire decimal: digits, an optional leading '-', at most one '.' with digits on
# both sides (no exponent, no '+', no spaces, no NaN).
_DECIMAL_RE = re.compile(r"-?[0-9]+(?:\.([0-9]+))?")


class ClientError(Exception):
    """A local mistake: a bad key file, a malformed decimal, missing stubs."""


# ---------------------------------------------------------------------------------------------
# Stubs


@dataclass(frozen=True)
class Stubs:
    """The generated modules for ``baton.v1``."""

    market_pb2: ModuleType
    market_pb2_grpc: ModuleType
    admin_pb2: ModuleType
    admin_pb2_grpc: ModuleType
    audit_pb2: ModuleType
    audit_pb2_grpc: ModuleType


_stubs_lock = threading.Lock()
_stubs: Stubs | None = None


def _cache_root() -> Path:
    env = os.environ.get("BATON_PROTO_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "baton" / "python-stubs"


def _stub_digest(protos: Sequence[Path], proto_dir: Path) -> str:
    """A key for the generated code: the protos' names and bytes and the generator's versions
    (generated code checks the protobuf runtime's version, so a new runtime regenerates)."""
    import google.protobuf

    h = hashlib.sha256()
    versions = (_dist_version("grpcio-tools"), google.protobuf.__version__)
    h.update(repr(versions).encode())
    for p in protos:
        h.update(p.relative_to(proto_dir).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - only a cache key; any failure just means "unknown"
        return "unknown"


def _generate(proto_dir: Path, protos: Sequence[Path], out: Path) -> None:
    from importlib.resources import files

    from grpc_tools import protoc

    well_known = str(files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *(str(p) for p in protos),
    ]
    code = protoc.main(args)
    if code != 0:
        raise ClientError(f"protoc failed on {proto_dir} (exit {code})")


def load_stubs(proto_dir: Path | None = None) -> Stubs:
    """Generates (once per proto content) and imports the ``baton.v1`` stubs.

    ``proto_dir`` defaults to ``$BATON_PROTO_DIR`` or the repository's ``proto/``. Generated
    code goes to ``$BATON_PROTO_CACHE`` (default ``~/.cache/baton/python-stubs``) in a
    directory named by a digest of the protos, written atomically so concurrent runs agree.
    """
    global _stubs
    with _stubs_lock:
        if _stubs is not None:
            return _stubs
        proto_dir = Path(proto_dir or os.environ.get("BATON_PROTO_DIR") or PROTO_DIR_DEFAULT)
        protos = sorted((proto_dir / "baton" / "v1").glob("*.proto"))
        if not protos:
            raise ClientError(f"no .proto files under {proto_dir / 'baton' / 'v1'}")
        root = _cache_root()
        final = root / _stub_digest(protos, proto_dir)
        if not (final / "baton" / "v1" / "market_pb2_grpc.py").exists():
            root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".gen-", dir=root))
            try:
                _generate(proto_dir, protos, work)
                try:
                    os.rename(work, final)
                except OSError:
                    # Another process generated the same digest first; its files are ours.
                    if not (final / "baton" / "v1" / "market_pb2_grpc.py").exists():
                        raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
        if str(final) not in sys.path:
            sys.path.insert(0, str(final))
        mods = {}
        for name in ("market", "admin", "audit"):
            for suffix in ("_pb2", "_pb2_grpc"):
                mods[name + suffix] = importlib.import_module(f"baton.v1.{name}{suffix}")
        _stubs = Stubs(**mods)
        return _stubs


# ---------------------------------------------------------------------------------------------
# Keys and nonces


class ParticipantKey:
    """A participant's ed25519 signing key. Its ``repr`` never shows the secret."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private

    @classmethod
    def from_seed(cls, seed: bytes) -> ParticipantKey:
        """A key from its 32-byte secret seed."""
        if len(seed) != 32:
            raise ClientError(f"an ed25519 seed is 32 bytes, not {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ParticipantKey:
        """Reads a key file: 64 hex characters (surrounding whitespace ignored)."""
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > KEY_FILE_BYTES_MAX:
                raise ClientError(f"key file {path} is larger than {KEY_FILE_BYTES_MAX} bytes")
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ClientError(f"key file {path}: {e}") from e
        if len(text) != 64:
            raise ClientError(f"key file {path}: expected 64 hex characters, found {len(text)}")
        try:
            seed = bytes.fromhex(text)
        except ValueError as e:
            raise ClientError(f"key file {path}: not hex: {e}") from e
        return cls.from_seed(seed)

    @classmethod
    def generate_to(cls, path: str | os.PathLike[str]) -> ParticipantKey:
        """Creates a fresh key at ``path`` (mode 0600; an existing file is never overwritten)
        and its public key beside it with the suffix ``.pub``."""
        path = Path(path)
        key = cls(Ed25519PrivateKey.generate())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key._seed().hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        path.with_suffix(".pub").write_text(key.public_key_hex + "\n", encoding="ascii")
        return key

    def _seed(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_key_hex(self) -> str:
        """The 32-byte public key as 64 lowercase hex characters (what the operator registers)."""
        raw = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return raw.hex()

    def sign(self, message: bytes) -> bytes:
        """The 64-byte ed25519 signature of ``message``."""
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"ParticipantKey(public {self.public_key_hex})"


class NonceSequence:
    """Strictly increasing nonces without stored state: ``max(last + 1, now in µs)``.

    Wall-clock microseconds keep a restarted client ahead of the nonces it used before (unless
    the clock steps back by more than the requests it sent); ``last + 1`` keeps the sequence
    strictly increasing within a process however fast it signs. Thread-safe.
    """

    def __init__(self, last: int = 0) -> None:
        self._last = last
        self._lock = threading.Lock()

    def next(self) -> int:
        """The next nonce."""
        with self._lock:
            self._last = max(self._last + 1, time.time_ns() // 1000)
            return self._last


# ---------------------------------------------------------------------------------------------
# Decimals and blocks


def check_decimal(field: str, text: str) -> str:
    """Returns ``text`` if it is a wire decimal the server accepts, else raises naming
    ``field``. The string itself is what goes on the wire: no float ever touches it."""
    m = _DECIMAL_RE.fullmatch(text)
    if m is None:
        raise ClientError(
            f"{field}: {text!r} is not a decimal number (digits, optional '-' and '.')"
        )
    if m.group(1) is not None and len(m.group(1)) > DECIMAL_PLACES_MAX:
        raise ClientError(f"{field}: {text!r} has more than {DECIMAL_PLACES_MAX} decimal places")
    return text


def parse_blocks(spec: str) -> list[tuple[str, str]]:
    """Parses ``"QTY@PRICE,QTY@PRICE"`` into (quantity, price) decimal strings.

    A block without ``@PRICE`` (or with an empty price) is must-take.
    """
    blocks = []
    for i, part in enumerate(spec.split(",")):
        qty, _, price = part.strip().partition("@")
        check_decimal(f"blocks[{i}].quantity", qty)
        if price:
            check_decimal(f"blocks[{i}].price", price)
        blocks.append((qty, price))
    if not 1 <= len(blocks) <= BLOCKS_PER_ORDER_MAX:
        raise ClientError(f"blocks: {len(blocks)} given (1 to {BLOCKS_PER_ORDER_MAX} allowed)")
    return blocks


def format_blocks(blocks: Iterable) -> str:
    """``QTY@PRICE,...`` of proto ``Block``s (the inverse of :func:`parse_blocks`)."""
    return ",".join(f"{b.quantity}@{b.price}" if b.price else b.quantity for b in blocks)


# ---------------------------------------------------------------------------------------------
# The client


def connect(server: str) -> grpc.Channel:
    """A channel to ``http://HOST:PORT`` (plaintext) or ``https://HOST:PORT`` (TLS)."""
    if server.startswith("https://"):
        return grpc.secure_channel(server[len("https://") :], grpc.ssl_channel_credentials())
    return grpc.insecure_channel(server.removeprefix("http://"))


class MarketClient:
    """One participant's view of ``baton.v1.MarketService``.

    Every call raises ``grpc.RpcError`` when the server refuses it; ``e.code()`` and
    ``e.details()`` say why (e.g. ``UNAUTHENTICATED`` for a signature that does not verify).
    """

    def __init__(
        self,
        channel: grpc.Channel,
        participant_id: str,
        key: ParticipantKey,
        stubs: Stubs | None = None,
        nonces: NonceSequence | None = None,
    ) -> None:
        self.participant_id = participant_id
        self.key = key
        self.stubs = stubs or load_stubs()
        self.pb = self.stubs.market_pb2
        self.nonces = nonces or NonceSequence()
        self._stub = self.stubs.market_pb2_grpc.MarketServiceStub(channel)

    # -- public reads --------------------------------------------------------------------------

    def market_info(self):
        """The server's ``MarketInfo`` (market clock, next open interval, ...), or ``None`` if
        these protos or the server predate ``GetMarketInfo``."""
        request_type = getattr(self.pb, "GetMarketInfoRequest", None)
        method = getattr(self._stub, "GetMarketInfo", None)
        if request_type is None or method is None:
            return None
        try:
            return method(request_type(), timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise

    def interval_result(self, interval_start: int):
        """The public ``IntervalResult`` of a cleared interval (``NOT_FOUND`` until it clears)."""
        request = self.pb.GetIntervalResultRequest(interval_start=interval_start)
        return self._stub.GetIntervalResult(request, timeout=RPC_TIMEOUT_S)

    # -- orders --------------------------------------------------------------------------------

    def order(
        self,
        interval_start: int,
        node: str,
        side: str,
        blocks: Sequence[tuple[str, str]],
        device: str | None = None,
    ):
        """An unsigned ``Order`` with the next nonce. ``side`` is ``"buy"`` or ``"sell"``."""
        sides = {"buy": self.pb.SIDE_BUY, "sell": self.pb.SIDE_SELL}
        if side not in sides:
            raise ClientError(f"side: {side!r} is not 'buy' or 'sell'")
        order = self.pb.Order(
            participant_id=self.participant_id,
            nonce=self.nonces.next(),
            interval_start=interval_start,
            node=node,
            side=sides[side],
            blocks=[self.pb.Block(quantity=q, price=p) for q, p in blocks],
        )
        if device is not None:
            order.device = device
        # `product` (field 8, where the protos have it) stays unset: PRODUCT_UNSPECIFIED is
        # energy, so the same bytes mean the same order to servers with and without it.
        return order

    def sign_order(self, order):
        """A ``SignedOrder``: the serialized order and the signature over exactly those bytes."""
        payload = order.SerializeToString()
        return self.pb.SignedOrder(order=payload, signature=self.key.sign(payload))

    def submit_signed(self, signed):
        """Sends a ``SignedOrder``; returns the durable ack (order id, ledger seq)."""
        return self._stub.SubmitOrder(signed, timeout=RPC_TIMEOUT_S)

    def submit(self, order):
        """Signs and sends ``order``; returns the ``SubmitOrderResponse``."""
        return self.submit_signed(self.sign_order(order))

    def submit_stream(self, signed_orders: Iterable, timeout_s: float | None = None):
        """Streams ``SignedOrder``s over one ``SubmitOrderStream`` call. The returned call is
        an iterator of ``SubmitOutcome``s, one per order in the order sent, each as soon as
        that order is durable (``accepted``) or refused; a slow server slows the sender
        through HTTP/2 flow control."""
        return self._stub.SubmitOrderStream(iter(signed_orders), timeout=timeout_s)

    def cancel(self, order_id: str):
        """Cancels an open order; returns the ``CancelOrderResponse`` (its ledger seq)."""
        request = self.pb.CancelRequest(
            participant_id=self.participant_id,
            nonce=self.nonces.next(),
            order_id=order_id,
            timestamp=int(time.time()),
        )
        return self._stub.CancelOrder(self._signed_request(request), timeout=RPC_TIMEOUT_S)

    # -- signed reads --------------------------------------------------------------------------

    def _signed_request(self, request):
        payload = request.SerializeToString()
        return self.pb.SignedRequest(request=payload, signature=self.key.sign(payload))

    def query(self, order_id: str = "", interval_start: int = 0):
        """A ``SignedRequest`` over a fresh ``ParticipantQuery`` (wall-clock timestamp: the
        server refuses one outside its replay window)."""
        q = self.pb.ParticipantQuery(
            participant_id=self.participant_id,
            timestamp=int(time.time()),
            order_id=order_id,
            interval_start=interval_start,
        )
        return self._signed_request(q)

    def list_orders(self, interval_start: int = 0) -> list:
        """The caller's orders (``OrderInfo``), only ``interval_start``'s if it is not 0."""
        r = self._stub.ListOrders(self.query(interval_start=interval_start), timeout=RPC_TIMEOUT_S)
        return list(r.orders)

    def get_order(self, order_id: str):
        """One of the caller's orders (``OrderInfo``)."""
        return self._stub.GetOrder(self.query(order_id=order_id), timeout=RPC_TIMEOUT_S).order

    def watch_fills(self, timeout_s: float | None = None):
        """The caller's ``Fill`` stream as intervals clear. The returned call is an iterator;
        ``call.initial_metadata()`` returns once the server has subscribed it, and
        ``call.cancel()`` ends it."""
        return self._stub.WatchFills(self.query(), timeout=timeout_s)
