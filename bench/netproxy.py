#!/usr/bin/env python3
"""A loopback link emulator for `make bench`: a TCP proxy that adds a round-trip delay
and a bandwidth cap, and counts what crosses it.

netem is not available in this kernel, so this is how the bench measures what users
feel between a homelab builder and a bucket across the internet. Each direction is one
shared link (all connections share the bandwidth, as they share a real uplink): a chunk
read at time t is delivered at max(t + rtt/2, when the link is free) and then occupies
the link for len * 8 / rate seconds. Buffering per connection and direction is bounded
(twice the bandwidth-delay product, at least 256 KiB), so TCP flow control still
reaches the sender.

With --count-http the proxy also counts HTTP/1.1 requests in the client-to-server
direction (request line, headers, Content-Length body; narpush sends no chunked
bodies): put it where the traffic is plaintext (behind the TLS terminator).

Counters (connections, requests, bytes each way) are written as JSON to --stats on
SIGTERM/SIGINT and every second. Listens on 127.0.0.1 only.

  netproxy.py --upstream 127.0.0.1:9000 [--listen 0] [--port-file F]
              [--rtt-ms 25] [--mbit 100] [--count-http] [--stats F]
"""
import argparse
import asyncio
import json
import os
import signal
import sys
import time


class Link:
    """One direction of the emulated link, shared by all connections."""

    def __init__(self, rate_bps, one_way):
        self.rate = rate_bps  # bits per second; 0 = unlimited
        self.one_way = one_way
        self.free_at = 0.0
        self.bytes = 0

    def schedule(self, now, n):
        """When a chunk of n bytes read at `now` arrives at the far end."""
        start = max(now + self.one_way, self.free_at)
        if self.rate:
            self.free_at = start + n * 8 / self.rate
            start = self.free_at
        self.bytes += n
        return start


class HttpCounter:
    """Counts requests in a client-to-server HTTP/1.1 byte stream."""

    def __init__(self, stats):
        self.stats = stats
        self.head = b""
        self.body_left = 0

    def feed(self, data):
        while data:
            if self.body_left:
                take = min(self.body_left, len(data))
                self.body_left -= take
                data = data[take:]
                continue
            self.head += data
            data = b""
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.head = b""  # not HTTP; stop counting this stream
                return
            head, data = self.head[:end], self.head[end + 4:]
            self.head = b""
            lines = head.split(b"\r\n")
            method = lines[0].split(b" ", 1)[0].decode("ascii", "replace")
            self.stats["requests"] += 1
            by = self.stats["requests_by_method"]
            by[method] = by.get(method, 0) + 1
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    self.body_left = int(v.strip())


async def pump(reader, writer, link, limit, counter=None, not_before=0.0):
    """Copy reader to writer through the link, delivering each chunk on schedule and
    none before `not_before` (loop time)."""
    queue = asyncio.Queue()
    buffered = 0
    room = asyncio.Event()
    room.set()

    async def deliver():
        nonlocal buffered
        loop = asyncio.get_running_loop()
        while True:
            at, data = await queue.get()
            if data is None:
                break
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
            buffered -= len(data)
            if buffered < limit:
                room.set()
        if writer.can_write_eof():
            writer.write_eof()

    async def deliver_quietly():
        try:
            await deliver()
        except (ConnectionError, OSError):
            room.set()  # let the reader side finish too

    task = asyncio.create_task(deliver_quietly())
    loop = asyncio.get_running_loop()
    try:
        while True:
            await room.wait()
            data = await reader.read(16384)
            if not data:
                break
            if counter:
                counter.feed(data)
            buffered += len(data)
            if buffered >= limit:
                room.clear()
            now = max(loop.time(), not_before)
            queue.put_nowait((link.schedule(now, len(data)), data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((0, None))
    await task


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    ap.add_argument("--port-file", help="write the port listened on here")
    ap.add_argument("--rtt-ms", type=float, default=0.0)
    ap.add_argument("--mbit", type=float, default=0.0, help="bandwidth cap each way (0: none)")
    ap.add_argument("--count-http", action="store_true")
    ap.add_argument("--stats", help="JSON counters, rewritten every second and at exit")
    a = ap.parse_args()
    host, port = a.upstream.rsplit(":", 1)
    one_way = a.rtt_ms / 2000.0
    rate = a.mbit * 1e6
    up, down = Link(rate, one_way), Link(rate, one_way)
    limit = max(262144, int(2 * rate / 8 * a.rtt_ms / 1000.0))
    stats = {"connections": 0, "requests": 0, "requests_by_method": {},
             "bytes_up": 0, "bytes_down": 0, "rtt_ms": a.rtt_ms, "mbit": a.mbit}

    def save():
        stats["bytes_up"], stats["bytes_down"] = up.bytes, down.bytes
        if a.stats:
            with open(a.stats + ".tmp", "w") as f:
                json.dump(stats, f)
            os.replace(a.stats + ".tmp", a.stats)

    async def handle(cr, cw):
        stats["connections"] += 1
        # On a real link connect() returns after one round trip (SYN, SYN-ACK); here
        # it returns at once, so the client's first bytes leave one RTT later.
        opened = asyncio.get_running_loop().time() + 2 * one_way
        try:
            sr, sw = await asyncio.open_connection(host, int(port))
        except OSError:
            cw.close()
            return
        counter = HttpCounter(stats) if a.count_http else None
        await asyncio.gather(pump(cr, sw, up, limit, counter, opened), pump(sr, cw, down, limit),
                             return_exceptions=True)
        for w in (cw, sw):
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", a.listen)
    bound = server.sockets[0].getsockname()[1]
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(f"{bound}\n")
        os.replace(a.port_file + ".tmp", a.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
        save()
    server.close()
    save()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
