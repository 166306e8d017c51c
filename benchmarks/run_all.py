"""`make bench`: every benchmark, each printing ratios against OpenSSH measured in the same run."""

from __future__ import annotations

from benchmarks import bucket_bench, logs_bench, queue_bench, transfer_bench


def main() -> None:
    print("== queue ==", flush=True)
    queue_bench.main()
    print("== transfers ==", flush=True)
    transfer_bench.main()
    print("== logs ==", flush=True)
    logs_bench.main()
    print("== bucket (node object client vs SDKs) ==", flush=True)
    bucket_bench.main()


if __name__ == "__main__":
    main()
