"""Shared helpers of the Python test drivers (standard library only): numbered
ok/FAIL lines and the closing 'N passed, M failed' line that ctest logs show."""
import sys

_counts = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    """Records one check; prints it with detail (shown on failure, or as context)."""
    _counts["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)


def finish():
    """Prints the summary and exits 1 if any check failed."""
    print(f"{_counts['passed']} passed, {_counts['failed']} failed")
    sys.exit(1 if _counts["failed"] else 0)
