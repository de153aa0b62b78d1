"""Time of writing one file of SIZE MiB through write() calls of CHUNK bytes, then fsync.

    python3 bench/write_chunks.py CHUNK [SIZE_MIB] [DIR]

Run it in a fresh process per measurement (the page cache a process frees is reused by the
next write while it is still backed by the host). docs/performance.md, "2026-12-07 (evening)".
"""
import os
import sys
import time

chunk = int(sys.argv[1])
size_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 180
folder = sys.argv[3] if len(sys.argv) > 3 else "/tmp"
buf = memoryview(bytearray(os.urandom(1 << 20)) * size_mib)
path = os.path.join(folder, f"write_chunks.{os.getpid()}")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
try:
    start = time.perf_counter()
    off = 0
    while off < len(buf):
        off += os.write(fd, buf[off : off + chunk])
    written = time.perf_counter()
    os.fsync(fd)
    synced = time.perf_counter()
finally:
    os.close(fd)
    os.unlink(path)
print(f"{chunk >> 10} KiB calls: write {written - start:.2f} s, fsync {synced - written:.2f} s")
