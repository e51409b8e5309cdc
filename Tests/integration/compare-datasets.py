#!/usr/bin/env python3
"""Checks that every DICOM file received by the real servers carries a data set byte-identical to one that was
sent, and that every sent one arrived.
  compare-datasets.py SENT_DIR RECEIVED_DIR [RECEIVED_DIR...]
storescp writes the data set exactly as it arrived behind a file meta header of its own (its AE title, its
implementation UID), so the data sets (everything after the meta group) are compared."""
import glob
import os
import struct
import sys


def dataset(path):
    data = open(path, "rb").read()
    assert data[128:132] == b"DICM", path
    # (0002,0000) UL, explicit VR little endian: tag 4, VR 2, length 2, value 4.
    group_length = struct.unpack("<I", data[140:144])[0]
    return data[144 + group_length:]


sent = {dataset(p): os.path.basename(p) for p in glob.glob(f"{sys.argv[1]}/*.dcm")}
received = [p for folder in sys.argv[2:] for p in glob.glob(f"{folder}/*")]
differing = [p for p in received if dataset(p) not in sent]
matched = {sent[dataset(p)] for p in received if dataset(p) in sent}
if differing or len(matched) != len(sent):
    print(f"FAIL: {len(differing)} received files differ; {len(matched)}/{len(sent)} sent files arrived intact", file=sys.stderr)
    sys.exit(1)
print(f"all {len(sent)} data sets byte-identical ({sum(len(d) for d in sent) // 1024} KiB)")
