#!/usr/bin/python3
"""Backpressure load for the benchmark: CONNS NBD connections to URI, each streaming
sequential writes of WRITE bytes into its own region (connection i writes
[i*REGION, (i+1)*REGION)), keeping DEPTH writes in flight on each, then one FLUSH per
connection. All connections are driven from one thread with libnbd's asynchronous API and
a selector, so the pattern does not depend on Python threads being scheduled.

Prints one JSON line: {"bytes": N, "seconds": S, "writes": N, "flushes": N} where seconds
run from the first write to the last FLUSH reply.

Every write of connection i carries the same WRITE bytes, pseudo-random from seed i, so that
--verify can check the target file afterwards (exit 1 and a message on the first difference).

usage: streams.py URI REGION [CONNS=4] [DEPTH=64] [WRITE=262144]
       streams.py --verify FILE REGION [CONNS=4] [WRITE=262144]
"""
import json
import random
import selectors
import sys
import time

import nbd


def pattern(i, wsize):
    """The bytes connection i writes: random, so nothing along the way can detect zeroes."""
    return random.Random(1000 + i).randbytes(wsize)


def verify(path, region, conns, wsize):
    with open(path, "rb") as f:
        for i in range(conns):
            want = pattern(i, wsize)
            f.seek(i * region)
            for off in range(i * region, (i + 1) * region, wsize):
                if f.read(wsize) != want:
                    sys.stderr.write("streams.py: %s differs at offset %d (connection %d)\n" % (path, off, i))
                    return 1
    return 0


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--verify":
        a = sys.argv[2:]
        if len(a) < 2:
            sys.stderr.write(__doc__)
            return 2
        return verify(a[0], int(a[1]), int(a[2]) if len(a) > 2 else 4, int(a[3]) if len(a) > 3 else 262144)
    if len(sys.argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    uri = sys.argv[1]
    region = int(sys.argv[2])
    conns = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    depth = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    wsize = int(sys.argv[5]) if len(sys.argv) > 5 else 262144
    if region % wsize:
        sys.stderr.write("streams.py: REGION must be a multiple of WRITE\n")
        return 2

    # Each connection keeps its own buffer (libnbd may read it while the write is in flight).
    handles = []
    for i in range(conns):
        h = nbd.NBD()
        h.connect_uri(uri)
        if h.get_size() < (i + 1) * region:
            sys.stderr.write("streams.py: export is smaller than CONNS * REGION\n")
            return 2
        handles.append({"h": h, "buf": nbd.Buffer.from_bytearray(bytearray(pattern(i, wsize))),
                        "next": i * region, "end": (i + 1) * region, "flushed": False,
                        "flush_sent": False})

    errors = []
    writes = 0
    flushes = 0

    def completed(err):
        if err.value != 0:
            errors.append(err.value)
        return 1  # auto-retire the command

    sel = selectors.DefaultSelector()
    for c in handles:
        c["fd"] = c["h"].aio_get_fd()
        sel.register(c["fd"], selectors.EVENT_READ, c)

    start = time.monotonic()
    while True:
        busy = False
        for c in handles:
            h = c["h"]
            while c["next"] < c["end"] and h.aio_in_flight() < depth:
                h.aio_pwrite(c["buf"], c["next"], completion=completed)
                c["next"] += wsize
                writes += 1
            if c["next"] >= c["end"] and not c["flush_sent"] and h.aio_in_flight() == 0:
                h.aio_flush(completion=completed)
                c["flush_sent"] = True
                flushes += 1
            if c["flush_sent"] and h.aio_in_flight() == 0:
                c["flushed"] = True
            if not c["flushed"]:
                busy = True
            events = selectors.EVENT_READ
            if h.aio_get_direction() & nbd.AIO_DIRECTION_WRITE:
                events |= selectors.EVENT_WRITE
            sel.modify(c["fd"], events, c)
        if errors:
            sys.stderr.write("streams.py: %d NBD commands failed (errno %d)\n" % (len(errors), errors[0]))
            return 1
        if not busy:
            break
        for key, mask in sel.select(timeout=30):
            h = key.data["h"]
            if mask & selectors.EVENT_READ:
                h.aio_notify_read()
            if mask & selectors.EVENT_WRITE:
                h.aio_notify_write()
    seconds = time.monotonic() - start
    for c in handles:
        c["h"].shutdown()
    print(json.dumps({"bytes": conns * region, "seconds": seconds, "writes": writes, "flushes": flushes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
