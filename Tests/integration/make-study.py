#!/usr/bin/env python3
"""Writes N 24-bit BMP images of pseudo-random pixels (deterministic per index) for img2dcm to wrap as a study."""
import random
import struct
import sys

out, count, side = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for index in range(count):
    rng = random.Random(index)
    row = side * 3
    padding = (4 - row % 4) % 4
    pixels = bytearray()
    for _ in range(side):
        pixels += rng.randbytes(row) + b"\0" * padding
    header = b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    with open(f"{out}/image{index:02d}.bmp", "wb") as f:
        f.write(header + info + pixels)
