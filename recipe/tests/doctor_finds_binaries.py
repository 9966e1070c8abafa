"""Recipe test of llcuda-python: `llcuda doctor --json` must name llama-server under $PREFIX.

Reads the JSON that doctor wrote (path in argv[1]) without assuming its layout: some string in it must
be the path of $PREFIX/bin/llama-server, the file llcuda-binaries installed into the test environment.
"""

import json
import os
import sys


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def main(path):
    with open(path, encoding="utf-8") as handle:
        report = json.load(handle)
    expected = os.path.realpath(os.path.join(os.environ["PREFIX"], "bin", "llama-server"))
    found = [s for s in strings(report) if os.path.isabs(s) and os.path.realpath(s) == expected]
    if not found:
        print(f"llcuda doctor --json does not name {expected}:\n{json.dumps(report, indent=2)}")
        return 1
    print(f"llcuda doctor found {found[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
