"""Hostile clients against a running gateway on loopback, one attack at a time.

    python3 bench/hostile.py attack NAME   # runs the attack until killed
    python3 bench/hostile.py probe NAME    # real callbacks for PHASE_SECONDS, one JSON line

The prober and the attacker are separate processes, so the attacker's own work does not
delay the real callbacks being timed. The JSON line holds the real callbacks' success rate
and p50/p99 latency, the slowest `/livez` of a probe every 200 ms (the kubelet's view), and
the gateway's peak RSS during the phase.

Driven by bench/hostile.sh, which starts the gateway and the upstream; see
docs/reliability.md for what each attack is and the figures of the last run.
"""

import asyncio
import json
import os
import random
import statistics
import sys
import time

HOST = "127.0.0.1"
PORT = int(os.environ["GATE_PORT"])
ADMIN_PORT = int(os.environ["GATE_ADMIN_PORT"])
PID = int(os.environ["GATE_PID"])
PHASE_SECONDS = float(os.environ.get("PHASE_SECONDS", "8"))
RATE = float(os.environ.get("RATE", "20"))
ATTACKERS = int(os.environ.get("ATTACKERS", "200"))
BODIES = [line.strip().encode() for line in open(os.environ["BODIES"]) if line.strip()]


def request(body: bytes, path: str = "/", method: str = "POST") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def exchange(payload: bytes, timeout: float = 10.0, port: int = PORT) -> int:
    """One request on a fresh connection: the status, or 0 when none came."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return 0
    try:
        writer.write(payload)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        return int(parts[1]) if len(parts) > 1 else 0
    except (OSError, asyncio.TimeoutError, ValueError):
        return 0
    finally:
        writer.close()


def rss_kib() -> int:
    with open(f"/proc/{PID}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def real_callbacks(stop: asyncio.Event, results: list) -> None:
    """Feishu: callbacks at RATE per second, each timed from send to status."""
    tasks = []
    n = 0

    async def one(body: bytes) -> None:
        started = time.perf_counter()
        status = await exchange(request(body))
        results.append((status, time.perf_counter() - started))

    while not stop.is_set():
        tasks.append(asyncio.create_task(one(BODIES[n % len(BODIES)])))
        n += 1
        await asyncio.sleep(1 / RATE)
    await asyncio.gather(*tasks)


def bad_token_body() -> bytes:
    # Sealed-looking but under no key the gateway holds: refused after decryption.
    body = bytearray(random.choice(BODIES))
    at = body.index(b'"encrypt":"') + 20
    body[at] = ord("A") if body[at] != ord("A") else ord("B")
    return bytes(body)


MANY_KEYS = ("{" + ",".join(f'"k{i}":1' for i in range(6000)) + "}").encode()


def many_keys_body() -> bytes:
    return MANY_KEYS


async def flood(stop: asyncio.Event, make) -> None:
    """ATTACKERS clients each sending refused requests back to back."""

    async def client() -> None:
        while not stop.is_set():
            await exchange(request(make()), timeout=5)

    await asyncio.gather(*(client() for _ in range(ATTACKERS)))


async def on_connections(
    stop: asyncio.Event, first: bytes, again: bytes, every: float, port: int = PORT, count: int = 0
) -> None:
    """`count` (ATTACKERS) connections, each sending `first` and then `again` every `every`
    seconds until the gateway closes it, when the client connects anew."""

    async def client() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            try:
                writer.write(first)
                while not stop.is_set() and not reader.at_eof():
                    if again:
                        writer.write(again)
                    await writer.drain()
                    # Reading notices the close of a connection that sends nothing.
                    try:
                        await asyncio.wait_for(reader.read(4096), every)
                    except asyncio.TimeoutError:
                        pass
            except OSError:
                pass
            finally:
                writer.close()

    await asyncio.gather(*(client() for _ in range(count or ATTACKERS)))


def endless_heads(stop: asyncio.Event):
    """One header line that never ends, on each connection."""
    return on_connections(stop, b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ", b"a" * 4096, 0.01)


def holders(stop: asyncio.Event):
    """Keep-alive connections each sending `GET /anything` every 4.9 s."""
    return on_connections(stop, b"", b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n", 4.9)


def slot_holders(stop: asyncio.Event):
    """Half silent connections, half a head declaring a body never sent: slots held by
    clients that show nothing, reconnecting as soon as they are closed."""
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
    half = ATTACKERS // 2
    return asyncio.gather(
        on_connections(stop, b"", b"", 1.0, count=half),
        on_connections(stop, head, b"", 1.0, count=ATTACKERS - half),
    )


def one_byte_chunks(stop: asyncio.Event):
    """Chunked bodies of one-byte chunks, no token needed."""
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    return on_connections(stop, head, b"1\r\nx\r\n" * 256, 0.001, count=100)


async def admin_hammer(stop: asyncio.Event) -> None:
    """Keep-alive clients asking the admin port for /metrics back to back."""
    request_ = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"

    async def client() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(HOST, ADMIN_PORT)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            try:
                while not stop.is_set():
                    writer.write(request_)
                    await writer.drain()
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, StopIteration):
                pass
            finally:
                writer.close()

    await asyncio.gather(*(client() for _ in range(80)))


def admin_flood(stop: asyncio.Event):
    """Endless header lines on the admin port."""
    return on_connections(
        stop, b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b"X-Endless: line\r\n", 0.1, port=ADMIN_PORT
    )


ATTACKS = {
    "none": None,
    "bad_token_flood": lambda stop: flood(stop, bad_token_body),
    "many_keys_flood": lambda stop: flood(stop, many_keys_body),
    "endless_header_lines": endless_heads,
    "keep_alive_holders": holders,
    "slot_holders": slot_holders,
    "one_byte_chunks": one_byte_chunks,
    "admin_hammer": admin_hammer,
    "admin_flood": admin_flood,
}


async def livez(stop: asyncio.Event, times: list) -> None:
    """The kubelet: `/livez` on a new connection every 200 ms, its time (10 s when none)."""
    probe_ = b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    while not stop.is_set():
        started = time.perf_counter()
        status = await exchange(probe_, timeout=10, port=ADMIN_PORT)
        times.append(time.perf_counter() - started if status == 200 else 10.0)
        await asyncio.sleep(0.2)


async def probe(name: str) -> dict:
    stop = asyncio.Event()
    results: list = []
    peak = rss_kib()
    prober = asyncio.create_task(real_callbacks(stop, results))
    probes: list = []
    kubelet = asyncio.create_task(livez(stop, probes))
    deadline = time.monotonic() + PHASE_SECONDS
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        peak = max(peak, rss_kib())
    stop.set()
    await prober
    await kubelet
    latencies = sorted(t for status, t in results if status == 200)
    ok = len(latencies)

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)

    return {
        "attack": name,
        "callbacks": len(results),
        "ok": ok,
        "success_rate": round(ok / len(results), 4) if results else 0,
        "p50_ms": pct(0.50) if ok else None,
        "p99_ms": pct(0.99) if ok else None,
        "mean_ms": round(1000 * statistics.mean(latencies), 2) if ok else None,
        "livez_max_ms": round(1000 * max(probes), 2) if probes else None,
        "peak_rss_kib": peak,
    }


async def attack(name: str) -> None:
    run = ATTACKS[name]
    if run:
        await run(asyncio.Event())
    else:
        await asyncio.Event().wait()


if __name__ == "__main__":
    role, name = sys.argv[1], sys.argv[2]
    if name not in ATTACKS:
        sys.exit(f"unknown attack {name}: one of {', '.join(ATTACKS)}")
    if role == "probe":
        print(json.dumps(asyncio.run(probe(name))), flush=True)
    else:
        asyncio.run(attack(name))
