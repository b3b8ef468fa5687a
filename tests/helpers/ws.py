"""WebSocket echo server and client for the ingress tests (python3-websockets).

    ws.py serve PORT                 echo every message back as "echo:<message>"
    ws.py client URL TOKEN MESSAGE   send MESSAGE with the connect token, print the answer
"""
import asyncio
import ssl
import sys

import websockets


async def serve(port):
    async def echo(ws, path=None):
        async for message in ws:
            await ws.send("echo:" + message)

    async with websockets.serve(echo, "0.0.0.0", port):
        print("listening", flush=True)
        await asyncio.Future()


async def client(url, token, message):
    ctx = None
    if url.startswith("wss:"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    async with websockets.connect(
        url,
        extra_headers={"Authorization": "Bearer " + token},
        ssl=ctx,
        open_timeout=10,
    ) as ws:
        await ws.send(message)
        print(await asyncio.wait_for(ws.recv(), 10), flush=True)


if sys.argv[1] == "serve":
    asyncio.run(serve(int(sys.argv[2])))
else:
    try:
        asyncio.run(client(sys.argv[2], sys.argv[3], sys.argv[4]))
    except Exception as e:  # the status line or error, for the test's message
        print("error:", e, flush=True)
        sys.exit(1)
