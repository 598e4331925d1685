#!/usr/bin/env python3
"""An agentmesh agent in Python with nats-py: no Rust, only a standard .creds file and
the mesh's CA, as any third-party agent would connect.

It sends one valid ingest request to its own subject `mesh.ingest.<edge>.<agent>` and
prints the edge's reply, then tries what an agent may not do (publish as another agent,
subscribe to `>`) and prints the servers' refusals. Output: one JSON object per line,
each with a "step" key.

Usage: agent_client.py --url URL --creds FILE --ca FILE --edge EDGE --agent AGENT
                       --other AGENT

Wire format (schemas/src/ingest.rs): the body is MessagePack of
{"events": [{"ty": str, "subject": str, "data": bytes, ...}]}; the reply is MessagePack
of {"ok": {"first_seq": n, "last_seq": n}} or {"err": {"code": str, "message": str}}.
"""

import argparse
import asyncio
import json
import ssl
import sys

import msgpack
import nats


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


async def refusal(errors, what, timeout=5.0):
    """The next permissions violation the server reported, or None after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return None
        try:
            err = await asyncio.wait_for(errors.get(), left)
        except asyncio.TimeoutError:
            return None
        if "permissions violation" in err.lower() and what in err:
            return err


async def main():
    p = argparse.ArgumentParser()
    for flag in ("--url", "--creds", "--ca", "--edge", "--agent", "--other"):
        p.add_argument(flag, required=True)
    a = p.parse_args()

    errors = asyncio.Queue()

    async def error_cb(e):
        # nats-py reports the server's -ERR 'Permissions Violation ...' here.
        errors.put_nowait(str(e))

    tls = ssl.create_default_context(cafile=a.ca)
    nc = await nats.connect(
        a.url,
        user_credentials=a.creds,
        tls=tls,
        # A least-privilege agent may receive replies only under its own inbox prefix.
        inbox_prefix=f"_INBOX.{a.edge}.{a.agent}",
        error_cb=error_cb,
        connect_timeout=5,
        max_reconnect_attempts=0,
        name=f"python agent {a.agent}",
    )
    emit("connected", url=a.url, server=nc.connected_url.netloc if nc.connected_url else None)

    own = f"mesh.ingest.{a.edge}.{a.agent}"
    body = msgpack.packb(
        {
            "events": [
                {
                    "ty": "python.hello",
                    "subject": "python.greetings",
                    "content_type": "application/json",
                    "data": json.dumps({"from": "nats-py"}).encode(),
                }
            ]
        },
        use_bin_type=True,
    )
    msg = await nc.request(own, body, timeout=10)
    reply = msgpack.unpackb(msg.data, raw=False)
    emit("ingest", subject=own, reply=reply, acked="ok" in reply)

    other = f"mesh.ingest.{a.edge}.{a.other}"
    await nc.publish(other, body)
    await nc.flush()
    err = await refusal(errors, other)
    emit("impersonate", subject=other, refused=err is not None, error=err)

    await nc.subscribe(">")
    await nc.flush()
    err = await refusal(errors, ">")
    emit("subscribe_all", subject=">", refused=err is not None, error=err)

    await nc.close()
    emit("done")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # one JSON line for the caller, whatever went wrong
        emit("error", error=f"{type(e).__name__}: {e}")
        sys.exit(1)
