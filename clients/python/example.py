#!/usr/bin/env python3
"""Trade on a Baton market from Python: sign and submit a buy and a sell, list them, show a
refused forgery, optionally cancel, then watch the fills and the interval's result.

Every line it prints is ``EVENT key=value ...`` (a free-text ``message=`` comes last), readable
by people and by scripts. Exit status: 0 done; 1 the server refused something it should have
accepted (or accepted the forgery); 2 bad arguments or key; 3 no fills within --watch-seconds.

    python3 clients/python/example.py --server http://127.0.0.1:50051 \\
        --participant alice --key alice.key --node A --buy 10@0.45 --sell 5@0.04 \\
        --watch-seconds 400
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402

import baton_client as bc  # noqa: E402

#: Exit status when the server refuses what it should accept, or accepts the forgery.
EXIT_REFUSED = 1
#: Exit status for bad arguments, a bad key file or missing protos.
EXIT_USAGE = 2
#: Exit status when the fills did not arrive within --watch-seconds.
EXIT_NO_FILLS = 3


def emit(event: str, message: str | None = None, **fields) -> None:
    """Prints one ``EVENT key=value ... message=...`` line and flushes it (a parent process
    reads these as they happen)."""
    parts = [event, *(f"{k}={v}" for k, v in fields.items())]
    if message is not None:
        parts.append(f"message={message}")
    print(" ".join(parts), flush=True)


def side_name(pb, side: int) -> str:
    return pb.Side.Name(side).removeprefix("SIDE_").lower()


def product_fields(msg) -> dict:
    """``product=...`` for messages whose protos carry it (newer servers); nothing otherwise."""
    if "product" not in msg.DESCRIPTOR.fields_by_name:
        return {}
    enum = msg.DESCRIPTOR.fields_by_name["product"].enum_type
    name = enum.values_by_number[msg.product].name.removeprefix("PRODUCT_").lower()
    # PRODUCT_UNSPECIFIED is energy (market.proto), as on servers that predate the field.
    return {"product": "energy" if name == "unspecified" else name}


def print_order(pb, o) -> None:
    emit(
        "order",
        order_id=o.order_id,
        side=side_name(pb, o.side),
        status=pb.OrderStatus.Name(o.status).removeprefix("ORDER_STATUS_").lower(),
        interval_start=o.interval_start,
        node=o.node,
        blocks=bc.format_blocks(o.blocks),
        ledger_seq=o.ledger_seq,
        accepted_total=o.accepted_total or "-",
        **product_fields(o),
    )


def print_result(client: bc.MarketClient, interval_start: int) -> bool:
    """Prints the interval's public result; False if it has not cleared yet."""
    try:
        r = client.interval_result(interval_start)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        emit("result", interval_start=interval_start, cleared="no", message=e.details())
        return False
    emit(
        "result",
        interval_start=r.interval_start,
        cleared="yes",
        orders=r.orders,
        bought=r.bought,
        sold=r.sold,
        welfare=r.welfare,
        prices=",".join(f"{p.node}:{p.price}" for p in r.prices),
        ledger_seqs=f"{r.ledger_first_seq}..{r.ledger_last_seq}",
    )
    return True


def refuse_forgery(client: bc.MarketClient, args, interval_start: int) -> None:
    """Sends a correctly built order whose signature has one bit flipped: the server must answer
    UNAUTHENTICATED and record nothing."""
    order = client.order(interval_start, args.node, "sell", bc.parse_blocks(args.sell))
    signed = client.sign_order(order)
    signed.signature = bytes([signed.signature[0] ^ 0x01]) + signed.signature[1:]
    try:
        ack = client.submit_signed(signed)
    except grpc.RpcError as e:
        emit("refused", nonce=order.nonce, code=e.code().name, message=e.details())
        if e.code() != grpc.StatusCode.UNAUTHENTICATED:
            raise
        return
    emit("error", order_id=ack.order_id, message="the server accepted a tampered signature")
    sys.exit(EXIT_REFUSED)


