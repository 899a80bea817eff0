"""What the A1111/Civitai hashes (#19) add to an install's one read: `digest_file` with the
blake3 content hash alone, with the whole-file SHA-256 (checkpoints, VAEs, embeddings) and with
the after-header SHA-256 as well (LoRAs), on a random file, for docs/benchmarks.md.

    .venv/bin/python bench/hashes.py --mib 1024 --repeats 5

The file is read once before timing, so it comes from the page cache: this is the hashing
cost, not the disk's. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loraworks.models.hashing import digest_file

CASES = {
    "blake3 (content hash only)": {},
    "+ SHA-256 of the file (AutoV2)": {"sha256": True},
    "+ SHA-256 after the header (AutoV3)": {"sha256": True, "after_header": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.safetensors"
        with path.open("wb") as out:  # a safetensors layout: header length, header, data
            out.write(struct.pack("<Q", 8) + b"{}      ")
            for _ in range(args.mib):
                out.write(os.urandom(1 << 20))
        digest_file(path)  # into the page cache
        print(f"{args.mib} MiB, median of {args.repeats}")
        for label, options in CASES.items():
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                digest_file(path, **options)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            print(f"| {label} | {seconds:.2f} s | {args.mib / 1024 / seconds:.2f} GiB/s |")


if __name__ == "__main__":
    main()
