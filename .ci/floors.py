"""Print the lowest version that setup.cfg allows of each install requirement, as pip constraints (`name==floor`).

`make test-floors` installs the package under these constraints, so the floors are written once, in setup.cfg, and
tested as written. A requirement without a `>=` floor is refused: an open floor cannot be tested.
"""

import configparser
import re
import sys
from pathlib import Path

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"
FLOOR = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*(?P<version>[^\s,;]+)")


def floors(setup_cfg: Path = SETUP_CFG) -> dict[str, str]:
    """`{distribution name: lowest allowed version}` of setup.cfg's `install_requires`, in its order."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    lines = [line.strip() for line in parser["options"]["install_requires"].splitlines()]
    result = {}
    for line in filter(None, lines):
        match = FLOOR.match(line)
        if match is None:
            raise SystemExit(f"{setup_cfg}: install_requires entry {line!r} has no `>=` floor to test")
        result[match["name"]] = match["version"]
    return result


if __name__ == "__main__":
    sys.stdout.write("".join(f"{name}=={version}\n" for name, version in floors().items()))
