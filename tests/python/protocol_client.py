#!/usr/bin/env python3
"""The interop client of docs/PROTOCOL.md: an agent in Python that knows the mesh only
through that document, nats-py and the official CloudEvents SDK (cloudevents 2.x).

`run` publishes one event in each body format the edge takes (CloudEvents binary mode,
structured mode, a structured batch, the mesh request in JSON, the mesh request in
MessagePack with a UUID string id), sends a few requests the edge must refuse, then
reads its events back from MESH_EVENTS (JetStream domain `central`, through its own
durable consumer) and parses each with the SDK's binary-mode reader: every attribute
and the data must come back as sent. It writes the events it sent, in the CloudEvents
JSON format, to --sent.

`check-lines` parses each line of --lines (the output of `mesh sub` or `mesh replay
--to-stdout`) with the SDK's JSON format reader and compares it with the event of the
same id in --sent.

Output: one JSON object per line, each with a "step" key; exit 1 on the first mismatch.
"""

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import msgpack
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cloudevents.core.bindings.http import HTTPMessage, from_binary, to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

FMT = JSONFormat()
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}, default=str), flush=True)


def fail(step, **fields):
    emit(step, ok=False, **fields)
    sys.exit(1)


def uuid7() -> str:
    """A UUIDv7 (docs/PROTOCOL.md, "Event ids"): 48 bits of Unix milliseconds, version 7,
    the variant, random bits. Python 3.14 has uuid.uuid7(); older ones need these lines."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64 | (0b10 << 62)
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def now():
    return datetime.now(timezone.utc)


def data_bytes(event):
    """The data of an SDK event as bytes, whatever form the SDK chose for it."""
    data = event.get_data()
    if data is None:
        return b""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode()
    return json.dumps(data, sort_keys=True).encode()


def comparable(event):
    """Attributes and data of an SDK event, normalised for comparison: JSON data compared
    as parsed JSON, the mesh's own extensions left out (the sender does not set them)."""
    attrs = {k: v for k, v in event.get_attributes().items() if k not in ("meshedge", "meshseq")}
    data = event.get_data()
    if isinstance(data, (dict, list)):
        data = ("json", json.dumps(data, sort_keys=True))
    else:
        data = ("bytes", data_bytes(event).hex())
    return attrs, data


def same(step, sent, got):
    a, b = comparable(sent), comparable(got)
    if a != b:
        fail(step, sent=a, got=b)
    for ext in ("meshedge", "meshseq"):
        if not got.get_extension(ext):
            fail(step, missing=ext, got=got.get_attributes())


async def request(nc, subject, body, headers=None):
    """An ingest request; the reply is JSON for a JSON or CloudEvents request (it says so
    in content-type), MessagePack for a MessagePack one."""
    msg = await nc.request(subject, body, headers=headers, timeout=10)
    hdrs = msg.headers or {}
    if hdrs.get("content-type") == "application/json":
        reply = json.loads(msg.data)
    else:
        reply = msgpack.unpackb(msg.data, raw=False)
    return reply, hdrs