def watch(
    client: bc.MarketClient, interval_start: int, order_ids: set[str], seconds: float
) -> bool:
    """Prints every fill of the interval until each order in ``order_ids`` has one or
    ``seconds`` pass; True if all came."""
    call = client.watch_fills(timeout_s=seconds)
    # Headers arrive once the server has subscribed this stream, so no fill published after
    # the line below can be missed (a parent process may close the gate when it reads it).
    call.initial_metadata()
    emit("watching", interval_start=interval_start, orders=len(order_ids), seconds=seconds)
    pending = set(order_ids)
    pb = client.pb
    try:
        for f in call:
            if f.interval_start != interval_start:
                continue
            emit(
                "fill",
                order_id=f.order_id,
                side=side_name(pb, f.side),
                node=f.node,
                accepted=",".join(f.accepted),
                accepted_total=f.accepted_total,
                node_price=f.node_price or "-",
                payment=f.payment,
                **product_fields(f),
            )
            pending.discard(f.order_id)
            if not pending:
                call.cancel()
                break
    except grpc.RpcError as e:
        if e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            raise
    if pending:
        emit(
            "no-fill",
            interval_start=interval_start,
            missing=",".join(sorted(pending)),
            seconds=seconds,
        )
        return False
    return True


def choose_interval(client: bc.MarketClient, explicit: int | None) -> int:
    info = client.market_info()
    if info is None:
        emit(
            "market",
            info="unavailable",
            message="GetMarketInfo is not in these protos or this server",
        )
    else:
        fields = {
            name: str(getattr(info, name)).lower()
            for name in ("now", "next_open_interval", "interval_minutes", "gate_lead_s", "paused")
            if name in info.DESCRIPTOR.fields_by_name
        }
        if "nodes" in info.DESCRIPTOR.fields_by_name:
            fields["nodes"] = ",".join(info.nodes) or "-"
        emit("market", **fields)
    if explicit is not None:
        return explicit
    start = getattr(info, "next_open_interval", 0) if info is not None else 0
    if not start:
        emit("error", message="no open interval known: pass --interval-start (unix seconds)")
        sys.exit(EXIT_USAGE)
    return start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--server", default="http://127.0.0.1:50051", help="http://HOST:PORT or https://HOST:PORT"
    )
    ap.add_argument("--participant", required=True, help="the registered participant id")
    ap.add_argument(
        "--key", required=True, type=Path, help="the participant's key file (64 hex characters)"
    )
    ap.add_argument("--node", required=True, help="the participant's registered node")
    ap.add_argument(
        "--interval-start",
        type=int,
        help="the interval to trade in (unix seconds); default: GetMarketInfo's next open interval",
    )
    ap.add_argument(
        "--buy", default="10@0.45", help="buy blocks QTY@PRICE[,QTY@PRICE...] (kW, currency/kWh)"
    )
    ap.add_argument("--sell", default="5@0.04", help="sell blocks, same form")
    ap.add_argument("--cancel", action="store_true", help="also submit a small buy and cancel it")
    ap.add_argument(
        "--watch-seconds",
        type=float,
        default=0,
        help="then wait this long for the interval's fills and result (0: do not wait)",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="submit nothing: list the interval's orders and print its result",
    )
    args = ap.parse_args(argv)

    try:
        key = bc.ParticipantKey.load(args.key)
        bc.parse_blocks(args.buy)
        bc.parse_blocks(args.sell)
        client = bc.MarketClient(bc.connect(args.server), args.participant, key)
    except bc.ClientError as e:
        emit("error", message=str(e))
        return EXIT_USAGE
    emit("key", participant=args.participant, public_key=key.public_key_hex)

    try:
        interval = choose_interval(client, args.interval_start)
        if args.report_only:
            for o in client.list_orders(interval_start=interval):
                print_order(client.pb, o)
            print_result(client, interval)
            return 0

        traded = set()
        for side, spec in (("buy", args.buy), ("sell", args.sell)):
            ack = client.submit(client.order(interval, args.node, side, bc.parse_blocks(spec)))
            emit(
                "accepted",
                side=side,
                order_id=ack.order_id,
                ledger_seq=ack.ledger_seq,
                interval_start=ack.interval_start,
                blocks=spec,
            )
            traded.add(ack.order_id)

        refuse_forgery(client, args, interval)

        if args.cancel:
            ack = client.submit(client.order(interval, args.node, "buy", [("1", "0.01")]))
            emit(
                "accepted",
                side="buy",
                order_id=ack.order_id,
                ledger_seq=ack.ledger_seq,
                blocks="1@0.01",
            )
            done = client.cancel(ack.order_id)
            emit("cancelled", order_id=ack.order_id, ledger_seq=done.ledger_seq)

        orders = client.list_orders(interval_start=interval)
        emit("orders", interval_start=interval, count=len(orders))
        for o in orders:
            print_order(client.pb, o)

        if args.watch_seconds > 0:
            if not watch(client, interval, traded, args.watch_seconds):
                return EXIT_NO_FILLS
            print_result(client, interval)
        return 0
    except grpc.RpcError as e:
        emit("error", code=e.code().name, message=e.details())
        return EXIT_REFUSED
    except bc.ClientError as e:
        emit("error", message=str(e))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
