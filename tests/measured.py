"""What tests measured on the way (times, counts, sizes), printed in sections at the end of the run, so the figures
a closing note or a reviewer needs come from the run itself rather than from a separate one."""

from __future__ import annotations

from collections import defaultdict


class Measured:
    """Lines by section, in the order they were added."""

    def __init__(self) -> None:
        self.sections: defaultdict[str, list[str]] = defaultdict(list)

    def add(self, section: str, line: str) -> None:
        """Note `line` under `section`."""
        self.sections[section].append(line)


MEASURED = Measured()
