"""`make bench`: every benchmark, each printing ratios against OpenSSH measured in the same run."""

from __future__ import annotations

from benchmarks import (
    bucket_bench,
    cli_bench,
    elastic_bench,
    logs_bench,
    memory_bench,
    queue_bench,
    transfer_bench,
    wan_bench,
)


def main() -> None:
    print("== CLI ==", flush=True)
    cli_bench.main()
    print("== queue ==", flush=True)
    queue_bench.main()
    print("== transfers ==", flush=True)
    transfer_bench.main()
    print("== transfers across an emulated WAN ==", flush=True)
    wan_bench.main()
    print("== client memory, large download ==", flush=True)
    memory_bench.main()
    print("== logs ==", flush=True)
    logs_bench.main()
    print("== bucket (node object client vs SDKs) ==", flush=True)
    bucket_bench.main()
    print("== elastic (node start, node-hours) ==", flush=True)
    elastic_bench.main()


if __name__ == "__main__":
    main()
