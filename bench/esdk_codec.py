"""In-process throughput of the AWS Encryption SDK codec (kmscli/crypto/esdk.py) against kmscli's own format.

    .venv/bin/python bench/esdk_codec.py [SIZE_MIB] [REPEATS]

Encrypts and decrypts SIZE_MIB (default 256) MiB of random bytes held in memory,
read through a raw reader and written to a writer that only counts, so that
the figures are the codecs' own (no disk, no pipes): kmscli's format
(stream.encrypt_stream / decrypt_stream, 1 MiB chunks), ESDK unsigned
(0x0478) and signed (0x0578) with 1 MiB frames, the signed one with SHA-384 on
the caller's thread and on a worker thread. Median of REPEATS (default 3) runs,
in MB/s (10^6 bytes/s), and each ESDK row as a percentage of kmscli's format.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from kmscli.crypto import esdk, stream

MK = bytes(range(32))
KID = "1b4e28ba-2fa1-4d2e-883f-0016d3cca427"


class MemReader(io.RawIOBase):
    def __init__(self, data: bytes | bytearray) -> None:
        self._view, self._pos = memoryview(data), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), len(self._view) - self._pos)
        b[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n


class Sink:
    def __init__(self, keep: bool = False) -> None:
        self.n, self.keep, self.parts = 0, keep, []  # type: ignore[var-annotated]

    def write(self, b: Any) -> int:
        n = len(b)
        self.n += n
        if self.keep:
            self.parts.append(bytes(b))
        return n

    def data(self) -> bytes:
        return b"".join(self.parts)


def timed(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def codec_rows(data: bytes, data_key: bytes) -> dict[str, dict[str, Callable[[], Any]]]:
    """label -> {"encrypt": fn, "decrypt": fn} over ``data`` in memory: kmscli's own format, then the ESDK
    suites (unsigned; signed with the hash on the caller's thread; signed with ``threaded_hash``)."""
    edk = [esdk.EncryptedDataKey(esdk.PROVIDER_AWS_KMS, "arn:aws:kms:us-east-1:111122223333:key/bench", b"x" * 184)]

    def get_key(_ctx: dict[str, str]) -> tuple[bytes, list[esdk.EncryptedDataKey]]:
        return data_key, edk

    def k_enc(keep: bool = False) -> Sink:
        out = Sink(keep)
        stream.encrypt_stream(MemReader(data), out, master_key=MK, key_id=KID, material_version=1, context={})
        return out

    kct = k_enc(True).data()

    def k_dec() -> None:
        src = MemReader(kct)
        h = stream.read_header(src)
        out = Sink()
        stream.decrypt_stream(h, src, out, master_key=MK, context={})
        assert out.n == len(data)

    rows: dict[str, dict[str, Callable[[], Any]]] = {
        "kmscli own format (`stream`, 1 MiB chunks)": {"encrypt": k_enc, "decrypt": k_dec}}
    for label, suite, threaded in (("ESDK 0x0478 unsigned", esdk.SUITE_COMMIT, False),
                                   ("ESDK 0x0578 signed, `threaded_hash=False` (the default)",
                                    esdk.SUITE_COMMIT_SIGNED, False),
                                   ("ESDK 0x0578 signed, `threaded_hash=True`", esdk.SUITE_COMMIT_SIGNED, True)):
        def e_enc(keep: bool = False, suite: int = suite, threaded: bool = threaded) -> Sink:
            out = Sink(keep)
            esdk.encrypt(MemReader(data), out, context={"purpose": "bench"}, get_data_key=get_key, suite=suite,
                         threaded_hash=threaded)
            return out

        ct = e_enc(True).data()

        def e_dec(ct: bytes = ct, threaded: bool = threaded) -> None:
            src = MemReader(ct)
            h = esdk.read_header(src)
            out = Sink()
            esdk.decrypt(h, src, out, data_key=data_key, threaded_hash=threaded)
            assert out.n == len(data)

        rows[label] = {"encrypt": e_enc, "decrypt": e_dec}
    return rows


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    data = os.urandom(size << 20)
    timings = [(label, timed(fns["encrypt"], repeats), timed(fns["decrypt"], repeats))
               for label, fns in codec_rows(data, os.urandom(32)).items()]
    base = timings[0][1:]
    mb = len(data) / 1e6
    print(f"{size} MiB, median of {repeats}, {os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
    print("| codec | encrypt MB/s | decrypt MB/s | encrypt vs kmscli | decrypt vs kmscli |")
    print("|---|---:|---:|---:|---:|")
    for label, te, td in timings:
        print(f"| {label} | {mb / te:.0f} | {mb / td:.0f} | {100 * base[0] / te:.0f}% | {100 * base[1] / td:.0f}% |")


if __name__ == "__main__":
    main()
