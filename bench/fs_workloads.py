#!/usr/bin/env python3
"""The four file-volume workloads of the benchmark, run against one folder.

Prints one JSON object. Sequential write and cold read use fio; the
synchronous 4 KiB writes and the small files are timed here, one operation
at a time, so that every figure is a whole operation as an application sees
it (write + fsync, create + write + close).

If FS_BENCH_AFTER is set, it is run in sh after each workload, and what it
prints goes to stderr with the workload's name (fs-bench: the volume's
leader).
"""
import json, os, random, subprocess, sys, time

def fio(args):
    out = subprocess.run(["fio", "--output-format=json"] + args, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["jobs"][0]

def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")

def after(workload):
    cmd = os.environ.get("FS_BENCH_AFTER")
    if cmd:
        out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True).stdout.strip()
        print(f"   after {workload}: {out}", file=sys.stderr)

def main():
    d, size_mib, files, sync_ops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    r = {}
    j = fio([f"--name=seqwrite", f"--directory={d}", "--rw=write", "--bs=1M", f"--size={size_mib}M", "--end_fsync=1", "--ioengine=psync"])
    r["seq_write_mib_s"] = j["write"]["bw_bytes"] / 2**20
    after("sequential write")
    # Synchronous 4 KiB random writes at queue depth 1: write, then fsync.
    path = os.path.join(d, "sync4k")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, 64 << 20)
    os.fsync(fd)
    rnd = random.Random(1)
    buf = os.urandom(4096)
    lat = []
    for _ in range(sync_ops):
        off = rnd.randrange(0, (64 << 20) // 4096) * 4096
        t = time.perf_counter()
        os.pwrite(fd, buf, off)
        os.fsync(fd)
        lat.append(time.perf_counter() - t)
    os.close(fd)
    lat.sort()
    r["sync_4k_p50_us"] = lat[len(lat) // 2] * 1e6
    r["sync_4k_p99_us"] = lat[int(len(lat) * 0.99)] * 1e6
    after("synchronous writes")
    # Small files: create, write 4 KiB, close.
    sub = os.path.join(d, "small")
    os.mkdir(sub)
    t = time.perf_counter()
    for i in range(files):
        with open(os.path.join(sub, f"f{i}"), "wb") as f:
            f.write(buf)
    r["small_files_per_s"] = files / (time.perf_counter() - t)
    after("small files")
    # Cold sequential read of what seqwrite wrote.
    drop_caches()
    j = fio([f"--name=seqwrite", f"--directory={d}", "--rw=read", "--bs=1M", f"--size={size_mib}M", "--ioengine=psync"])
    r["cold_read_mib_s"] = j["read"]["bw_bytes"] / 2**20
    print(json.dumps(r))

main()
