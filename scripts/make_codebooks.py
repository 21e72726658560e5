"""Fit the packaged shaped codebooks (src/big2small/generators/shaped_codebooks.safetensors).

They are a pure function of (bits, dim, tail member, group length): data-free, seeded. Shipping
them makes encoding start at once and keeps decoders bit-identical to the encoder. Re-run only when
the family or the fitting changes (it takes a few minutes on 2 CPU cores):

    python scripts/make_codebooks.py
"""

from __future__ import annotations

import time

from safetensors.torch import save_file

from big2small.generators import codebook as cb


def main() -> None:
    tensors = {}
    start = time.perf_counter()
    for bits in cb.PACKAGED_BITS:
        for group_len in cb.PACKAGED_GROUP_LENS:
            for member, power in enumerate(cb.TAIL_POWERS):
                tensors[cb.packaged_key(bits, 2, member, group_len)] = cb.fit_shaped_codebook(
                    bits, 2, power, group_len, cb.PACKAGED_SAMPLES, cb.PACKAGED_ITERS).contiguous()
            print(f"bits {bits}, group {group_len}: {time.perf_counter() - start:.0f} s", flush=True)
    save_file(tensors, str(cb.PACKAGED_CODEBOOKS), metadata={"made_by": "scripts/make_codebooks.py"})
    print(f"wrote {len(tensors)} codebooks to {cb.PACKAGED_CODEBOOKS}")


if __name__ == "__main__":
    main()