async def run(a):
    tls = ssl.create_default_context(cafile=a.ca)
    nc = await nats.connect(
        a.url,
        user_credentials=a.creds,
        tls=tls,
        inbox_prefix=f"_INBOX.{a.edge}.{a.agent}",
        connect_timeout=5,
        max_reconnect_attempts=0,
        name=f"python protocol client {a.agent}",
    )
    subject = f"mesh.ingest.{a.edge}.{a.agent}"
    source = f"mesh://{a.edge}/{a.agent}"
    sent = []

    def event(subj, ty, data, **attrs):
        ev = CloudEvent(
            attributes={
                "id": uuid7(),
                "source": source,
                "type": ty,
                "subject": subj,
                "time": now(),
                **attrs,
            },
            data=data,
        )
        sent.append(ev)
        return ev

    async def ok(step, body, headers=None, n=1):
        reply, hdrs = await request(nc, subject, body, headers)
        if "ok" not in reply:
            fail(step, reply=reply, headers=dict(hdrs))
        first, last = reply["ok"]["first_seq"], reply["ok"]["last_seq"]
        if last - first + 1 != n:
            fail(step, reply=reply, expected_events=n)
        emit(step, ok=True, reply=reply)

    # 1. CloudEvents binary mode, as the SDK writes it: attributes in ce- headers,
    # percent-encoded; binary data; the distributed-tracing extension.
    ev = event(
        "python.binary",
        "py.100%",
        b"\x00\xff\xfe",
        datacontenttype="application/octet-stream",
        dataschema="https://example.com/schemas/binary v1",
        # "%41" is "A" to a percent-decoder: stored unencoded, it would come back wrong.
        correlationid="corr é 100% %41",
        causationid="cause-1",
        traceparent=TRACEPARENT,
        tracestate="rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
    )
    m = to_binary(ev, FMT)
    await ok("binary", m.body, m.headers)

    # 2. Structured mode: the whole event as JSON, JSON data.
    ev = event(
        "python.structured",
        "py.structured",
        {"n": 1, "s": "ü", "list": [1, 2.5, None]},
        datacontenttype="application/json",
        traceparent=TRACEPARENT,
    )
    m = to_structured(ev, FMT)
    await ok("structured", m.body, m.headers)

    # 3. A structured batch: a JSON array of events; text data and no data.
    batch = [
        event("python.batch", "py.text", "plain text ✓", datacontenttype="text/plain"),
        # The mesh always stores a datacontenttype (application/octet-stream when none
        # is given), so an event that should round-trip names one.
        event("python.batch", "py.empty", None, datacontenttype="application/octet-stream"),
    ]
    body = b"[" + b",".join(FMT.write(e) for e in batch) + b"]"
    await ok("batch", body, {"content-type": "application/cloudevents-batch+json"}, n=2)

    # 4. The mesh's own request in JSON (the MessagePack field names).
    js_ev = event("python.json", "py.json", {"k": [1, 2]}, datacontenttype="application/json")
    bin_ev = event("python.json", "py.json.bytes", b"\x00\x01", datacontenttype="application/octet-stream")

    def mesh_json(e, data):
        return {
            "id": e.get_id(),
            "ty": e.get_type(),
            "subject": e.get_subject(),
            "time": e.get_time().isoformat().replace("+00:00", "Z"),
            "content_type": e.get_datacontenttype(),
            **data,
        }

    body = json.dumps(
        {
            "events": [
                mesh_json(js_ev, {"data": js_ev.get_data()}),
                mesh_json(bin_ev, {"data_base64": "AAE="}),
            ]
        }
    ).encode()
    await ok("mesh_json", body, {"content-type": "application/json"}, n=2)

    # 5. The mesh's request in MessagePack, the id as a UUID string.
    mp_ev = event("python.msgpack", "py.msgpack", b"\x07\x08", datacontenttype="application/octet-stream")
    micros = (mp_ev.get_time() - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
    body = msgpack.packb(
        {
            "events": [
                {
                    "id": mp_ev.get_id(),
                    "ty": mp_ev.get_type(),
                    "subject": mp_ev.get_subject(),
                    "time_ns": micros * 1000,
                    "content_type": mp_ev.get_datacontenttype(),
                    "data": mp_ev.get_data(),
                }
            ]
        },
        use_bin_type=True,
    )
    await ok("msgpack", body)

    # Refusals: each names the problem, and nothing of them is stored.
    async def refused(step, body, headers=None):
        reply, hdrs = await request(nc, subject, body, headers)
        emit(step, reply=reply, mesh_error=hdrs.get("mesh-error"))

    jh = {"content-type": "application/json"}
    base = {"ty": "py.bad", "subject": "python.bad"}
    await refused("typo", json.dumps({"events": [{**base, "contentType": "text/plain"}]}).encode(), jh)
    await refused("wrong_type", json.dumps({"events": [{**base, "time_ns": "yesterday"}]}).encode(), jh)
    await refused("bad_uuid", msgpack.packb({"events": [{**base, "id": "not-a-uuid"}]}))
    other = CloudEvent(attributes={"id": uuid7(), "source": f"mesh://{a.edge}/victim", "type": "t", "subject": "python.bad"})
    m = to_structured(other, FMT)
    await refused("other_source", m.body, m.headers)
    await refused("bare_percent", b"", {"ce-specversion": "1.0", "ce-type": "py.100%", "ce-subject": "python.bad"})

    with open(a.sent, "w") as f:
        for e in sent:
            f.write(FMT.write(e).decode() + "\n")

    # Read back from MESH_EVENTS: the JetStream domain is `central` (an agent's server
    # is an edge's, whose own JetStream is none), through a durable its credential allows.
    js = nc.jetstream(domain="central")
    await js.add_consumer(
        "MESH_EVENTS",
        ConsumerConfig(
            name="py",
            durable_name="py",
            filter_subject="mesh.evt.*.python.>",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
        ),
    )
    psub = await js.pull_subscribe_bind("py", "MESH_EVENTS")
    by_id = {e.get_id(): e for e in sent}
    got = {}
    deadline = time.monotonic() + 30
    while len(got) < len(sent) and time.monotonic() < deadline:
        try:
            msgs = await psub.fetch(len(sent) - len(got), timeout=2)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            back = from_binary(HTTPMessage(headers=dict(msg.headers or {}), body=msg.data), FMT)
            got[back.get_id()] = back
            await msg.ack()
    if set(got) != set(by_id):
        fail("read_back", missing=sorted(set(by_id) - set(got)), extra=sorted(set(got) - set(by_id)))
    for i, e in by_id.items():
        same("read_back", e, got[i])
    emit("read_back", ok=True, events=len(got))
    await nc.close()
    emit("done")


def check_lines(a):
    with open(a.sent) as f:
        sent = {e.get_id(): e for e in (FMT.read(None, line) for line in f if line.strip())}
    seen = set()
    with open(a.lines) as f:
        for line in f:
            if not line.strip():
                continue
            e = FMT.read(None, line)
            if e.get_id() in sent:
                same("line", sent[e.get_id()], e)
                seen.add(e.get_id())
    if seen != set(sent):
        fail("lines", missing=sorted(set(sent) - seen))
    emit("lines", ok=True, events=len(seen))
    emit("done")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    for flag in ("--url", "--creds", "--ca", "--edge", "--agent", "--sent"):
        r.add_argument(flag, required=True)
    c = sub.add_parser("check-lines")
    for flag in ("--sent", "--lines"):
        c.add_argument(flag, required=True)
    a = p.parse_args()
    if a.cmd == "run":
        asyncio.run(run(a))
    else:
        check_lines(a)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # one JSON line for the caller, whatever went wrong
        emit("error", error=f"{type(e).__name__}: {e}")
        sys.exit(1)
